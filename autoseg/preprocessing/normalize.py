"""Intensity normalization per channel, as the plan says."""
from __future__ import annotations

import numpy as np

from autoseg.planning.plan_types import ChannelNormalization

EPS = 1e-8


def zscore_mask(nonzero: np.ndarray, label: np.ndarray | None) -> np.ndarray:
    """The voxels a masked z-score uses: `label >= 0` after cropping, the same set as nnU-Net's `seg >= 0`.

    That is the filled nonzero region plus any labelled voxel outside it (a structure touching the zero
    field of view, whose image is 0 in every channel): nnU-Net keeps such voxels in its statistics and
    normalizes them, so its preprocessed training data do. Without a label map (prediction) it is the
    filled nonzero region, as in nnU-Net.
    """
    return nonzero if label is None else label >= 0


def normalize_channel(channel: np.ndarray, rule: ChannelNormalization, mask: np.ndarray | None,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Normalize one channel (float32 result, written into `out` when given).

    ct: clip to the dataset's foreground 0.5/99.5 percentiles, z-score with its foreground
    mean/std. zscore: this image's mean/std, over the nonzero mask when the plan says so
    (voxels outside the mask are set to 0). rescale_0_1: min-max. none: unchanged.
    """
    if out is None:
        x = channel.astype(np.float32, copy=True)
    else:
        x = out
        x[...] = channel
    if rule.scheme == "ct":
        np.clip(x, rule.clip_low, rule.clip_high, out=x)
        x -= rule.mean
        x /= max(rule.std, EPS)
    elif rule.scheme == "zscore":
        if rule.use_nonzero_mask and mask is not None:
            inside = x[mask]
            mean, std = float(inside.mean()) if inside.size else 0.0, float(inside.std()) if inside.size else 1.0
            x -= mean
            x /= max(std, EPS)
            x[~mask] = 0.0
        else:
            mean, std = float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))
            x -= mean
            x /= max(std, EPS)
    elif rule.scheme == "rescale_0_1":
        lo, hi = float(x.min()), float(x.max())
        x -= lo
        x /= max(hi - lo, EPS)
    return x


def normalize(image: np.ndarray, rules: list[ChannelNormalization], mask: np.ndarray | None) -> np.ndarray:
    """(C, ...) float32; one output array, no per-channel copies (a CT volume is hundreds of MB)."""
    out = np.empty(image.shape, np.float32)
    for c, (channel, rule) in enumerate(zip(image, rules)):
        normalize_channel(channel, rule, mask, out[c])
    return out


def normalize_scan(image: np.ndarray, rules: list[ChannelNormalization]) -> np.ndarray:
    """(C, ...) a whole scan on its own grid (no crop, no resampling) normalised as the plan says; the masked
    z-score uses the voxels nonzero in any channel. What a postprocessing step that looks at intensities (the
    CRF) sees, at prediction time and when it is decided on the cross-validation."""
    mask = np.any(image != 0, axis=0) if any(r.use_nonzero_mask for r in rules) else None
    return normalize(image, rules, mask)

"""Sliding-window prediction: overlapping patches, Gaussian-weighted, optionally mirrored, over one or
more networks (folds), averaging logits.

Works for 3D networks on (C, z, y, x) volumes and for 2D networks slice by slice along the first
axis. Returns the weighted mean logits on the preprocessed grid.

The Gaussian weight of a tile is a product of one 1D Gaussian per axis and the tiles lie on a grid
(a product of per-axis starts), so the sum of weights at a voxel is a product of per-axis sums: no
weight-sum volume is stored, which matters for large CT volumes.
"""
from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

STEP = 0.5  # tile stride as a fraction of the patch
SIGMA_SCALE = 1 / 8
MIN_WEIGHT = 1e-3  # weight of a tile's corner voxel: never zero, so every voxel gets a prediction
# Voxels per forward pass (tiles x mirrors): enough to batch all mirrors of a small 3D patch, while a
# large CT patch goes one at a time, so activations stay within a few hundred MB.
VOXELS_PER_FORWARD = 2 ** 20
# Accumulators above this size hold float16 logits: plenty for an argmax between classes, half the memory.
FLOAT32_ACCUMULATOR_BYTES = 512 * 2 ** 20


@lru_cache(maxsize=16)
def _axis_gaussian(p: int, ndim: int) -> np.ndarray:
    x = np.arange(p, dtype=np.float64) - (p - 1) / 2
    w = np.exp(-((x / (p * SIGMA_SCALE)) ** 2) / 2)
    return np.maximum(w / w.max(), MIN_WEIGHT ** (1 / ndim))


def axis_weights(patch) -> list[np.ndarray]:
    """One 1D Gaussian per axis (sigma 1/8 of the patch side, peak 1); their product weighs a tile."""
    return [_axis_gaussian(int(p), len(patch)) for p in patch]


def gaussian_importance(patch) -> torch.Tensor:
    """Weights that favour a tile's centre, where the network sees most context; never zero."""
    weights = axis_weights(patch)
    out = weights[0]
    for w in weights[1:]:
        out = np.multiply.outer(out, w)
    return torch.from_numpy(out.astype(np.float32))


def tile_starts(shape, patch, step: float = STEP) -> list[list[int]]:
    """Per axis, evenly spread starts so tiles cover the axis with at least `step` overlap."""
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    starts = []
    for size, p in zip(shape, patch):
        if size <= p:
            starts.append([0])
            continue
        n = int(np.ceil((size - p) / (p * step))) + 1
        starts.append([int(round(i * (size - p) / (n - 1))) for i in range(n)])
    return starts


def mirror_flips(ndim: int, mirror_axes) -> list[tuple[int, ...]]:
    """Every subset of the mirror axes (as tensor dims of an (N, C, *spatial) batch), no flip first."""
    dims = [a + 2 for a in mirror_axes if a < ndim]
    return [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]


def _weight_sums(shape, patch, starts) -> list[torch.Tensor]:
    sums = []
    for size, w, axis_starts in zip(shape, axis_weights(patch), starts):
        total = np.zeros(size)
        for s in axis_starts:
            total[s:s + len(w)] += w
        sums.append(torch.from_numpy(total.astype(np.float32)))
    return sums


@torch.inference_mode()
def _mean_logits(networks, tiles: torch.Tensor, flips, flips_per_pass: int) -> torch.Tensor:
    """Mean logits over networks and mirrors; `flips_per_pass` mirrors of the tiles share a forward pass."""
    n = tiles.shape[0]
    out = None
    for network in networks:
        for first in range(0, len(flips), flips_per_pass):
            group = flips[first:first + flips_per_pass]
            batch = torch.cat([torch.flip(tiles, flip) if flip else tiles for flip in group])
            logits = network(batch)
            logits = logits[0] if isinstance(logits, (list, tuple)) else logits
            logits = logits.float()
            for k, flip in enumerate(group):
                part = logits[k * n:(k + 1) * n]
                part = torch.flip(part, flip) if flip else part
                out = part.clone() if out is None else out.add_(part)
    return out.div_(len(flips) * len(networks))


def predict_logits(networks, image: np.ndarray, patch_size, num_classes: int, device: torch.device,
                   mirror_axes=(), amp_dtype: torch.dtype | None = None, step: float = STEP,
                   accumulate_dtype: torch.dtype | None = None) -> torch.Tensor:
    """image (C, z, y, x) -> Gaussian-weighted mean logits (num_classes, z, y, x) on the same grid.

    `networks`: one network or a list (folds), in eval mode. A 2D patch predicts each slice of the
    first axis on its own. Volumes smaller than the patch are padded with zeros (the preprocessed
    background) and cropped back. accumulate_dtype defaults to float32, float16 for large volumes.
    """
    networks = list(networks) if isinstance(networks, (list, tuple)) else [networks]
    for network in networks:
        network.eval()
    patch = [int(p) for p in patch_size]
    ndim = len(patch)
    owned = isinstance(image, np.ndarray) and image.dtype == np.float32 and image.flags.writeable \
        and not isinstance(image, np.memmap)
    volume = torch.from_numpy(image if owned else np.array(image, dtype=np.float32))
    volume = volume.permute(1, 0, 2, 3) if ndim == 2 else volume[None]  # 2D: slices become the batch axis
    spatial = list(volume.shape[2:])
    padded = [max(s, p) for s, p in zip(spatial, patch)]
    before = [(p - s) // 2 for s, p in zip(spatial, padded)]
    if padded != spatial:
        pad = []
        for s, p, b in zip(reversed(spatial), reversed(padded), reversed(before)):
            pad += [b, p - s - b]
        volume = F.pad(volume, pad)
    rows = volume.shape[0]
    if accumulate_dtype is None:
        accumulate_dtype = torch.float32
        if rows * num_classes * int(np.prod(padded)) * 4 > FLOAT32_ACCUMULATOR_BYTES:
            accumulate_dtype = torch.float16
    result = torch.zeros((rows, num_classes, *padded), dtype=accumulate_dtype)
    starts = tile_starts(padded, patch, step)
    boxes = [tuple(slice(s, s + p) for s, p in zip(start, patch)) for start in itertools.product(*starts)]
    weight = gaussian_importance(patch).to(device)
    flips = mirror_flips(ndim, mirror_axes)
    patches_per_pass = max(1, VOXELS_PER_FORWARD // int(np.prod(patch)))  # a 2D patch counts once per slice
    flips_per_pass = min(len(flips), patches_per_pass)
    for row_range, group in _tile_groups(rows, boxes, ndim, max(1, patches_per_pass // flips_per_pass)):
        tiles = torch.cat([volume[(row_range, slice(None)) + box] for box in group]).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = _mean_logits(networks, tiles, flips, flips_per_pass)
        logits = (logits * weight).to("cpu", accumulate_dtype)
        m = row_range.stop - row_range.start
        for j, box in enumerate(group):
            result[(row_range, slice(None)) + box] += logits[j * m:(j + 1) * m]
    _divide_by_weight_sums(result, _weight_sums(padded, patch, starts))
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial))
    result = result[(slice(None), slice(None)) + crop]
    if ndim == 2:
        return result.permute(1, 0, 2, 3).contiguous()
    return result[0] if padded == spatial else result[0].contiguous()


def _divide_by_weight_sums(result: torch.Tensor, sums: list[torch.Tensor]) -> None:
    """In place, one slab of the first spatial axis at a time (no full-size temporary)."""
    rest = sums[1][:, None] * sums[2][None, :] if len(sums) == 3 else sums[1]
    for i in range(result.shape[2]):
        slab = result[:, :, i]
        slab.div_((rest * sums[0][i]).to(result.dtype))


def softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes (dim 0) in place, one slab of the first spatial axis at a time, so a
    large volume needs no float32 copy of itself."""
    for i in range(logits.shape[1]):
        logits[:, i] = torch.softmax(logits[:, i].float(), dim=0).to(logits.dtype)
    return logits


def _tile_groups(n_rows: int, boxes, ndim: int, per_pass: int):
    """(rows of the batch axis, boxes) per forward pass: `per_pass` 3D tiles, or as many slices of one 2D tile."""
    if ndim == 3:
        for k in range(0, len(boxes), per_pass):
            yield slice(0, 1), boxes[k:k + per_pass]
    else:
        for box in boxes:
            for i in range(0, n_rows, per_pass):
                yield slice(i, min(i + per_pass, n_rows)), [box]

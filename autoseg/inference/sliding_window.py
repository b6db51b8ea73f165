"""Sliding-window prediction: overlapping patches, Gaussian-weighted, optionally mirrored.

Works for 3D networks on (C, z, y, x) volumes and for 2D networks slice by slice along the first
axis. Returns softmax probabilities on the preprocessed grid.
"""
from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

STEP = 0.5  # tile stride as a fraction of the patch
SIGMA_SCALE = 1 / 8
TILES_PER_BATCH = 4
SLICES_PER_BATCH = 32


@lru_cache(maxsize=8)
def _gaussian(patch: tuple[int, ...]) -> torch.Tensor:
    grids = np.meshgrid(*[np.arange(p, dtype=np.float64) - (p - 1) / 2 for p in patch], indexing="ij")
    weight = np.exp(-sum((g / (p * SIGMA_SCALE)) ** 2 / 2 for g, p in zip(grids, patch)))
    return torch.from_numpy(np.maximum(weight / weight.max(), 1e-3).astype(np.float32))


def gaussian_importance(patch) -> torch.Tensor:
    """Weights that favour a tile's centre, where the network sees most context; never zero."""
    return _gaussian(tuple(int(p) for p in patch))


def tile_starts(shape, patch, step: float = STEP) -> list[list[int]]:
    """Per axis, evenly spread starts so tiles cover the axis with at least `step` overlap."""
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


@torch.inference_mode()
def _predict_tiles(network, tiles: torch.Tensor, flips) -> torch.Tensor:
    out = None
    for flip in flips:
        x = torch.flip(tiles, flip) if flip else tiles
        logits = network(x)
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        probs = torch.softmax(logits.float(), dim=1)
        probs = torch.flip(probs, flip) if flip else probs
        out = probs if out is None else out + probs
    return out / len(flips)


def predict_sliding_window(network, image: np.ndarray, patch_size, num_classes: int, device: torch.device,
                           mirror_axes=(), amp_dtype: torch.dtype | None = None) -> np.ndarray:
    """image (C, z, y, x) float32 -> probabilities (num_classes, z, y, x) float32.

    A 2D patch predicts each slice of the first axis on its own. Volumes smaller than the patch are
    padded with zeros (the preprocessed background) and cropped back.
    """
    patch = [int(p) for p in patch_size]
    ndim = len(patch)
    volume = torch.from_numpy(np.array(image, dtype=np.float32))  # a copy: memory maps are read-only
    if ndim == 2:  # slices become the batch axis
        volume = volume.permute(1, 0, 2, 3)  # (z, C, y, x)
    else:
        volume = volume[None]
    spatial = list(volume.shape[2:])
    padded = [max(s, p) for s, p in zip(spatial, patch)]
    pad = []
    for s, p in zip(reversed(spatial), reversed(padded)):
        before = (p - s) // 2
        pad += [before, p - s - before]
    volume = F.pad(volume, pad)
    weight = gaussian_importance(patch)
    flips = mirror_flips(ndim, mirror_axes)
    result = torch.zeros((volume.shape[0], num_classes, *padded), dtype=torch.float32)
    norm = torch.zeros(padded, dtype=torch.float32)
    boxes = [tuple(slice(s, s + p) for s, p in zip(start, patch))
             for start in itertools.product(*tile_starts(padded, patch))]
    for box in boxes:
        norm[box] += weight
    weight_on_device = weight.to(device)
    network.eval()
    for rows, group in _tile_groups(volume.shape[0], boxes, ndim):
        tiles = torch.cat([volume[(rows, slice(None)) + box] for box in group]).to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            probs = (_predict_tiles(network, tiles, flips) * weight_on_device).cpu()
        m = rows.stop - rows.start if ndim == 2 else 1
        for j, box in enumerate(group):
            result[(rows, slice(None)) + box] += probs[j * m:(j + 1) * m]
    result /= norm
    crop = tuple(slice(b, b + s) for b, s in zip(pad[::2][::-1], spatial))
    result = result[(slice(None), slice(None)) + crop]
    if ndim == 2:
        return result.permute(1, 0, 2, 3).contiguous().numpy()
    return result[0].numpy()


def _tile_groups(n_rows: int, boxes, ndim: int):
    """(rows of the batch axis, boxes) per forward pass: several 3D tiles, or many slices of one 2D tile."""
    if ndim == 3:
        for k in range(0, len(boxes), TILES_PER_BATCH):
            yield slice(0, 1), boxes[k:k + TILES_PER_BATCH]
    else:
        for box in boxes:
            for i in range(0, n_rows, SLICES_PER_BATCH):
                yield slice(i, min(i + SLICES_PER_BATCH, n_rows)), [box]

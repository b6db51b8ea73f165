"""Random training patches with a foreground guarantee, read from memory-mapped preprocessed cases.

A patch is cut around a centre: random within the volume for most samples, a stored voxel of a
random class present in the case for the foreground share of every batch. Parts of a patch that
leave the volume are padded: image with 0, label with OUTSIDE (ignored by the loss).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.preprocessing.crop import OUTSIDE
from autoseg.preprocessing.storage import load_case

FOREGROUND_FRACTION = 1 / 3


def foreground_count(batch_size: int, fraction: float = FOREGROUND_FRACTION) -> int:
    """Samples of a batch that are centred on foreground: a third, never fewer than one."""
    return min(batch_size, max(1, round(batch_size * fraction)))


@dataclass
class Case:
    image: np.ndarray  # (C, z, y, x), memory-mapped
    label: np.ndarray  # (z, y, x)
    class_locations: dict[int, np.ndarray]  # class (or sampling group) -> (n, 3) voxel coordinates
    previous: np.ndarray | None = None  # (z, y, x) the cascade's previous-stage segmentation, memory-mapped


def open_cases(folder: Path, case_ids: list[str], previous: dict[str, Path] | None = None,
               groups: tuple[tuple[int, ...], ...] | None = None) -> list[Case]:
    """groups: what the foreground guarantee chooses between, each the label values of a class or region
    (a region's voxels are its values' stored locations together); None: each stored label value."""
    cases = []
    for case_id in case_ids:
        image, label, props = load_case(folder, case_id)
        stored = {int(k): np.asarray(v, dtype=np.int64).reshape(-1, 3) for k, v in props.class_locations.items()
                  if len(v)}
        locations = stored
        if groups is not None:
            locations = {g: np.concatenate([stored[v] for v in values if v in stored])
                         for g, values in enumerate(groups) if any(v in stored for v in values)}
        earlier = np.load(previous[case_id], mmap_mode="r") if previous else None
        if earlier is not None and earlier.shape != label.shape:
            raise ValueError(f"{previous[case_id]}: shape {earlier.shape} is not the case's grid {label.shape}")
        cases.append(Case(image, label, locations, earlier))
    return cases


def crop_padded(array: np.ndarray, start, size, fill) -> np.ndarray:
    """array[..., start:start+size] over the last len(size) axes, padded with `fill` outside the array."""
    spatial = array.shape[-len(size):]
    out = np.full(array.shape[:-len(size)] + tuple(size), fill, dtype=array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, spatial):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    lead = (slice(None),) * (array.ndim - len(size))
    out[lead + tuple(dst)] = array[lead + tuple(src)]
    return out


class PatchSampler:
    """Draws batches of patches of `sample_size` (the training patch, possibly enlarged for augmentation).

    For a 2D configuration (`patch_size` of length 2) each sample is one slice along the first axis.
    """

    def __init__(self, cases: list[Case], patch_size, sample_size, foreground_fraction: float = FOREGROUND_FRACTION):
        self.cases = cases
        self.patch_size = tuple(int(p) for p in patch_size)
        self.sample_size = tuple(int(s) for s in sample_size)
        self.foreground_fraction = foreground_fraction
        self.ndim = len(self.patch_size)

    def _random_centre(self, rng: np.random.Generator, shape) -> list[int]:
        """A centre whose training patch lies inside the volume (or is centred on it when larger)."""
        centre = []
        for dim, p in zip(shape, self.patch_size):
            low, high = sorted((0, dim - p))  # a patch larger than the volume may hold it anywhere
            centre.append(int(rng.integers(low, high + 1)) + p // 2)
        return centre

    def sample(self, rng: np.random.Generator, case: Case, force_foreground: bool):
        spatial = case.label.shape
        point = None
        if force_foreground and case.class_locations:
            classes = sorted(case.class_locations)
            locations = case.class_locations[classes[rng.integers(len(classes))]]
            point = locations[rng.integers(len(locations))].tolist()
        previous = case.previous
        if self.ndim == 2:
            z = point[0] if point is not None else int(rng.integers(spatial[0]))
            centre = point[1:] if point is not None else self._random_centre(rng, spatial[1:])
            image, label = case.image[:, z], case.label[z]
            previous = previous[z] if previous is not None else None
        else:
            centre = point if point is not None else self._random_centre(rng, spatial)
            image, label = case.image, case.label
        start = [c - s // 2 for c, s in zip(centre, self.sample_size)]
        image = crop_padded(image, start, self.sample_size, 0).astype(np.float32, copy=False)
        label = crop_padded(label, start, self.sample_size, OUTSIDE)[None]
        if previous is not None:  # a second label channel, so spatial augmentation moves it with the label
            label = np.concatenate([label, crop_padded(previous, start, self.sample_size, 0)[None].astype(label.dtype)])
        return image, label

    def batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """{'data': (B, C, *sample_size) float32, 'seg': (B, 1, *sample_size) in the stored label dtype (B, 2, ...)
        with the cascade's previous-stage segmentation}; the last foreground_count(B) samples are centred on
        foreground."""
        n_forced = foreground_count(batch_size, self.foreground_fraction)
        images, labels = [], []
        for i in range(batch_size):
            case = self.cases[rng.integers(len(self.cases))]
            image, label = self.sample(rng, case, force_foreground=i >= batch_size - n_forced)
            images.append(image)
            labels.append(label)
        return {"data": np.stack(images), "seg": np.stack(labels)}


def enlarged_sample_size(patch_size, max_rotation: float, min_scale: float) -> list[int]:
    """Patch size that still fills the training patch after rotating by up to `max_rotation` (radians,
    about each axis) and zooming out to `min_scale`, so augmentation does not pull in padding."""
    patch = np.asarray(patch_size, dtype=float)
    if max_rotation <= 0 and min_scale >= 1:
        return [int(p) for p in patch_size]
    corners = np.array(np.meshgrid(*[[-p / 2, p / 2] for p in patch], indexing="ij")).reshape(len(patch), -1)
    extent = np.abs(corners).max(axis=1) * 2
    for angle in np.linspace(-max_rotation, max_rotation, 7):
        c, s = math.cos(angle), math.sin(angle)
        for a, b in ([(0, 1)] if len(patch) == 2 else [(0, 1), (0, 2), (1, 2)]):
            rotated = corners.copy()
            rotated[a], rotated[b] = c * corners[a] - s * corners[b], s * corners[a] + c * corners[b]
            extent = np.maximum(extent, np.abs(rotated).max(axis=1) * 2)
    extent = np.minimum(extent / min_scale, patch * 3)
    return [int(math.ceil(e)) for e in extent]

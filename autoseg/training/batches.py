"""Batches as a function of their index: sampled and augmented in background worker processes.

Batch i of rank r is drawn from random generators seeded by (seed, stream, rank, i) alone, so the
sequence of batches does not depend on how many workers make them or whether the run was
interrupted and resumed: a resumed run sees exactly the batches an uninterrupted one would have.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from autoseg.training.augmentation import AugmentationSettings, build_transforms, sample_size
from autoseg.model.cascade import one_hot_channels
from autoseg.training.sampler import PatchSampler, open_cases

TRAIN_STREAM, VALIDATION_STREAM = 0, 1


class IndexedBatches(Dataset):
    def __init__(self, folder: Path, case_ids: list[str], settings: AugmentationSettings, batch_size: int,
                 seed: int, stream: int, rank: int, augment: bool, previous: dict[str, Path] | None = None,
                 num_classes: int = 0):
        """previous/num_classes: the cascade's previous-stage segmentations, fed as one-hot input channels."""
        self.folder, self.case_ids, self.settings = Path(folder), list(case_ids), settings
        self.batch_size, self.seed, self.stream, self.rank, self.augment = batch_size, seed, stream, rank, augment
        self.previous, self.num_classes = previous, num_classes
        self._sampler = self._transforms = None  # opened lazily in each worker (memory maps do not pickle well)

    def __len__(self) -> int:  # indices come from IndexRange; the length is never used to stop
        return 2 ** 62

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._sampler is None:
            size = sample_size(self.settings) if self.augment else self.settings.patch_size
            self._sampler = PatchSampler(open_cases(self.folder, self.case_ids, self.previous),
                                         self.settings.patch_size, size)
            self._transforms = build_transforms(self.settings) if self.augment else None
        seeds = [self.seed, self.stream, self.rank, int(index)]
        rng = np.random.default_rng(seeds)
        batch = self._sampler.batch(rng, self.batch_size)
        if self._transforms is not None:
            # batchgenerators draws from the global generators; seed them per batch as well
            state = np.random.SeedSequence(seeds).generate_state(1)[0]
            np.random.seed(state)
            random.seed(int(state))
            batch = self._transforms(**batch)
        data, seg = batch["data"], batch["seg"]
        if seg.shape[1] > 1:  # cascade: the augmented previous-stage segmentation becomes input channels
            data = np.concatenate([data, one_hot_channels(seg[:, 1], self.num_classes).swapaxes(0, 1)], axis=1)
        return {"data": torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)),
                "target": torch.from_numpy(np.ascontiguousarray(seg[:, 0]).astype(np.int64))}


class IndexRange(Sampler):
    """start, start+1, ... forever: the training loop decides when to stop."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        i = self.start
        while True:
            yield i
            i += 1

    def __len__(self) -> int:
        return 2 ** 62


def batch_iterator(batches: IndexedBatches, start: int, workers: int, pin_memory: bool):
    """Iterator over batches start, start+1, ...; `workers` processes make them ahead of the model."""
    loader = DataLoader(batches, batch_size=None, sampler=IndexRange(start), num_workers=workers,
                        pin_memory=pin_memory, prefetch_factor=2 if workers else None,
                        persistent_workers=False)
    return iter(loader)

"""Batches as a function of their index: sampled and augmented in background worker processes.

Batch i of rank r is drawn from random generators seeded by (seed, stream, rank, i) alone, so the
sequence of batches does not depend on how many workers make them or whether the run was
interrupted and resumed: a resumed run sees exactly the batches an uninterrupted one would have.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from autoseg.training.augmentation import AugmentationSettings, build_transforms, sample_size
from autoseg.model.cascade import one_hot_channels
from autoseg.preprocessing.crop import OUTSIDE
from autoseg.training.sampler import PatchSampler, open_cases

TRAIN_STREAM, VALIDATION_STREAM = 0, 1


@dataclass(frozen=True)
class CaseSource:
    """Which preprocessed cases the batches come from, and what their labels mean to the sampler and the loss."""

    folder: Path
    case_ids: tuple[str, ...]
    previous: dict[str, Path] | None = None  # the cascade's previous-stage segmentations, one-hot input channels
    previous_classes: int = 0  # one_hot_channels' K for them
    # the foreground guarantee centres on one of these, each a class's or a region's label values; None: on
    # any stored class
    sampling_groups: tuple[tuple[int, ...], ...] | None = None
    ignore_label: int | None = None  # becomes OUTSIDE in the target: no loss, no pseudo-Dice there


class IndexedBatches(Dataset):
    def __init__(self, source: CaseSource, settings: AugmentationSettings, batch_size: int, seed: int, stream: int,
                 rank: int, augment: bool):
        self.source, self.settings = source, settings
        self.batch_size, self.seed, self.stream, self.rank, self.augment = batch_size, seed, stream, rank, augment
        self._sampler = self._transforms = None  # opened lazily in each worker (memory maps do not pickle well)

    def __len__(self) -> int:  # indices come from IndexRange; the length is never used to stop
        return 2 ** 62

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._sampler is None:
            size = sample_size(self.settings) if self.augment else self.settings.patch_size
            source = self.source
            cases = open_cases(Path(source.folder), list(source.case_ids), source.previous, source.sampling_groups)
            self._sampler = PatchSampler(cases, self.settings.patch_size, size)
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
            data = np.concatenate([data, one_hot_channels(seg[:, 1], self.source.previous_classes).swapaxes(0, 1)],
                                  axis=1)
        target = np.ascontiguousarray(seg[:, 0]).astype(np.int64)
        if self.source.ignore_label is not None:
            target[target == self.source.ignore_label] = OUTSIDE
        return {"data": torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)),
                "target": torch.from_numpy(target)}


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

"""Dice + CE against hand-computed values; deep supervision weighting; cross-validation splits."""
import json
import math

import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.training.loss import Objective, deep_supervision_loss, dice_ce_loss, soft_dice
from autoseg.training.splits import fold_cases, load_or_create_splits, make_splits


def test_uniform_prediction_hand_computed():
    logits = torch.zeros(1, 2, 4, 1, 1)  # p = 0.5 everywhere
    target = torch.tensor([0, 0, 1, 1]).view(1, 4, 1, 1)
    # class 1: tp = 1, fp = 1, fn = 1 -> dice = 2 / 4
    assert soft_dice(logits, target, batch_dice=False).item() == pytest.approx(0.5, abs=1e-5)
    assert dice_ce_loss(logits, target, False).item() == pytest.approx(math.log(2) + 0.5, abs=1e-5)


def test_outside_voxels_are_ignored():
    logits = torch.zeros(1, 2, 6, 1, 1)
    logits[0, 1, :3] = 5.0  # confident class 1 on the first three voxels
    target = torch.tensor([1, 1, -1, 0, 0, -1]).view(1, 6, 1, 1)
    without = torch.tensor([1, 1, 0, 0]).view(1, 4, 1, 1)
    kept = logits[:, :, [0, 1, 3, 4]]
    assert dice_ce_loss(logits, target, False).item() == pytest.approx(dice_ce_loss(kept, without, False).item(), abs=1e-6)


def test_perfect_prediction_gives_near_zero_loss_and_batch_dice_pools():
    target = torch.tensor([[0, 1, 2, 2], [0, 0, 1, 1]]).view(2, 4, 1, 1)
    logits = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 50
    assert dice_ce_loss(logits, target, True).item() == pytest.approx(0.0, abs=1e-4)
    # class 2 absent from sample 1: per-sample Dice of an empty class is 1 by smoothing, pooled it is present
    assert soft_dice(logits, target, batch_dice=False).shape == (2, 2)
    assert soft_dice(logits, target, batch_dice=True).shape == (2,)


def test_deep_supervision_skips_zero_weight_and_downsamples_target():
    target = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    target[:, :2] = 1
    full = torch.zeros(1, 2, 4, 4, 4)
    half = torch.zeros(1, 2, 2, 2, 2)
    expected = 0.6 * dice_ce_loss(full, target, False) + 0.4 * dice_ce_loss(half, target[:, ::2, ::2, ::2], False)
    got = deep_supervision_loss([full, half, torch.full((1, 2, 1, 1, 1), float("nan"))], target,
                                Objective((0.6, 0.4, 0.0), False))
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_splits_are_disjoint_cover_everything_and_are_reproducible():
    ids = [f"c{i:02d}" for i in range(23)]
    splits = make_splits(ids)
    assert len(splits) == 5 and splits == make_splits(list(reversed(ids)))
    vals = [set(f["val"]) for f in splits]
    assert set().union(*vals) == set(ids) and sum(len(v) for v in vals) == 23
    for fold in splits:
        assert not set(fold["train"]) & set(fold["val"]) and len(fold["train"]) + len(fold["val"]) == 23


def test_splits_file_written_once_then_user_edits_respected(tmp_path):
    ids = [f"c{i}" for i in range(10)]
    first = load_or_create_splits(tmp_path, ids)
    edited = [{"train": ids[:8], "val": ids[8:]}]
    (tmp_path / "splits.json").write_text(json.dumps(edited))
    assert load_or_create_splits(tmp_path, ids) == edited != first
    assert fold_cases(edited, 0, ids) == (ids[:8], ids[8:])
    assert fold_cases(edited, "all", ids) == (sorted(ids), [])
    with pytest.raises(AutosegError, match="fold 3 does not exist"):
        fold_cases(edited, 3, ids)
    (tmp_path / "splits.json").write_text(json.dumps([{"train": ["ghost"], "val": []}]))
    with pytest.raises(AutosegError, match="unknown case"):
        load_or_create_splits(tmp_path, ids)

"""Cross-validation folds: shuffled with a fixed seed, written once to splits.json, then respected."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.jsonio import write_json_atomic

SPLITS_FILE = "splits.json"
NUM_FOLDS = 5
SPLIT_SEED = 12345


def make_splits(case_ids: list[str], num_folds: int = NUM_FOLDS, seed: int = SPLIT_SEED) -> list[dict]:
    ids = sorted(case_ids)
    if len(ids) < num_folds:
        raise AutosegError(f"{len(ids)} cases are too few for {num_folds}-fold cross-validation")
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = np.array_split(order, num_folds)
    return [{"train": sorted(ids[i] for f in folds[:k] + folds[k + 1:] for i in f),
             "val": sorted(ids[i] for i in folds[k])} for k in range(num_folds)]


def load_or_create_splits(output_dir: str | Path, case_ids: list[str]) -> list[dict]:
    """The folds in OUTPUT_DIR/splits.json, created on first use; a user may edit the file."""
    path = Path(output_dir) / SPLITS_FILE
    if not path.exists():
        splits = make_splits(case_ids)
        write_json_atomic(path, splits)
        return splits
    try:
        splits = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AutosegError(f"{path}: not valid JSON ({e})") from None
    known = set(case_ids)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits):
        raise AutosegError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}} folds")
    for k, fold in enumerate(splits):
        unknown = sorted((set(fold["train"]) | set(fold["val"])) - known)
        if unknown:
            raise AutosegError(f"{path}: fold {k} names unknown case(s) {', '.join(unknown[:5])}")
    return splits


def fold_cases(splits: list[dict], fold: int | str, case_ids: list[str]) -> tuple[list[str], list[str]]:
    """(train, val) case ids of a fold; fold 'all' trains on everything and validates on nothing."""
    if fold == "all":
        return sorted(case_ids), []
    fold = int(fold)
    if not 0 <= fold < len(splits):
        raise AutosegError(f"fold {fold} does not exist (splits.json has folds 0..{len(splits) - 1})")
    return list(splits[fold]["train"]), list(splits[fold]["val"])

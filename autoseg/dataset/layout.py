"""Finding the cases of a dataset folder, in the nnU-Net v2 raw layout or the MSD layout.

Everything that can be checked without reading voxels is checked here, and every
problem is collected so the user sees them all at once.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from autoseg.dataset.image_io import SUPPORTED_ENDINGS, file_ending
from autoseg.errors import DatasetInvalid


@dataclass(frozen=True)
class Case:
    case_id: str
    image_files: tuple[Path, ...]  # one per channel, or a single (possibly 4D) file in the MSD layout
    label_file: Path


@dataclass
class Dataset:
    root: Path
    name: str
    layout: Literal["nnunet", "msd"]
    channel_names: dict[str, str]  # channel index as a string -> modality name, e.g. {"0": "CT"}
    labels: dict[str, int]  # label name -> integer value, background included
    file_ending: str
    cases: list[Case] = field(default_factory=list)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def multi_channel_files(self) -> bool:
        """MSD stores all channels of a case in one 4D file."""
        return self.layout == "msd"


def load_dataset(root: str | Path) -> Dataset:
    """Read dataset.json and list the training cases; raises DatasetInvalid listing every problem."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not root.is_dir():
        raise DatasetInvalid(root, [f"{root}: not a folder"])
    if not meta_path.is_file():
        raise DatasetInvalid(root, [f"{meta_path}: missing (every dataset folder needs a dataset.json)"])
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetInvalid(root, [f"{meta_path}: not valid JSON ({e})"]) from None
    if not isinstance(meta, dict):
        raise DatasetInvalid(root, [f"{meta_path}: expected a JSON object"])
    if "channel_names" in meta or "file_ending" in meta:
        dataset, problems = _load_nnunet(root, meta_path, meta)
    elif "modality" in meta and "training" in meta:
        dataset, problems = _load_msd(root, meta_path, meta)
    else:
        problems = [f"{meta_path}: neither nnU-Net v2 ('channel_names', 'labels', 'file_ending') "
                    f"nor Decathlon ('modality', 'labels', 'training') keys found"]
        dataset = None
    if dataset is not None and not dataset.cases and not problems:
        problems.append(f"{root}: empty dataset, no training cases found")
    if problems:
        raise DatasetInvalid(root, problems)
    return dataset


def _check_labels(meta_path: Path, labels: dict[str, int], problems: list[str]) -> None:
    values = list(labels.values())
    if 0 not in values:
        problems.append(f"{meta_path}: 'labels' must declare background as 0")
    if len(set(values)) != len(values):
        problems.append(f"{meta_path}: 'labels' declares the same value twice")


def _load_nnunet(root: Path, meta_path: Path, meta: dict) -> tuple[Dataset | None, list[str]]:
    problems = []
    for key in ("channel_names", "labels", "file_ending"):
        if key not in meta:
            problems.append(f"{meta_path}: missing key '{key}'")
    if problems:
        return None, problems
    ending = meta["file_ending"]
    if ending not in SUPPORTED_ENDINGS:
        problems.append(f"{meta_path}: file_ending '{ending}' not supported (use one of {', '.join(SUPPORTED_ENDINGS)})")
    channel_names = {str(k): str(v) for k, v in meta["channel_names"].items()}
    if sorted(int(k) for k in channel_names) != list(range(len(channel_names))):
        problems.append(f"{meta_path}: channel_names keys must be 0..N-1")
    labels = {}
    for name, value in meta["labels"].items():
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{meta_path}: label '{name}' has value {value!r}; only integer labels are supported "
                            f"(region-based training is not)")
        else:
            labels[str(name)] = value
    _check_labels(meta_path, labels, problems)
    if problems:
        return None, problems

    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            problems.append(f"{d}: missing folder")
    if problems:
        return None, problems

    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    channel_files: dict[str, dict[int, Path]] = {}
    for path in sorted(images_dir.iterdir()):
        if path.name.startswith("."):
            continue
        m = pattern.match(path.name)
        if not m:
            if path.name.endswith(ending):
                problems.append(f"{path}: name does not follow CASE_XXXX{ending}")
            continue
        channel_files.setdefault(m.group(1), {})[int(m.group(2))] = path
    label_files = {p.name[: -len(ending)]: p for p in sorted(labels_dir.iterdir())
                   if p.name.endswith(ending) and not p.name.startswith(".")}

    n_channels = len(channel_names)
    cases = []
    for case_id in sorted(set(channel_files) | set(label_files)):
        files = channel_files.get(case_id, {})
        missing = [c for c in range(n_channels) if c not in files]
        extra = sorted(c for c in files if c >= n_channels)
        for c in missing:
            problems.append(f"{images_dir / f'{case_id}_{c:04d}{ending}'}: missing image file "
                            f"(dataset.json declares {n_channels} channel(s))")
        for c in extra:
            problems.append(f"{files[c]}: channel {c} not declared in dataset.json "
                            f"(channel count mismatch: {n_channels} declared)")
        if case_id not in label_files:
            problems.append(f"{labels_dir / (case_id + ending)}: missing label file for case '{case_id}'")
        if missing or extra or case_id not in label_files:
            continue
        cases.append(Case(case_id, tuple(files[c] for c in range(n_channels)), label_files[case_id]))

    num_training = meta.get("numTraining")
    if isinstance(num_training, int) and not problems and num_training != len(cases):
        problems.append(f"{meta_path}: numTraining is {num_training} but {len(cases)} cases were found")
    name = str(meta.get("name") or root.name)
    return Dataset(root, name, "nnunet", channel_names, labels, ending, cases), problems


def _load_msd(root: Path, meta_path: Path, meta: dict) -> tuple[Dataset | None, list[str]]:
    problems = []
    channel_names = {str(k): str(v) for k, v in meta["modality"].items()}
    labels = {}
    for value, name in meta.get("labels", {}).items():
        try:
            labels[str(name)] = int(value)
        except ValueError:
            problems.append(f"{meta_path}: label key {value!r} is not an integer")
    if "labels" not in meta:
        problems.append(f"{meta_path}: missing key 'labels'")
    _check_labels(meta_path, labels, problems)
    training = meta["training"]
    if not isinstance(training, list):
        return None, problems + [f"{meta_path}: 'training' must be a list of {{image, label}} entries"]
    cases, endings = [], set()
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            problems.append(f"{meta_path}: training[{i}] needs 'image' and 'label'")
            continue
        image, label = (root / entry["image"]).resolve(), (root / entry["label"]).resolve()
        ending = file_ending(image)
        if ending is None:
            problems.append(f"{image}: unsupported file type")
            continue
        endings.add(ending)
        ok = True
        for path, what in ((image, "image"), (label, "label")):
            if not path.is_file():
                problems.append(f"{path}: missing {what} file (listed in dataset.json training[{i}])")
                ok = False
        if ok:
            cases.append(Case(image.name[: -len(ending)], (image,), label))
    name = str(meta.get("name") or root.name)
    ending = endings.pop() if len(endings) == 1 else ".nii.gz"
    return Dataset(root, name, "msd", channel_names, labels, ending, cases), problems

"""The Medical Segmentation Decathlon layout: `training` entries of {image, label} paths, confined to the
dataset folder, each listed once, and the scans no entry lists named."""
from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from autoseg.dataset.cases import RESOURCE_FORK_PREFIX, Case, Dataset, region_fields
from autoseg.dataset.dataset_json import JsonFields, describe_kind
from autoseg.dataset.geometry import SUPPORTED_ENDINGS, file_ending


def _confined(root: Path, text: str) -> tuple[Path | None, str]:
    """`text` (a path from dataset.json) as a path inside `root`, or None and why it is refused.

    Lexically first (absolute, '..'), then after resolving symbolic links: a path read from a file must
    not make autoseg read (and later name in its outputs) files outside the dataset it was given.
    """
    if not text.strip():
        return None, "empty path"
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive:
        return None, "absolute path; paths in dataset.json must be relative to the dataset folder"
    normal = os.path.normpath(text.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        return None, "points outside the dataset folder"
    path = root / normal
    try:
        resolved, inside = path.resolve(), root.resolve()
    except (OSError, RuntimeError):  # symlink loop
        return None, "cannot be resolved (symbolic link loop?)"
    if resolved != inside and inside not in resolved.parents:
        return None, f"resolves outside the dataset folder (a symbolic link to {resolved})"
    return path, ""


def _entry_path(f: JsonFields, root: Path, entry: dict, i: int, key: str) -> Path | None:
    where = f"training[{i}].{key}"
    value = entry.get(key)
    if key not in entry:
        f.bad(f"training[{i}]", f"missing \"{key}\" (each entry is {{\"image\": PATH, \"label\": PATH}})")
        return None
    if not isinstance(value, str):
        f.bad(where, f"expected a path string, got {describe_kind(value)}")
        return None
    path, why = _confined(root, value)
    if path is None:
        f.bad(where, f"{json.dumps(value)}: {why}; refused")
        return None
    if file_ending(path) is None:
        f.bad(where, f"{json.dumps(value)} is not a supported image file ({', '.join(SUPPORTED_ENDINGS)})")
        return None
    return path


def scan_msd(root: Path, meta: dict, f: JsonFields) -> Dataset | None:
    f.require(meta, ("labels",))
    channel_names = f.channels(meta, "modality")
    scheme = f.msd_labels(meta) if "labels" in meta else None
    num_training = f.count(meta, "numTraining")
    name = f.name(meta, root)
    training = meta["training"]
    if not isinstance(training, list):
        f.bad("training", f"expected a list of {{\"image\": PATH, \"label\": PATH}} entries, got {describe_kind(training)}")
        return None

    problems = f.problems
    by_image: dict[Path, tuple[int, Path]] = {}  # normalised image path -> (entry index, label path)
    by_id: dict[str, tuple[int, Path]] = {}
    cases, endings = [], set()
    for i, entry in enumerate(training):
        if not isinstance(entry, dict):
            f.bad(f"training[{i}]", f"expected an object {{\"image\": PATH, \"label\": PATH}}, got {describe_kind(entry)}")
            continue
        image, label = _entry_path(f, root, entry, i, "image"), _entry_path(f, root, entry, i, "label")
        if image is None or label is None:
            continue
        if image in by_image:
            j, other_label = by_image[image]
            if other_label == label:
                f.bad(f"training[{i}]", f"repeats training[{j}] ({entry['image']}); the case is counted once")
            else:
                f.bad(f"training[{i}]", f"lists the image of training[{j}] ({entry['image']}) with another label "
                                        f"file; keep one of the two entries")
            continue
        by_image[image] = (i, label)
        ending = file_ending(image)
        case_id = image.name[: -len(ending)]
        if case_id in by_id:
            j, other = by_id[case_id]
            f.bad(f"training[{i}]", f"{image} and {other} (training[{j}]) would both be case '{case_id}' "
                                    f"(case ids come from file names); rename one")
            continue
        by_id[case_id] = (i, image)
        endings.add(ending)
        ok = True
        for path, what in ((image, "image"), (label, "label")):
            if not path.is_file():
                problems.append(f"{path}: missing {what} file (listed in dataset.json training[{i}])")
                ok = False
        if ok:
            cases.append(Case(case_id, (image,), label))

    if num_training is not None and num_training != len(training):
        problems.append(f"{f.meta_path}: numTraining is {num_training} but 'training' lists {len(training)} "
                        f"entries" + _msd_unlisted(root, by_image, problems))
    ending = endings.pop() if len(endings) == 1 else ".nii.gz"
    return Dataset(root, name, "msd", channel_names or {}, scheme.labels if scheme else {}, ending, cases,
                   **region_fields(scheme))


def _msd_unlisted(root: Path, listed: dict[Path, tuple[int, Path]], problems: list[str]) -> str:
    """Name the scans in imagesTr that no training entry lists (one line each); returns a count summary."""
    folder = root / "imagesTr"
    if not folder.is_dir():
        return ""
    listed_files = {p.resolve() for p in listed}
    unlisted = hidden = forks = 0
    for path in sorted(folder.iterdir()):
        if path.name.startswith(RESOURCE_FORK_PREFIX):
            forks += 1
        elif path.name.startswith("."):
            hidden += 1
            problems.append(f"{path}: hidden file (name starts with '.'), ignored")
        elif path.is_file() and file_ending(path) is not None and path.resolve() not in listed_files:
            unlisted += 1
            problems.append(f"{path}: in imagesTr but not listed in dataset.json 'training'")
    parts = ([f"{unlisted} scan(s) in imagesTr not listed"] if unlisted else []) \
        + ([f"{hidden} hidden file(s) ignored"] if hidden else []) \
        + ([f"{forks} macOS resource fork(s) '._*' ignored (expected junk)"] if forks else [])
    return "; " + ", ".join(parts) if parts else ""

"""Finding the cases of a dataset folder, in the nnU-Net v2 raw layout or the MSD layout.

Everything that can be checked without reading voxels is checked here, and every
problem is collected so the user sees them all at once: a wrong field in dataset.json
does not stop the folders from being listed, and a missing file does not stop the other
cases from being found (`scan_dataset`), so the fingerprint stage can read the voxels of
every case that exists and report all problems of both stages together.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

from autoseg.dataset.image_io import SUPPORTED_ENDINGS, file_ending
from autoseg.errors import DatasetInvalid

# macOS writes a "._NAME" resource fork beside every file it copies to a foreign disk; the
# Decathlon tarballs are full of them. Expected junk: counted, never named one by one.
RESOURCE_FORK_PREFIX = "._"


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
    # channel index as a string -> modality name, e.g. {"0": "CT"}. Empty only in a DatasetScan whose
    # dataset.json declares the channels unusably: the channel-count checks are then skipped (the
    # dataset.json problem is reported instead of one derived problem per case).
    channel_names: dict[str, str]
    # label name -> integer value, background included. Empty only in a DatasetScan whose dataset.json
    # declares the labels unusably: the declared-value check of label maps is then skipped.
    labels: dict[str, int]
    file_ending: str
    cases: list[Case] = field(default_factory=list)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def multi_channel_files(self) -> bool:
        """MSD stores all channels of a case in one 4D file."""
        return self.layout == "msd"


@dataclass
class DatasetScan:
    """What a look at a dataset folder found, without raising: the cases it could list (`dataset`, None
    when dataset.json cannot be understood at all) and every problem, one line each naming its file.

    A scan with problems is only for collecting more problems (the fingerprint stage reads the voxels
    of the cases found); everything else uses `load_dataset`, which refuses such a dataset.
    """

    root: Path
    dataset: Dataset | None
    problems: list[str]


def problem_file(line: str) -> str:
    """The file a problem line names (the text before the first ': ')."""
    return line.split(": ", 1)[0]


def sorted_problems(problems) -> list[str]:
    """Problem lines grouped by the file they name (sorted by it, the order within a file kept),
    each line once."""
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=problem_file)


def load_dataset(root: str | os.PathLike) -> Dataset:
    """Read dataset.json and list the training cases; raises DatasetInvalid listing every problem."""
    scan = scan_dataset(root)
    if scan.problems:
        raise DatasetInvalid(scan.root, sorted_problems(scan.problems))
    return scan.dataset


def scan_dataset(root: str | os.PathLike) -> DatasetScan:
    """Read dataset.json and list the training cases, collecting every problem instead of raising.

    Each dataset.json field is checked on its own; a broken field is reported once and the listing goes
    on with what the other fields allow (the channel count or file ending is taken from the files when
    dataset.json's is unusable), so missing files and, later, voxel problems still show.
    """
    root = Path(root)
    meta_path = root / "dataset.json"
    if not root.is_dir():
        return DatasetScan(root, None, [f"{root}: not a folder"])
    if not meta_path.is_file():
        return DatasetScan(root, None, [f"{meta_path}: missing (every dataset folder needs a dataset.json)"])
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return DatasetScan(root, None, [f"{meta_path}: not valid JSON ({e})"])
    except OSError as e:
        return DatasetScan(root, None, [f"{meta_path}: cannot be read ({e.strerror or e})"])
    if not isinstance(meta, dict):
        return DatasetScan(root, None, [f"{meta_path}: expected a JSON object, got {_kind(meta)}"])
    fields = _Fields(meta_path)
    if "channel_names" in meta or "file_ending" in meta:
        dataset = _scan_nnunet(root, meta, fields)
    elif "modality" in meta and "training" in meta:
        dataset = _scan_msd(root, meta, fields)
    else:
        fields.problems.append(f"{meta_path}: neither nnU-Net v2 ('channel_names', 'labels', 'file_ending') "
                               f"nor Decathlon ('modality', 'labels', 'training') keys found")
        dataset = None
    if dataset is not None and not dataset.cases and not fields.problems:
        fields.problems.append(f"{root}: empty dataset, no training cases found")
    return DatasetScan(root, dataset, fields.problems)


# ---------------------------------------------------------------------------------------------
# dataset.json fields


def _kind(value) -> str:
    """A JSON value's type in JSON's words, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{json.dumps(value)} (a boolean)"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key(name: str, key: str) -> str:
    return f"{name}[{json.dumps(key)}]"


class _Fields:
    """Typed reads of dataset.json; each wrong field is one line `dataset.json: JSON.PATH: what is wrong`."""

    def __init__(self, meta_path: Path):
        self.meta_path = meta_path
        self.problems: list[str] = []

    def bad(self, where: str, text: str) -> None:
        self.problems.append(f"{self.meta_path}: {where}: {text}")

    def require(self, meta: dict, keys) -> bool:
        missing = [k for k in keys if k not in meta]
        for k in missing:
            self.problems.append(f"{self.meta_path}: missing key '{k}'")
        return not missing

    def object(self, meta: dict, key: str, example: str) -> dict | None:
        value = meta[key]
        if not isinstance(value, dict):
            self.bad(key, f"expected an object like {example}, got {_kind(value)}")
            return None
        return value

    def channels(self, meta: dict, key: str) -> dict[str, str] | None:
        """`channel_names` / `modality`: {"0": name, ..., "C-1": name}. None when the count is unknown."""
        value = self.object(meta, key, '{"0": "CT"}')
        if value is None:
            return None
        if not value:
            self.bad(key, "no channels declared")
            return None
        indices = {}
        for k, name in value.items():
            if not (k.isdigit() and k.isascii() and str(int(k)) == k):
                self.bad(_key(key, k), "channel keys must be the numbers 0..N-1 as strings (\"0\", \"1\", ...)")
            else:
                indices[int(k)] = k
            if not isinstance(name, str) or not name.strip():
                self.bad(_key(key, k), f"expected the channel's modality name (e.g. \"CT\"), got {_kind(name)}")
        if len(indices) != len(value):
            return None
        missing = [str(i) for i in range(len(value)) if i not in indices]
        if missing:
            self.bad(key, f"channel keys must be 0..{len(value) - 1} without gaps; missing "
                          + ", ".join(json.dumps(m) for m in missing))
            return None
        return {str(i): str(value[indices[i]]) for i in range(len(value))}

    def label_value(self, where: str, value) -> int | None:
        if isinstance(value, list):
            self.bad(where, f"{_kind(value)} of values is a region; only integer labels are supported "
                            f"(region-based training is not)")
        elif isinstance(value, bool) or not isinstance(value, int):
            self.bad(where, f"expected an integer label value, got {_kind(value)}")
        elif value < 0:
            self.bad(where, f"label values must be 0 or more, got {value}")
        else:
            return value
        return None

    def nnunet_labels(self, meta: dict) -> dict[str, int] | None:
        """`labels`: {name: value}. None when anything is wrong with them: label maps are then not checked
        against them (every case would repeat the one dataset.json problem)."""
        value = self.object(meta, "labels", '{"background": 0, "liver": 1}')
        if value is None:
            return None
        labels = {name: self.label_value(_key("labels", name), v) for name, v in value.items()}
        if any(v is None for v in labels.values()) or not self._label_set(labels):
            return None
        return labels

    def msd_labels(self, meta: dict) -> dict[str, int] | None:
        """MSD `labels`: {"value": name}, turned into {name: value}."""
        value = self.object(meta, "labels", '{"0": "background", "1": "liver"}')
        if value is None:
            return None
        labels: dict[str, int] = {}
        usable = True
        for k, name in value.items():
            where = _key("labels", k)
            number = int(k) if re.fullmatch(r"-?[0-9]+", k) else None
            if number is None:
                self.bad(where, "label keys must be integer values as strings (\"0\", \"1\", ...)")
                usable = False
            elif number < 0:
                self.bad(where, f"label values must be 0 or more, got {number}")
                usable = False
            if not isinstance(name, str) or not name.strip():
                self.bad(where, f"expected the label's name, got {_kind(name)}")
                usable = False
                continue
            if name in labels:
                self.bad("labels", f"name {json.dumps(name)} is used for two values")
                usable = False
            elif number is not None:
                labels[name] = number
        if not usable or not self._label_set(labels):
            return None
        return labels

    def _label_set(self, labels: dict[str, int]) -> bool:
        """Checks the values together; False (after reporting) when label maps cannot be checked against them
        without each case repeating the same problem."""
        before = len(self.problems)
        by_value: dict[int, list[str]] = {}
        for name, v in labels.items():
            by_value.setdefault(v, []).append(name)
        for v, names in sorted(by_value.items()):
            if len(names) > 1:
                self.bad("labels", f"value {v} is declared twice ({', '.join(json.dumps(n) for n in names)})")
        if 0 not in by_value:
            self.bad("labels", "background must be declared as 0")
        gaps = [str(v) for v in range(max(by_value, default=0)) if v not in by_value and v != 0]
        if gaps:
            self.bad("labels", f"label values must be consecutive 0..{max(by_value)}; missing {', '.join(gaps)}")
        return len(self.problems) == before

    def count(self, meta: dict, key: str) -> int | None:
        if key not in meta:
            return None
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.bad(key, f"expected a whole number of cases, got {_kind(value)}")
            return None
        return value

    def name(self, meta: dict, root: Path) -> str:
        value = meta.get("name")
        if value is None:
            return root.name
        if not isinstance(value, str):
            self.bad("name", f"expected a string, got {_kind(value)}")
            return root.name
        return value or root.name


# ---------------------------------------------------------------------------------------------
# folder listing


@dataclass
class _Listing:
    """One folder's entries sorted by what becomes of them."""

    matched: list[Path] = field(default_factory=list)  # carry the declared ending
    wrong_ending: list[tuple[Path, str]] = field(default_factory=list)  # another supported ending
    hidden: list[Path] = field(default_factory=list)  # names starting with '.', resource forks excluded
    forks: int = 0
    other: list[Path] = field(default_factory=list)  # not an image file (or a folder)


def _list_folder(folder: Path, ending: str) -> _Listing:
    listing = _Listing()
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith(RESOURCE_FORK_PREFIX):
            listing.forks += 1
        elif name.startswith("."):
            listing.hidden.append(path)
        elif not path.is_file():
            listing.other.append(path)
        elif name.endswith(ending):
            listing.matched.append(path)
        elif file_ending(path) is not None:
            found = file_ending(path)
            listing.wrong_ending.append((path, name[-len(found):]))
        else:
            listing.other.append(path)
    return listing


def _infer_ending(labels_dir: Path) -> str | None:
    """The one supported ending of the label files, used when dataset.json's file_ending is unusable."""
    if not labels_dir.is_dir():
        return None
    endings = {file_ending(p) for p in labels_dir.iterdir() if not p.name.startswith(".") and p.is_file()}
    endings.discard(None)
    return endings.pop() if len(endings) == 1 else None


def _ignored_summary(listings: list[_Listing], ending: str, unexplained_hidden: int) -> str:
    wrong = sum(len(x.wrong_ending) for x in listings)
    other = sum(len(x.other) for x in listings)
    forks = sum(x.forks for x in listings)
    parts = []
    if wrong:
        parts.append(f"{wrong} with an ending other than file_ending '{ending}'")
    if unexplained_hidden:
        parts.append(f"{unexplained_hidden} hidden (name starting with '.')")
    if other:
        parts.append(f"{other} not an image file")
    if forks:
        parts.append(f"{forks} macOS resource fork(s) '._*' (expected junk)")
    return "; ignored: " + ", ".join(parts) if parts else ""


# ---------------------------------------------------------------------------------------------
# nnU-Net v2 raw layout


def _scan_nnunet(root: Path, meta: dict, f: _Fields) -> Dataset | None:
    f.require(meta, ("channel_names", "labels", "file_ending"))
    channel_names = f.channels(meta, "channel_names") if "channel_names" in meta else None
    labels = f.nnunet_labels(meta) if "labels" in meta else None
    num_training = f.count(meta, "numTraining")
    name = f.name(meta, root)
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"

    ending = None
    if "file_ending" in meta:
        ending = meta["file_ending"]
        if not isinstance(ending, str):
            f.bad("file_ending", f"expected a string like \".nii.gz\", got {_kind(ending)}")
            ending = None
        elif ending not in SUPPORTED_ENDINGS:
            f.problems.append(f"{f.meta_path}: file_ending '{ending}' not supported "
                              f"(use one of {', '.join(SUPPORTED_ENDINGS)})")
            ending = None
    ending = ending or _infer_ending(labels_dir)

    missing_dirs = [d for d in (images_dir, labels_dir) if not d.is_dir()]
    for d in missing_dirs:
        f.problems.append(f"{d}: missing folder")
    if missing_dirs or ending is None:
        return None

    images, label_listing = _list_folder(images_dir, ending), _list_folder(labels_dir, ending)
    problems = f.problems
    for path, found in images.wrong_ending + label_listing.wrong_ending:
        problems.append(f"{path}: ending '{found}' is not dataset.json's file_ending '{ending}', "
                        f"so the file is not used (convert it, or remove it)")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    channel_files: dict[str, dict[int, Path]] = {}
    for path in images.matched:
        m = pattern.match(path.name)
        if not m:
            problems.append(f"{path}: name does not follow CASE_XXXX{ending}")
            continue
        channel_files.setdefault(m.group(1), {})[int(m.group(2))] = path
    label_files = {p.name[: -len(ending)]: p for p in label_listing.matched}

    # A wanted file that exists hidden or with another ending is explained by that file, not reported
    # as plainly missing: the wrong-ending file has its own line, the hidden one is named in this one.
    wrong_stems = {(p.parent, p.name[: -len(e)]) for p, e in images.wrong_ending + label_listing.wrong_ending}
    hidden_names = {(p.parent, p.name[1:]): p for p in images.hidden + label_listing.hidden}
    explained: set[Path] = set()

    def absent(path: Path) -> str | None:
        """None when another line already explains why `path` is absent, else a hint ('' for none)."""
        if (path.parent, path.name[: -len(ending)]) in wrong_stems:
            return None
        hidden = hidden_names.get((path.parent, path.name))
        if hidden is None:
            return ""
        explained.add(hidden)
        return f"; a hidden file {hidden.name} is there, but names starting with '.' are ignored"

    if channel_names is not None:
        n_channels, expectation = len(channel_names), "dataset.json declares"
    else:
        n_channels = max((max(files) + 1 for files in channel_files.values()), default=1)
        expectation = "other cases have"
    case_ids = sorted(set(channel_files) | set(label_files))
    cases = []
    for case_id in case_ids:
        files = channel_files.get(case_id, {})
        complete = True
        for_label = "" if files else f" for label file {label_files[case_id].name}"
        for c in range(n_channels):
            if c not in files:
                complete = False
                path = images_dir / f"{case_id}_{c:04d}{ending}"
                hint = absent(path)
                if hint is not None:
                    problems.append(f"{path}: missing image file{for_label} "
                                    f"({expectation} {n_channels} channel(s){hint})")
        for c in sorted(c for c in files if c >= n_channels):
            complete = False
            problems.append(f"{files[c]}: channel {c} not declared in dataset.json "
                            f"(channel count mismatch: {n_channels} declared)" if channel_names is not None else
                            f"{files[c]}: channel {c}, but other cases have {n_channels} channel(s)")
        if case_id not in label_files:
            complete = False
            path = labels_dir / (case_id + ending)
            hint = absent(path)
            if hint is not None:
                problems.append(f"{path}: missing label file for case '{case_id}'{hint}")
        if complete:
            cases.append(Case(case_id, tuple(files[c] for c in range(n_channels)), label_files[case_id]))

    if num_training is not None and num_training != len(case_ids):
        # Explain the difference by what was left out; the hidden files not yet named get a line each.
        unexplained = [p for p in images.hidden + label_listing.hidden if p not in explained]
        for path in unexplained:
            problems.append(f"{path}: hidden file (name starts with '.'), ignored")
        for path in images.other + label_listing.other:
            problems.append(f"{path}: not an image file ending in '{ending}', ignored")
        problems.append(f"{f.meta_path}: numTraining is {num_training} but {len(case_ids)} case(s) were found in "
                        f"{images_dir.name}/{labels_dir.name}"
                        + _ignored_summary([images, label_listing], ending, len(unexplained)))
    return Dataset(root, name, "nnunet", channel_names or {}, labels or {}, ending, cases)


# ---------------------------------------------------------------------------------------------
# Medical Segmentation Decathlon layout


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


def _entry_path(f: _Fields, root: Path, entry: dict, i: int, key: str) -> Path | None:
    where = f"training[{i}].{key}"
    value = entry.get(key)
    if key not in entry:
        f.bad(f"training[{i}]", f"missing \"{key}\" (each entry is {{\"image\": PATH, \"label\": PATH}})")
        return None
    if not isinstance(value, str):
        f.bad(where, f"expected a path string, got {_kind(value)}")
        return None
    path, why = _confined(root, value)
    if path is None:
        f.bad(where, f"{json.dumps(value)}: {why}; refused")
        return None
    if file_ending(path) is None:
        f.bad(where, f"{json.dumps(value)} is not a supported image file ({', '.join(SUPPORTED_ENDINGS)})")
        return None
    return path


def _scan_msd(root: Path, meta: dict, f: _Fields) -> Dataset | None:
    f.require(meta, ("labels",))
    channel_names = f.channels(meta, "modality")
    labels = f.msd_labels(meta) if "labels" in meta else None
    num_training = f.count(meta, "numTraining")
    name = f.name(meta, root)
    training = meta["training"]
    if not isinstance(training, list):
        f.bad("training", f"expected a list of {{\"image\": PATH, \"label\": PATH}} entries, got {_kind(training)}")
        return None

    problems = f.problems
    by_image: dict[Path, tuple[int, Path]] = {}  # normalised image path -> (entry index, label path)
    by_id: dict[str, tuple[int, Path]] = {}
    cases, endings = [], set()
    for i, entry in enumerate(training):
        if not isinstance(entry, dict):
            f.bad(f"training[{i}]", f"expected an object {{\"image\": PATH, \"label\": PATH}}, got {_kind(entry)}")
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
    return Dataset(root, name, "msd", channel_names or {}, labels or {}, ending, cases)


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

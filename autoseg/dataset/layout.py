"""Finding the cases of a dataset folder, in the nnU-Net v2 raw layout or the MSD layout.

Everything that can be checked without reading voxels is checked here, and every
problem is collected so the user sees them all at once: a wrong field in dataset.json
does not stop the folders from being listed, and a missing file does not stop the other
cases from being found (`scan_dataset`), so the fingerprint stage can read the voxels of
every case that exists and report all problems of both stages together.
"""

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from autoseg.dataset.cases import RESOURCE_FORK_PREFIX, Case, Dataset, DatasetScan, region_fields  # noqa: F401 - the layout's public names
from autoseg.dataset.dataset_json import JsonFields, describe_kind
from autoseg.dataset.label_codes import read_label_codes
from autoseg.dataset.geometry import SUPPORTED_ENDINGS, file_ending
from autoseg.dataset.layout_msd import scan_msd
from autoseg.errors import DatasetInvalid


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
        return DatasetScan(root, None, [f"{meta_path}: expected a JSON object, got {describe_kind(meta)}"])
    fields = JsonFields(meta_path)
    if "channel_names" in meta or "file_ending" in meta:
        dataset = _scan_nnunet(root, meta, fields)
    elif "modality" in meta and "training" in meta:
        dataset = scan_msd(root, meta, fields)
    else:
        fields.problems.append(f"{meta_path}: neither nnU-Net v2 ('channel_names', 'labels', 'file_ending') "
                               f"nor Decathlon ('modality', 'labels', 'training') keys found")
        dataset = None
    if dataset is not None and not dataset.cases and not fields.problems:
        fields.problems.append(f"{root}: empty dataset, no training cases found")
    return DatasetScan(root, dataset, fields.problems)


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


def _scan_nnunet(root: Path, meta: dict, f: JsonFields) -> Dataset | None:
    f.require(meta, ("channel_names", "labels", "file_ending"))
    channel_names = f.channels(meta, "channel_names") if "channel_names" in meta else None
    scheme = f.nnunet_labels(meta) if "labels" in meta else None
    label_codes = read_label_codes(f, meta, scheme.labels if scheme else None)
    num_training = f.count(meta, "numTraining")
    name = f.name(meta, root)
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"

    ending = None
    if "file_ending" in meta:
        ending = meta["file_ending"]
        if not isinstance(ending, str):
            f.bad("file_ending", f"expected a string like \".nii.gz\", got {describe_kind(ending)}")
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
    return Dataset(root, name, "nnunet", channel_names or {}, scheme.labels if scheme else {}, ending, cases,
                   label_codes, **region_fields(scheme))

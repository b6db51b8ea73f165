"""What a dataset folder holds once found: its cases and their files, and the result of a scan that
collects problems instead of raising."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from autoseg.dataset.label_codes import LabelCode
from autoseg.label_scheme import LabelScheme, Region

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
    # label name -> integer value, background included (for regions: the value each region is written as in
    # predicted label maps; never the ignore label). Empty only in a DatasetScan whose dataset.json declares
    # the labels unusably: the declared-value check of label maps is then skipped.
    labels: dict[str, int]
    file_ending: str
    cases: list[Case] = field(default_factory=list)
    label_codes: dict[str, LabelCode] = field(default_factory=dict)  # optional, for DICOM SEG
    regions: list[Region] = field(default_factory=list)  # region-based training (autoseg.label_scheme)
    ignore_label: int | None = None  # the value of unannotated voxels (sparse labels)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def multi_channel_files(self) -> bool:
        """MSD stores all channels of a case in one 4D file."""
        return self.layout == "msd"


def region_fields(scheme: LabelScheme | None) -> dict:
    """Dataset's keyword arguments for a label scheme's regions and ignore label."""
    return {"regions": scheme.regions, "ignore_label": scheme.ignore_label} if scheme else {}


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

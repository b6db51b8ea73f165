"""DICOM in and DICOM SEG out (docs/dicom.md). Needs the `dicom` extra: `pip install autoseg[dicom]`.

- `series.py`: find the image series under a folder, check each one, read it as a volume with its geometry.
- `cases.py`: series made into cases (one per model channel, `--channel-series`), the modality check.
- `seg.py`: write a label map as a DICOM Segmentation that references its source series; read one back.
- `series_writer.py`: write a volume as a DICOM series (tests, benchmarks and the docs' figures).
"""
from __future__ import annotations

from autoseg.errors import AutosegError

INSTALL_HINT = "DICOM needs the dicom extra: pip install 'autoseg[dicom]'"


def dicom_available() -> bool:
    try:
        require_dicom_libraries()
    except AutosegError:
        return False
    return True


def require_dicom_libraries() -> None:
    """One line instead of an ImportError when pydicom or highdicom is missing."""
    try:
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError as e:
        raise AutosegError(f"{INSTALL_HINT} ({e.name} is not installed)") from None

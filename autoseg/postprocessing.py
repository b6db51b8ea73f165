"""Postprocessing of predictions: a dense CRF on the class probabilities (autoseg.crf), then keeping only the
largest connected component of the label map.

Which steps apply to a model is decided from its cross-validation predictions (evaluation) and
saved as `postprocessing.json` in the configuration's model folder; `autoseg predict` applies it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from autoseg.crf import CrfSettings, refine
from autoseg.jsonio import load_versioned, write_json_atomic

POSTPROCESSING_VERSION = 1
POSTPROCESSING_FILE = "postprocessing.json"


@dataclass
class Postprocessing:
    version: int = POSTPROCESSING_VERSION
    # first: keep the largest component of all foreground classes together (the rest becomes background)
    largest_component_of_foreground: bool = False
    # then, for each of these label values, keep only that class's largest component
    largest_component_of_classes: list[int] = field(default_factory=list)
    # before both, on the probabilities: a dense CRF with these settings (None: none)
    crf: CrfSettings | None = None

    @property
    def is_identity(self) -> bool:
        return not self.largest_component_of_foreground and not self.largest_component_of_classes and self.crf is None

    @property
    def label_steps_only(self) -> "Postprocessing":
        """The steps that work on a label map (without the CRF, which needs the probabilities)."""
        return Postprocessing(largest_component_of_foreground=self.largest_component_of_foreground,
                              largest_component_of_classes=list(self.largest_component_of_classes))


@dataclass(frozen=True)
class ScanIntensities:
    """What the CRF's appearance kernel needs of the scan, on the grid of the probabilities: the first channel
    normalised as the plan says, and the spacing in mm per array axis."""

    image: np.ndarray
    spacing: tuple[float, ...]


def refine_probabilities(probabilities: np.ndarray, scan: ScanIntensities, settings: CrfSettings) -> np.ndarray:
    return refine(probabilities, scan.image, scan.spacing, settings)


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean mask (all of it if it has one or none)."""
    components, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == sizes.argmax()


def apply_postprocessing(segmentation: np.ndarray, steps: Postprocessing) -> np.ndarray:
    """A new label map with the label-map steps applied; voxels removed become background (0). (The CRF, when
    the steps have one, was applied to the probabilities before: autoseg.model.prediction.restore.)"""
    out = segmentation.copy()
    if steps.largest_component_of_foreground:
        foreground = out > 0
        out[foreground & ~keep_largest_component(foreground)] = 0
    for value in steps.largest_component_of_classes:
        mask = out == value
        out[mask & ~keep_largest_component(mask)] = 0
    return out


def load_postprocessing(model_dir: str | Path) -> Postprocessing | None:
    """The decision saved in a configuration's model folder, or None when none was made."""
    path = Path(model_dir) / POSTPROCESSING_FILE
    return load_versioned(Postprocessing, path, POSTPROCESSING_VERSION) if path.is_file() else None


def save_postprocessing(steps: Postprocessing, model_dir: str | Path) -> None:
    write_json_atomic(Path(model_dir) / POSTPROCESSING_FILE, steps)

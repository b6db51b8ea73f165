"""From a preprocessed case to label maps on disk: the one path end-of-training validation, `autoseg
predict`, the Python API and the service all take.

network(s) -> sliding-window logits on the preprocessed grid -> (cascade: the first stage's segmentation
as extra channels) -> logits restored to the scan's own grid and orientation, argmax there (probabilities:
softmax there, as nnU-Net) -> (ensemble: members' probabilities averaged there) -> postprocessing (a dense CRF
on the probabilities there, then connected components) -> files written atomically, the label map last so its
presence marks a finished case.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoseg.label_scheme import LabelScheme
from autoseg.model.cascade import cascade_classes, one_hot_channels
from autoseg.model.outputs import normalized_entropy, save_probabilities
from autoseg.model.sliding_window import STEP, predict_logits
from autoseg.planning.plan_types import Plan
from autoseg.postprocessing import Postprocessing, ScanIntensities, apply_postprocessing, refine_probabilities
from autoseg.preprocessing.case import (label_on_grid_of, restore_probabilities, restore_segmentation,
                                        write_like_source)
from autoseg.preprocessing.properties import CaseProperties


@dataclass(frozen=True)
class InferenceSettings:
    """How the networks are run: device, autocast dtype (None: float32), mirroring (test-time
    augmentation) and the sliding window's step as a fraction of the patch."""

    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None
    mirror: bool = True
    step: float = STEP


@dataclass
class PreparedInput:
    """One case preprocessed for one model (and for the cascade's first stage, when there is one)."""

    image: np.ndarray
    props: CaseProperties
    previous: "PreparedInput | None" = None


@dataclass
class Member:
    """What the shared path needs of a model: the plan, configuration and networks of its folds; the
    cascade's first stage as another Member."""

    plan: Plan
    configuration: str
    networks: list[torch.nn.Module]
    previous_stage: "Member | None" = None


def network_logits(member: Member, image: np.ndarray, settings: InferenceSettings) -> torch.Tensor:
    """(classes, *grid) the folds' mean logits on the preprocessed grid (Gaussian-weighted sliding window)."""
    config = member.plan.configurations[member.configuration]
    mirror_axes = tuple(range(config.ndim)) if settings.mirror else ()
    return predict_logits(member.networks, image, config.patch_size, member.plan.label_scheme.output_channels,
                          settings.device, mirror_axes, settings.amp_dtype, settings.step)


def case_logits(member: Member, prepared: PreparedInput, settings: InferenceSettings) -> torch.Tensor:
    """Logits of one member on its preprocessed grid, running the cascade's first stage first.

    Logits, not probabilities, are what gets restored to the scan's grid: nnU-Net resamples logits and
    takes the softmax afterwards, and the argmax near class borders depends on which of the two is
    interpolated."""
    image = prepared.image
    if member.previous_stage is not None:
        stage, low = member.previous_stage, prepared.previous
        low_labels = stage.plan.label_scheme.label_map(network_logits(stage, low.image, settings).numpy())
        segmentation = label_on_grid_of(low_labels, low.props, prepared.props, stage.plan)
        image = np.concatenate([image, one_hot_channels(segmentation, cascade_classes(stage.plan))])
    return network_logits(member, image, settings)


def ensemble_labels(probabilities: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """The ensemble rule: argmax of (mean) probabilities over classes -> label values (ties: lower class);
    for regions, each region where its mean probability is above one half, written in order."""
    return scheme.label_map(probabilities, probabilities=True)


@dataclass(frozen=True)
class OutputFiles:
    """Where one case's outputs go; None: not written."""

    label_map: Path | None  # None: no label map file (a DICOM SEG alone)
    probabilities: Path | None = None  # .npz, restored to the scan's grid
    entropy: Path | None = None
    half_probabilities: bool = False  # float16 .npz: half the disk, enough to average and argmax


@dataclass
class Restored:
    """A case's prediction on its scan's own grid: the label map, and the class probabilities when asked for."""

    segmentation: np.ndarray
    probabilities: np.ndarray | None
    props: CaseProperties  # the first member's, for the scan's geometry
    label_values: list[int]  # of each probability channel
    regions: bool = False  # probabilities are one sigmoid per region, not a softmax over classes


def restore(members: list[tuple[np.ndarray, CaseProperties, Plan]], *, postprocessing: Postprocessing | None = None,
            keep_probabilities: bool = False, scan: ScanIntensities | None = None) -> Restored:
    """members: (logits on the preprocessed grid, that grid's properties, plan) per model. Restores to the
    scan's own grid (one member: the argmax of the resampled logits class by class, the memory-light path;
    several: each member's softmax of its resampled logits, averaged on the scan's grid where all members
    meet), then postprocesses. A CRF step needs the scan's intensities on that grid (`scan`); without them it
    is refused rather than skipped."""
    scheme = members[0][2].label_scheme
    crf = postprocessing.crf if postprocessing is not None else None
    if crf is not None and (scan is None or scheme.uses_regions):
        raise ValueError("a CRF step needs the scan's intensities and class (not region) probabilities")
    restored = None
    if len(members) == 1 and crf is None:
        logits, props, plan = members[0]
        segmentation = restore_segmentation(logits, props, plan)
        if keep_probabilities:
            restored = restore_probabilities(logits, props, plan, from_logits=True)
    else:
        for logits, props, plan in members:
            member = restore_probabilities(logits, props, plan, from_logits=True)
            restored = member if restored is None else restored + member
        restored /= len(members)
        if crf is not None:
            restored = refine_probabilities(restored, scan, crf)
        segmentation = ensemble_labels(restored, scheme)
    if postprocessing is not None and not postprocessing.label_steps_only.is_identity:
        segmentation = apply_postprocessing(segmentation, postprocessing)
    return Restored(segmentation, restored, members[0][1], scheme.output_values, scheme.uses_regions)


def write_outputs(restored: Restored, files: OutputFiles, *, before_label_map=None) -> None:
    """Probabilities and entropy first, then `before_label_map()` (e.g. a report), the label map last: its
    presence marks a finished case."""
    if files.probabilities is not None:
        p = restored.probabilities
        save_probabilities(files.probabilities, p.astype(np.float16) if files.half_probabilities else p,
                           restored.label_values)
    if files.entropy is not None:
        write_like_source(normalized_entropy(restored.probabilities, regions=restored.regions), restored.props,
                          files.entropy)
    if before_label_map is not None:
        before_label_map()
    if files.label_map is not None:
        write_like_source(restored.segmentation, restored.props, files.label_map)


def restore_and_write(members: list[tuple[np.ndarray, CaseProperties, Plan]], files: OutputFiles | None, *,
                      postprocessing: Postprocessing | None = None, scan: ScanIntensities | None = None) -> np.ndarray:
    """restore() then write_outputs() (nothing written without files); returns the label map."""
    keep = files is not None and (files.probabilities is not None or files.entropy is not None)
    restored = restore(members, postprocessing=postprocessing, keep_probabilities=keep, scan=scan)
    if files is not None:
        write_outputs(restored, files)
    return restored.segmentation

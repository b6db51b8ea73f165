"""The plan: every decision downstream steps need, as typed, versioned JSON."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from autoseg.dataset.label_codes import LabelCode
from autoseg.errors import AutosegError
from autoseg.jsonio import load_versioned, write_json_atomic
from autoseg.label_scheme import LabelScheme, Region

PLAN_VERSION = 2
CONFIGURATION_NAMES = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
# `autoseg plan --families`: another network family planned beside a configuration, on its data, named
# "<configuration>@<preset>" (e.g. 3d_fullres@deeplab), trained, compared by find-best and predicted like any other
FAMILY_SEPARATOR = "@"
FAMILY_BASES = ("2d", "3d_fullres")
NormalizationScheme = Literal["ct", "zscore", "none", "rescale_0_1"]


@dataclass
class ChannelNormalization:
    """How one input channel is normalized; CT carries the dataset-wide clip range and statistics."""

    channel: str
    scheme: NormalizationScheme
    use_nonzero_mask: bool
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None


@dataclass
class Resampling:
    """Interpolation used when resampling to a configuration's spacing."""

    image_order: int = 3
    label_method: Literal["onehot_linear"] = "onehot_linear"
    # Above this max/min spacing ratio the coarse axis is resampled separately.
    anisotropy_threshold: float = 3.0
    coarse_axis_order: int = 0


@dataclass
class Configuration:
    """One trainable configuration: its grid, patch, batch and network topology (axes already transposed)."""

    name: str
    data_identifier: str
    spacing: list[float]
    median_shape: list[float]
    patch_size: list[int]
    batch_size: int
    num_pools_per_axis: list[int]
    pool_strides: list[list[int]]  # one entry per stage; stage 0 is all ones
    conv_kernels: list[list[int]]  # one entry per stage
    features_per_stage: list[int]
    convs_per_stage_encoder: list[int]
    convs_per_stage_decoder: list[int]
    batch_dice: bool
    estimated_feature_map_voxels: int
    previous_stage: str | None = None
    next_stage: str | None = None
    # the network family: "plain" (convolutions per stage), "resenc" (convs_per_stage_encoder counts residual
    # blocks, after a stem convolution), "deeplab" (resenc with atrous deepest stages and ASPP), or a classic
    # family (autoseg.model.families); autoseg.planning.presets
    architecture: Literal["plain", "resenc", "deeplab", "fcn", "segnet", "vnet", "unetpp", "pspnet",
                          "hrnet"] = "plain"
    # deeplab and pspnet (autoseg.planning.atrous): the deepest stages that keep their resolution, each stage's
    # dilation per axis; deeplab: the ASPP branches' rates and kernel per axis
    atrous_stages: int = 0
    dilations: list[list[int]] = field(default_factory=list)
    aspp_rates: list[list[int]] = field(default_factory=list)
    aspp_kernel: list[int] = field(default_factory=list)
    # pspnet only (autoseg.planning.pyramid): the pyramid pooling levels' bins per axis
    pyramid_bins: list[list[int]] = field(default_factory=list)
    # hrnet only: how many parallel resolution streams (stream k at stage k+1's resolution)
    streams: int = 0
    # Elastic deformation costs augmentation time for little gain on most datasets: a switch, off.
    elastic_deformation: bool = False

    @property
    def ndim(self) -> int:
        return len(self.patch_size)

    @property
    def num_stages(self) -> int:
        return len(self.pool_strides)

    @property
    def network_strides(self) -> list[list[int]]:
        """What each stage really strides: the planned pool stride, 1 in an atrous stage."""
        first_atrous = self.num_stages - self.atrous_stages
        return [[1] * self.ndim if stage >= first_atrous else list(stride)
                for stage, stride in enumerate(self.pool_strides)]


@dataclass
class Plan:
    """Output of `autoseg plan`: read by preprocessing, training and prediction, never re-derived."""

    version: int
    dataset_name: str
    fingerprint_file: str
    gpu_memory_gb: float
    # Every scan is moved into this voxel orientation (permutations and flips only) before anything else,
    # in training and in prediction; the axes of everything below are that orientation's, then transposed.
    orientation: str
    transpose_forward: list[int]
    transpose_backward: list[int]
    original_median_spacing: list[float]  # after transpose
    original_median_shape: list[float]  # after transpose, after crop
    channel_names: dict[str, str]
    labels: dict[str, int]
    normalization: list[ChannelNormalization]
    resampling: Resampling
    configurations: dict[str, Configuration] = field(default_factory=dict)
    label_codes: dict[str, LabelCode] = field(default_factory=dict)  # dataset.json's, for DICOM SEG segments
    # region-based training: sigmoid outputs per region, `labels` holds each region's value in label maps
    regions: list[Region] = field(default_factory=list)
    ignore_label: int | None = None  # unannotated voxels (sparse labels): skipped by loss, sampler and metrics
    # `autoseg plan --plan-from`: the dataset (and file) whose network and preprocessing this plan keeps
    transferred_from: str | None = None
    preset: str = "plain"  # the network preset it was planned for (autoseg.planning.presets)

    @property
    def label_scheme(self) -> LabelScheme:
        return LabelScheme.of(self)


def save_plan(plan: Plan, path) -> None:
    write_json_atomic(path, plan)


def load_plan(path) -> Plan:
    """Read and check a plan; names that become paths must stay inside the output folder, since a
    hand-edited plan.json is user input like any other."""
    plan = load_versioned(Plan, path, PLAN_VERSION, "rerun autoseg plan (and preprocess and train)")
    check_plan_paths(plan, path)
    return plan


def configuration_order(name: str) -> tuple[int, str]:
    """Sort key: the base configurations in CONFIGURATION_NAMES' order, each followed by its family variants."""
    base, _, family = name.partition(FAMILY_SEPARATOR)
    return (CONFIGURATION_NAMES.index(base) if base in CONFIGURATION_NAMES else len(CONFIGURATION_NAMES), family)


def is_configuration_name(name: str) -> bool:
    """One of CONFIGURATION_NAMES, or a family variant of 2d / 3d_fullres ("3d_fullres@deeplab")."""
    from autoseg.planning.presets import PRESETS

    base, separator, family = name.partition(FAMILY_SEPARATOR)
    if not separator:
        return name in CONFIGURATION_NAMES
    return base in FAMILY_BASES and family in PRESETS


def check_configuration_name(name: str, where) -> None:
    if not is_configuration_name(name):
        raise AutosegError(f"{where}: unknown configuration {name!r} ({', '.join(CONFIGURATION_NAMES)}, or "
                           f"2d / 3d_fullres{FAMILY_SEPARATOR}<preset> for another network family)")


def check_plan_paths(plan: Plan, where) -> None:
    for key, config in plan.configurations.items():
        check_configuration_name(key, where)
        for field_name in ("data_identifier",):
            value = getattr(config, field_name)
            if not is_plain_name(value):
                raise AutosegError(f"{where}: configurations.{key}.{field_name} {value!r} must be a plain folder "
                                   f"name (no '/', '\\' or '..'): it names a folder inside the output folder")
        if config.previous_stage is not None and config.previous_stage not in plan.configurations:
            raise AutosegError(f"{where}: configurations.{key}.previous_stage {config.previous_stage!r} is not in "
                               f"the plan")
    from autoseg.dataset.orientation import check_code  # here: nibabel is not needed to import the plan types

    try:
        check_code(plan.orientation)
    except AutosegError as e:
        raise AutosegError(f"{where}: orientation: {e}") from None
    if not is_plain_name(plan.fingerprint_file):
        raise AutosegError(f"{where}: fingerprint_file {plan.fingerprint_file!r} must be a path inside the output "
                           f"folder")


def is_plain_name(value: str) -> bool:
    """A single path component that cannot leave its folder."""
    return bool(value) and value not in (".", "..") and not any(c in value for c in "/\\\0") and value.strip() == value

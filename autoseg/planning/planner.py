"""From a fingerprint to a plan: spacing, transpose, configurations with patch, batch and topology."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.fingerprint import Fingerprint
from autoseg.planning.atrous import atrous_layout
from autoseg.planning.family_memory import (fcn_voxels, hrnet_voxels, pspnet_voxels, segnet_voxels, unetpp_voxels,
                                            vnet_voxels)
from autoseg.planning.memory import (deeplab_feature_map_voxels, feature_map_voxels, reference_budget,
                                     residual_feature_map_voxels)
from autoseg.planning.normalization import plan_normalization
from autoseg.planning.plan_types import (CONFIGURATION_NAMES, FAMILY_BASES, FAMILY_SEPARATOR, PLAN_VERSION,
                                        Configuration, Plan, Resampling)
from autoseg.planning.presets import Preset, get_preset
from autoseg.planning.pyramid import pyramid_bins
from autoseg.planning.spacing import resampled_shape, target_spacing, transpose_for
from autoseg.planning.topology import pool_and_conv_layout

BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
MIN_BATCH_SIZE = 2
LOWRES_WHEN_PATCH_COVERS_BELOW = 0.25
LOWRES_SPACING_STEP = 1.03
LOWRES_MIN_SHRINK = 2.0
# Starting patch volume, before clipping to the median shape and shrinking to the budget.
INITIAL_PATCH_EDGE = {2: 2048, 3: 256}


@dataclass(frozen=True)
class Sizing:
    """What patches and batches are sized against: the network preset and the memory it may use."""

    preset: Preset
    gpu_memory_gb: float


HRNET_MAX_STREAMS = 4  # HRNet's W, 2W, 4W, 8W


def family_layout(architecture: str, spacing, topo) -> dict:
    """The Configuration fields a family's network needs beyond the topology: DeepLab's and PSPNet's atrous
    stages (with ASPP's rates, or PSPNet's pyramid bins), HRNet's number of streams."""
    if architecture in ("deeplab", "pspnet"):
        layout = atrous_layout(spacing, topo.patch_size, topo.pool_strides)
        fields = {"atrous_stages": layout.atrous_stages, "dilations": layout.dilations}
        if architecture == "deeplab":
            return {**fields, "aspp_rates": layout.aspp_rates, "aspp_kernel": layout.aspp_kernel}
        return {**fields, "pyramid_bins": pyramid_bins(layout.bottleneck_size)}
    if architecture == "hrnet":
        return {"streams": max(1, min(HRNET_MAX_STREAMS, len(topo.pool_strides) - 1))}
    return {}


def feature_map_count(architecture: str, topo, layout: dict, features, num_classes: int, encoder, decoder) -> int:
    """One sample's feature-map voxels through the family's network (autoseg.planning.memory, .family_memory)."""
    patch, strides = topo.patch_size, topo.pool_strides
    if architecture == "resenc":
        return residual_feature_map_voxels(patch, strides, features, num_classes, encoder, decoder)
    if architecture in ("deeplab", "pspnet"):  # the atrous stages keep their input's resolution
        first_atrous = len(strides) - layout["atrous_stages"]
        real = [[1] * len(patch) if stage >= first_atrous else stride for stage, stride in enumerate(strides)]
        if architecture == "deeplab":
            return deeplab_feature_map_voxels(patch, real, features, num_classes, encoder, decoder,
                                              len(layout["aspp_rates"]))
        return pspnet_voxels(patch, real, features, num_classes, encoder, layout["pyramid_bins"])
    counts = {"fcn": lambda: fcn_voxels(patch, strides, features, num_classes, encoder),
              "segnet": lambda: segnet_voxels(patch, strides, features, num_classes, encoder),
              "vnet": lambda: vnet_voxels(patch, strides, features, num_classes, encoder, decoder),
              "unetpp": lambda: unetpp_voxels(patch, strides, features, num_classes, encoder, decoder),
              "hrnet": lambda: hrnet_voxels(patch, strides, features, num_classes, encoder, layout["streams"])}
    if architecture in counts:
        return counts[architecture]()
    return feature_map_voxels(patch, strides, features, num_classes, encoder[0])


def _configuration(name, spacing, median_shape, num_classes, n_voxels_dataset, sizing: Sizing) -> Configuration:
    """Largest aspect-correct patch that fits the memory budget, then the batch that fills it."""
    ndim = len(spacing)
    spacing = np.asarray(spacing, dtype=np.float64)
    median_shape = np.asarray(median_shape, dtype=np.float64)
    max_features = MAX_FEATURES[ndim]

    def features(n_stages):
        return [min(max_features, BASE_FEATURES * 2 ** i) for i in range(n_stages)]

    preset = sizing.preset

    def estimate(topo):
        encoder, decoder = preset.blocks(len(topo.pool_strides))
        return feature_map_count(preset.architecture, topo, family_layout(preset.architecture, spacing, topo),
                                 features(len(topo.pool_strides)), num_classes, encoder, decoder)

    aspect = 1.0 / spacing
    edge = INITIAL_PATCH_EDGE[ndim]
    initial = [round(a) for a in aspect * (edge ** ndim / np.prod(aspect)) ** (1.0 / ndim)]
    initial = [min(i, m) for i, m in zip(initial, median_shape)]
    topo = pool_and_conv_layout(spacing, initial)
    voxels = estimate(topo)
    reference, ref_batch = reference_budget(ndim, sizing.gpu_memory_gb, preset)
    # The reference was measured at ref_batch samples: the plain network needs room for the minimum batch, a
    # residual one for the reference batch itself (nnU-Net's ResEnc planners).
    room = ref_batch if preset.fit_at_reference_batch else MIN_BATCH_SIZE
    while voxels / ref_batch * room > reference:
        patch = list(topo.patch_size)
        axis = int(np.argsort([p / m for p, m in zip(patch, median_shape)])[-1])
        # Step by the divisibility that the *smaller* patch will need, so no valid size is skipped.
        trial = list(patch)
        trial[axis] -= topo.divisible_by[axis]
        patch[axis] -= pool_and_conv_layout(spacing, trial).divisible_by[axis]
        topo = pool_and_conv_layout(spacing, patch)
        voxels = estimate(topo)
    batch = round(reference / voxels * ref_batch)
    cap = round(n_voxels_dataset * preset.max_dataset_fraction / np.prod(topo.patch_size, dtype=np.float64))
    batch = max(min(batch, cap), MIN_BATCH_SIZE)
    n_stages = len(topo.pool_strides)
    encoder, decoder = preset.blocks(n_stages)
    return Configuration(
        name=name, data_identifier=name, spacing=[float(s) for s in spacing],
        median_shape=[float(m) for m in median_shape], patch_size=[int(p) for p in topo.patch_size],
        batch_size=int(batch), num_pools_per_axis=topo.num_pools_per_axis, pool_strides=topo.pool_strides,
        conv_kernels=topo.conv_kernels, features_per_stage=features(n_stages),
        convs_per_stage_encoder=encoder, convs_per_stage_decoder=decoder,
        batch_dice=False, estimated_feature_map_voxels=int(voxels), architecture=preset.architecture,
        **family_layout(preset.architecture, spacing, topo))


def _lowres(fullres: Configuration, median_shape, num_classes, num_cases, sizing: Sizing) -> Configuration | None:
    """Coarsen the spacing in small steps until a patch covers enough of the (smaller) median image."""
    fullres_spacing = np.asarray(fullres.spacing)
    median_shape = np.asarray(median_shape, dtype=np.float64)
    median_voxels = float(np.prod(median_shape))
    patch_voxels = float(np.prod(fullres.patch_size))
    spacing = fullres_spacing.copy()
    lowres = None
    while patch_voxels / median_voxels < LOWRES_WHEN_PATCH_COVERS_BELOW:
        ratio = spacing.max() / spacing
        if np.any(ratio > 2):  # bring the fine axes towards the coarse one first
            spacing[ratio > 2] *= LOWRES_SPACING_STEP
        else:
            spacing *= LOWRES_SPACING_STEP
        shape = fullres_spacing / spacing * median_shape
        median_voxels = float(np.prod(shape))
        lowres = _configuration("3d_lowres", spacing, [round(s) for s in shape], num_classes,
                                median_voxels * num_cases, sizing)
        patch_voxels = float(np.prod(lowres.patch_size))
    if lowres is None or np.prod(median_shape) / median_voxels < LOWRES_MIN_SHRINK:
        return None
    return lowres


def _family_variants(chosen: dict[str, Configuration], families, gpu_memory_gb: float | None, num_classes: int,
                     n_voxels_dataset: float) -> dict[str, Configuration]:
    """Each other preset's network planned beside 2d and 3d_fullres, on their data (spacing and preprocessing are
    the same for every preset; only the network, patch and batch differ)."""
    variants = {}
    for name in families:
        family = get_preset(name)
        sizing = Sizing(family, float(gpu_memory_gb if gpu_memory_gb is not None else family.reference_gb))
        for base in FAMILY_BASES:
            if base not in chosen:
                continue
            config = _configuration(base, chosen[base].spacing, chosen[base].median_shape, num_classes,
                                    n_voxels_dataset, sizing)
            config.name = f"{base}{FAMILY_SEPARATOR}{name}"
            config.batch_dice = chosen[base].batch_dice
            variants[config.name] = config
    return variants


def plan_experiment(fingerprint: Fingerprint, gpu_memory_gb: float | None = None,
                    configurations: tuple[str, ...] = CONFIGURATION_NAMES,
                    fingerprint_file: str | Path = "fingerprint.json", *, preset: str = "plain",
                    families: tuple[str, ...] = ()) -> Plan:
    """Decide spacing, transpose, normalization and each requested configuration, for the network preset
    (autoseg.planning.presets) and the memory given (default: the preset's own target); `families`: other
    presets planned beside 2d and 3d_fullres as "<configuration>@<preset>" (find-best compares them)."""
    chosen_preset = get_preset(preset)
    requested_gb = gpu_memory_gb
    if gpu_memory_gb is None:
        gpu_memory_gb = chosen_preset.reference_gb
    sizing = Sizing(chosen_preset, float(gpu_memory_gb))
    unknown = [c for c in configurations if c not in CONFIGURATION_NAMES]
    if unknown:
        raise AutosegError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGURATION_NAMES)}")
    if gpu_memory_gb <= 0:
        raise AutosegError(f"--gpu-memory must be positive, got {gpu_memory_gb}")
    if not fingerprint.cases:
        raise AutosegError(f"{fingerprint_file}: fingerprint has no cases")
    spacings, shapes = fingerprint.spacings, fingerprint.shapes_after_crop
    fullres_spacing = target_spacing(spacings, shapes)
    forward, backward = transpose_for(fullres_spacing)
    new_shapes = [resampled_shape(shape, sp, fullres_spacing) for sp, shape in zip(spacings, shapes)]
    median_shape = np.median(np.array(new_shapes, dtype=np.float64), axis=0)[forward]
    spacing_t = fullres_spacing[forward]
    # as nnU-Net counts dataset.json's labels for its memory model: background and ignore included
    num_classes = len(fingerprint.labels) + (fingerprint.ignore_label is not None)
    num_cases = len(fingerprint.cases)
    n_voxels_dataset = float(np.prod(median_shape, dtype=np.float64) * num_cases)

    configs: dict[str, Configuration] = {}
    if median_shape[0] != 1:  # a dataset of single slices has no 3D configuration
        fullres = _configuration("3d_fullres", spacing_t, median_shape, num_classes, n_voxels_dataset, sizing)
        lowres = _lowres(fullres, median_shape, num_classes, num_cases, sizing)
        fullres.batch_dice = lowres is not None
        if lowres is not None:
            lowres.batch_dice = False
            lowres.next_stage = "3d_cascade_fullres"
            cascade = Configuration(**{**fullres.__dict__, "name": "3d_cascade_fullres",
                                       "previous_stage": "3d_lowres", "data_identifier": "3d_fullres"})
            configs.update({"3d_fullres": fullres, "3d_lowres": lowres, "3d_cascade_fullres": cascade})
        else:
            configs["3d_fullres"] = fullres
    two_d = _configuration("2d", spacing_t[1:], median_shape[1:], num_classes, n_voxels_dataset, sizing)
    two_d.batch_dice = True
    configs["2d"] = two_d

    chosen = {name: configs[name] for name in CONFIGURATION_NAMES if name in configs and name in configurations}
    if "3d_cascade_fullres" in chosen and "3d_lowres" not in chosen:
        chosen["3d_lowres"] = configs["3d_lowres"]  # the cascade cannot run without its first stage
    chosen = {name: chosen[name] for name in CONFIGURATION_NAMES if name in chosen}
    chosen.update(_family_variants(chosen, [f for f in dict.fromkeys(families) if f != chosen_preset.name],
                                   requested_gb, num_classes, n_voxels_dataset))
    return Plan(
        version=PLAN_VERSION, dataset_name=fingerprint.dataset_name, fingerprint_file=str(fingerprint_file),
        gpu_memory_gb=float(gpu_memory_gb), orientation=fingerprint.orientation,
        transpose_forward=forward, transpose_backward=backward,
        original_median_spacing=[float(s) for s in np.median(spacings, axis=0)[forward]],
        original_median_shape=[float(s) for s in np.median(shapes, axis=0)[forward]],
        channel_names=dict(fingerprint.channel_names), labels=dict(fingerprint.labels),
        normalization=plan_normalization(fingerprint), resampling=Resampling(), configurations=chosen,
        label_codes=dict(fingerprint.label_codes), regions=list(fingerprint.regions),
        ignore_label=fingerprint.ignore_label, preset=chosen_preset.name)

"""Training augmentation with batchgenerators, chosen from the configuration's patch.

Spatial first (rotation, scaling, optional elastic deformation; in-plane only for strongly
anisotropic 3D patches), then intensity (noise, blur, brightness, contrast, low resolution,
gamma) and mirroring. "light" (the budget recipe's) keeps the spatial transform, brightness,
contrast, gamma and mirroring and drops noise, blur and simulated low resolution: a run of a few
thousand steps cannot yet fit the data, so degrading it more only slows learning, and on a CPU those
three transforms take most of the augmentation worker's time. The sampler hands over patches enlarged by `sample_size()` so the
centre crop back to the patch size never shows padding the rotation pulled in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from autoseg.preprocessing.crop import OUTSIDE
from autoseg.training.sampler import enlarged_sample_size

ANISOTROPIC_PATCH_RATIO = 3.0  # longest / shortest patch side above which 3D patches get 2D-style augmentation
SCALE_RANGE = (0.7, 1.4)


@dataclass
class AugmentationSettings:
    patch_size: list[int]
    rotation: float  # radians, symmetric range
    in_plane_only: bool  # 2D-style: rotate and scale within the slices of the first axis
    elastic: bool
    mirror_axes: tuple[int, ...]
    strength: str = "standard"  # or "light"


def augmentation_settings(patch_size, elastic: bool = False, strength: str = "standard") -> AugmentationSettings:
    patch = [int(p) for p in patch_size]
    if len(patch) == 2:
        return AugmentationSettings(patch, math.pi, False, elastic, (0, 1), strength)
    in_plane = max(patch) / min(patch) > ANISOTROPIC_PATCH_RATIO
    rotation = math.pi if in_plane else math.radians(30)
    return AugmentationSettings(patch, rotation, in_plane, elastic, (0, 1, 2), strength)


def sample_size(settings: AugmentationSettings) -> list[int]:
    """What the sampler must cut so that rotation and zoom-out still fill the patch."""
    if settings.in_plane_only:
        return settings.patch_size[:1] + enlarged_sample_size(settings.patch_size[1:], settings.rotation,
                                                              SCALE_RANGE[0])
    return enlarged_sample_size(settings.patch_size, settings.rotation, SCALE_RANGE[0])


class SlicesAsChannels(AbstractTransform):
    """(B, C, z, y, x) <-> (B, C*z, y, x) around an in-plane (2D-style) spatial transform."""

    def __init__(self, to_2d: bool):
        self.to_2d = to_2d

    def __call__(self, **batch):
        for key in ("data", "seg"):
            a = batch[key]
            if self.to_2d:
                batch[f"_{key}_shape"] = a.shape
                batch[key] = a.reshape(a.shape[0], a.shape[1] * a.shape[2], *a.shape[3:])
            else:
                b, c, z = batch.pop(f"_{key}_shape")[:3]
                batch[key] = a.reshape(b, c, z, *a.shape[2:])
        return batch


def build_transforms(settings: AugmentationSettings) -> Compose:
    spatial_patch = settings.patch_size[1:] if settings.in_plane_only else settings.patch_size
    angle = (-settings.rotation, settings.rotation)
    no_angle = (0.0, 0.0)
    spatial = SpatialTransform(
        spatial_patch, patch_center_dist_from_border=None, do_elastic_deform=settings.elastic,
        alpha=(0.0, 200.0), sigma=(9.0, 13.0), do_rotation=True, angle_x=angle,
        angle_y=no_angle if settings.in_plane_only else angle, angle_z=no_angle if settings.in_plane_only else angle,
        p_rot_per_axis=1.0, do_scale=True, scale=SCALE_RANGE, border_mode_data="constant", border_cval_data=0,
        order_data=3, border_mode_seg="constant", border_cval_seg=OUTSIDE, order_seg=0, random_crop=False,
        p_el_per_sample=0.2, p_scale_per_sample=0.2, p_rot_per_sample=0.2, independent_scale_for_each_axis=False)
    transforms: list[AbstractTransform] = []
    if settings.in_plane_only:
        transforms += [SlicesAsChannels(True), spatial, SlicesAsChannels(False)]
    else:
        transforms.append(spatial)
    light = settings.strength == "light"
    if not light:
        transforms += [
            GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1),
            GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5)]
    transforms += [BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
                   ContrastAugmentationTransform(p_per_sample=0.15)]
    if not light:
        transforms.append(SimulateLowResolutionTransform(
            zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5, order_downsample=0, order_upsample=3,
            p_per_sample=0.25, ignore_axes=(0,) if settings.in_plane_only else None))
    transforms += [
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
        MirrorTransform(settings.mirror_axes),
    ]
    return Compose(transforms)


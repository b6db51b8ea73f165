"""Network presets: the plain U-Net (default), nnU-Net v2's residual-encoder presets ResEnc M / L / XL, and
DeepLab (a ResEnc M encoder whose deepest stages are atrous, with ASPP; autoseg.planning.atrous), and the
classic families FCN, SegNet, V-Net, UNet++, PSPNet and HRNet (autoseg.model.families).

A preset fixes what the memory model sizes patches and batches against and how the network is built. The
ResEnc values are nnU-Net v2's (`nnUNetPlannerResEncM/L/XL`, its documentation `resenc_presets.md`): residual
encoder blocks per stage 1, 3, 4, 6, 6, ..., one convolution per decoder stage, a reference memory measured
for that network at its GPU target (about 8, 24 and 40 GB), the 5% batch cap dropped, and a patch that must
fit at the reference batch size itself. Everything else (spacing, topology, features, normalization) is
planned as for the plain network.
"""
from __future__ import annotations

from dataclasses import dataclass

from autoseg.errors import AutosegError


@dataclass(frozen=True)
class Preset:
    name: str
    architecture: str  # the network family autoseg.model.network builds (its registry FAMILIES)
    reference_voxels: dict[int, float]  # feature-map voxels that fit reference_gb, per dimensionality
    reference_gb: float  # the memory the reference was measured for; also the default --gpu-memory
    max_dataset_fraction: float  # one batch covers at most this fraction of the dataset's voxels
    encoder_blocks: tuple[int, ...]  # convolutions (plain) or residual blocks (resenc) per encoder stage
    decoder_convs: tuple[int, ...]  # convolutions per decoder stage
    # shrink the patch until it fits at the reference batch size itself (ResEnc) rather than at the minimum
    # batch of 2 (plain: nnU-Net's `estimate / reference_batch * 2 > reference`)
    fit_at_reference_batch: bool

    def blocks(self, n_stages: int) -> tuple[list[int], list[int]]:
        """Encoder and decoder depth lists for a network of n_stages."""
        return list(self.encoder_blocks[:n_stages]), list(self.decoder_convs[:n_stages - 1])


_RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
PRESETS = {
    "plain": Preset("plain", "plain", {3: 560e6, 2: 85e6}, 8.0, 0.05, (2,) * 14, (2,) * 13, False),
    "resenc-m": Preset("resenc-m", "resenc", {3: 680e6, 2: 135e6}, 8.0, 1.0, _RESENC_BLOCKS, (1,) * 12, True),
    "resenc-l": Preset("resenc-l", "resenc", {3: 2100e6, 2: 380e6}, 24.0, 1.0, _RESENC_BLOCKS, (1,) * 12, True),
    "resenc-xl": Preset("resenc-xl", "resenc", {3: 3600e6, 2: 560e6}, 40.0, 1.0, _RESENC_BLOCKS, (1,) * 12, True),
    # nnU-Net has no DeepLab: its encoder and memory reference are ResEnc M's, the memory model counts the atrous
    # stages at their finer resolution and ASPP, so the patch and batch shrink to pay for them
    "deeplab": Preset("deeplab", "deeplab", {3: 680e6, 2: 135e6}, 8.0, 1.0, _RESENC_BLOCKS, (1,) * 12, True),
}
# The classic families (autoseg.model.families) are sized against the plain U-Net's reference at its 8 GB, so
# every family gets the same memory target, each counted by its own model (autoseg.planning.family_memory); two
# convolutions per stage and decoder level as the U-Net (HRNet: two residual blocks per stream and HR stage).
CLASSIC_FAMILIES = ("fcn", "segnet", "vnet", "unetpp", "pspnet", "hrnet")
PRESETS.update({name: Preset(name, name, {3: 560e6, 2: 85e6}, 8.0, 0.05, (2,) * 14, (2,) * 13, False)
                for name in CLASSIC_FAMILIES})
# `autoseg plan --architecture NAME`: each family's preset at the default memory target
ARCHITECTURE_PRESETS = {"plain": "plain", "resenc": "resenc-m", "deeplab": "deeplab",
                        **{name: name for name in CLASSIC_FAMILIES}}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise AutosegError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None

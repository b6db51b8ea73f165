"""Choice of intensity normalization per channel, from the channel's modality name."""
from __future__ import annotations

from autoseg.fingerprint import Fingerprint
from autoseg.planning.plan_types import ChannelNormalization

# Cropping to the nonzero region removes more than a quarter of a typical image: the
# zeros outside are then background padding, and z-scoring should ignore them.
MASK_WHEN_CROPPED_BELOW = 0.75


def scheme_for(channel_name: str) -> str:
    key = channel_name.strip().lower()
    if key == "ct":
        return "ct"
    if key in ("nonorm", "none"):
        return "none"
    if key in ("rescale_to_0_1", "rescale_0_1"):
        return "rescale_0_1"
    return "zscore"


def plan_normalization(fingerprint: Fingerprint) -> list[ChannelNormalization]:
    use_mask = fingerprint.median_relative_size_after_crop < MASK_WHEN_CROPPED_BELOW
    result = []
    for index in sorted(fingerprint.channel_names, key=int):
        name = fingerprint.channel_names[index]
        scheme = scheme_for(name)
        if scheme == "ct":
            stats = fingerprint.foreground_intensity[int(index)]
            result.append(ChannelNormalization(name, "ct", False, stats.percentile_00_5, stats.percentile_99_5,
                                               stats.mean, stats.std))
        else:
            result.append(ChannelNormalization(name, scheme, use_mask and scheme == "zscore"))
    return result

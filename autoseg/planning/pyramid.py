"""PSPNet's pyramid pooling levels on a planned bottleneck: PSPNet pools its 60x60 feature map into 1x1, 2x2,
3x3 and 6x6 bins. Here each level's bin count is capped per axis by the feature map's size on that axis (an
anisotropic scan's thin axis keeps 1 or 2 bins while the others spread), and a level that the caps make equal
to a coarser one is dropped."""
from __future__ import annotations

PYRAMID_BINS = (1, 2, 3, 6)


def pyramid_bins(bottleneck_size) -> list[list[int]]:
    levels: list[list[int]] = []
    for bins in PYRAMID_BINS:
        level = [max(1, min(bins, int(s))) for s in bottleneck_size]
        if level not in levels:
            levels.append(level)
    return levels

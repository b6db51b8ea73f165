"""Draws docs/figures/preview_example.png: the prediction preview, on a reference label map of Hippocampus.

    .venv/bin/python docs/figures/make_preview_figure.py [path/to/Dataset004_Hippocampus]

The dataset defaults to ../shared/data/Dataset004_Hippocampus beside the repository. The label map
is the manual reference, not a prediction: the figure shows the layout, so it stays the same
whatever model is current.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from autoseg.dataset.image_io import read_image
from autoseg.inference.preview import write_preview

REPO = Path(__file__).resolve().parents[2]
CASE = "hippocampus_001"


def main() -> None:
    dataset = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data" / "Dataset004_Hippocampus"
    labels = json.loads((dataset / "dataset.json").read_text())["labels"]
    image, geometry = read_image(dataset / "imagesTr" / f"{CASE}_0000.nii.gz")
    segmentation, _ = read_image(dataset / "labelsTr" / f"{CASE}.nii.gz")
    out = REPO / "docs" / "figures" / "preview_example.png"
    preview = write_preview(out, image[None], segmentation, geometry.spacing, labels, CASE)
    print(f"{out}: slices through {preview.centre} (label {preview.label})")


if __name__ == "__main__":
    main()

"""Deterministic brain-MRI-like nnU-Net raw datasets of any shape, for training benchmarks.

    .venv/bin/python benchmarks/synthetic_mri.py ROOT NAME Z Y X CASES

Two channels of smooth noise inside an ellipsoidal 'brain' (zero background around it, so cropping
works as on real MRI), with a 'tumour' of three nested labels (1 edema > 2 core > 3 enhancing) at a
random place and of random size, brighter in both channels by an amount that varies per case, so a
network has to learn the boundaries rather than threshold them. BraTS's shape is (155, 240, 240).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def write_mri_dataset(root: Path, name: str, shape_zyx: tuple[int, int, int], cases: int) -> Path:
    import SimpleITK as sitk
    from scipy.ndimage import gaussian_filter, zoom

    folder = Path(root) / name
    if (folder / "dataset.json").is_file():
        return folder
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    z, y, x = np.ogrid[:shape_zyx[0], :shape_zyx[1], :shape_zyx[2]]
    centre = [s / 2 for s in shape_zyx]
    radii = [0.42 * s for s in shape_zyx]
    brain = sum(((a - c) / r) ** 2 for a, c, r in zip((z, y, x), centre, radii)) <= 1
    for i in range(cases):
        rng = np.random.default_rng(i)
        size = rng.uniform(0.08, 0.14) * min(shape_zyx)
        tumour = [c + rng.uniform(-0.15, 0.15) * s for c, s in zip(centre, shape_zyx)]
        stretch = rng.uniform(0.8, 1.25, 3)
        distance = np.sqrt(sum(((a - t) / k) ** 2 for a, t, k in zip((z, y, x), tumour, stretch)))
        label = np.zeros(shape_zyx, np.uint8)
        for value, fraction in ((1, 1.0), (2, 0.55), (3, 0.3)):
            label[(distance <= size * fraction) & brain] = value
        contrast = rng.uniform(0.6, 1.4)
        case = f"brain_{i:03d}"
        for channel in range(2):
            coarse = rng.normal(size=tuple(max(2, s // 8) for s in shape_zyx)).astype(np.float32)
            field = zoom(gaussian_filter(coarse, 1.5), 8, order=1)
            field = np.pad(field, [(0, max(0, s - f)) for s, f in zip(shape_zyx, field.shape)], mode="edge")
            field = field[:shape_zyx[0], :shape_zyx[1], :shape_zyx[2]]
            lesion = contrast * (60 * (label > 0) * (channel + 1) + 40 * (label >= 2) - 70 * (label == 3))
            image = (500 + 100 * field + lesion + rng.normal(0, 20, shape_zyx)) * brain
            sitk.WriteImage(sitk.GetImageFromArray(image.astype(np.float32)),
                            str(folder / "imagesTr" / f"{case}_{channel:04d}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / "labelsTr" / f"{case}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "FLAIR"},
        "labels": {"background": 0, "edema": 1, "core": 2, "enhancing": 3},
        "numTraining": cases, "file_ending": ".nii.gz"}, indent=1))
    return folder


if __name__ == "__main__":
    root, name, *rest = sys.argv[1:]
    print(write_mri_dataset(Path(root), name, tuple(int(v) for v in rest[:3]), int(rest[3])))

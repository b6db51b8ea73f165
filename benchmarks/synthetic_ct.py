"""Deterministic CT-like nnU-Net raw dataset with one large case, for preprocessing benchmarks.

    .venv/bin/python benchmarks/synthetic_ct.py [ROOT]   # default /tmp/autoseg-bench-data

Three cases: "big" (512x512x400 voxels at 0.78 x 0.78 x 1.5 mm) and "small1"/"small2"
(256x256x200 at 0.7 x 0.7 x 1.0 mm), so the median spacing is the small cases' and the big
case must be resampled. Content: int16 HU (-1000 air, ~40 HU soft-tissue ellipsoid with noise,
300-700 HU bone blobs), labels liver = 1 and a small tumor = 2 inside it. Built slab by slab
from broadcast 1D coordinates, so memory stays at a few hundred MB.

write_ct_predict_dataset() (for bench_predict.py) writes five small 128x128x64 training cases at
1.6 x 1.6 x 3.0 mm and, beside the dataset, one 512x512x300 test scan at 0.8 x 0.8 x 1.5 mm.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CASES = {  # name: (shape x, y, z), spacing x, y, z (mm), seed
    "big": ((512, 512, 400), (0.78, 0.78, 1.5), 0),
    "small1": ((256, 256, 200), (0.7, 0.7, 1.0), 1),
    "small2": ((256, 256, 200), (0.7, 0.7, 1.0), 2),
}
SLAB = 32  # z slices built at a time


def _case(shape_xyz: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image int16, label uint8), both z, y, x; geometry in normalized [-1, 1] coordinates."""
    nx, ny, nz = shape_xyz
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    zs = np.linspace(-1, 1, nz, dtype=np.float32)
    # (centre x, y, z), (radii x, y, z), HU; bones: a spine-like column plus random blobs
    bones = [((0.0, -0.5, 0.0), (0.1, 0.1, 9.0), 600)]
    for _ in range(8):
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.55, 0.7)
        centre = (0.9 * dist * np.cos(angle), 0.7 * dist * np.sin(angle), rng.uniform(-0.9, 0.9))
        bones.append((centre, tuple(rng.uniform(0.04, 0.08, 3)), int(rng.integers(300, 701))))
    image = np.empty((nz, ny, nx), np.int16)
    label = np.zeros((nz, ny, nx), np.uint8)
    for z0 in range(0, nz, SLAB):
        z = zs[z0:z0 + SLAB, None, None]

        def inside(c, r):
            return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1

        body = inside((0, 0, 0), (0.9, 0.7, 1.5))
        liver = inside((-0.35, 0.0, 0.2), (0.3, 0.35, 0.35))
        tumor = inside((-0.4, 0.05, 0.25), (0.06, 0.06, 0.06))
        hu = rng.standard_normal(body.shape, dtype=np.float32) * 15 + 40
        hu[liver] += 20
        hu[tumor] -= 40
        for c, r, value in bones:
            hu[inside(c, r) & body & ~liver] = value
        hu[~body] = -1000
        image[z0:z0 + SLAB] = np.rint(hu)
        label[z0:z0 + SLAB][liver] = 1
        label[z0:z0 + SLAB][tumor] = 2
    return image, label


def _write(array: np.ndarray, spacing, path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(img, str(path), True)


def write_ct_dataset(root: Path, dataset_name: str = "Dataset950_SynthCT") -> Path:
    """Write (or reuse, if dataset.json exists) the dataset under root; return its folder."""
    folder = Path(root) / dataset_name
    if (folder / "dataset.json").is_file():
        return folder
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for name, (shape, spacing, seed) in CASES.items():
        image, label = _case(shape, seed)
        _write(image, spacing, folder / "imagesTr" / f"{name}_0000.nii.gz")
        _write(label, spacing, folder / "labelsTr" / f"{name}.nii.gz")
        del image, label
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumor": 2},
            "numTraining": len(CASES), "file_ending": ".nii.gz", "name": dataset_name}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))  # written last: marks complete
    return folder


# Prediction benchmark: small training cases at twice the test scan's spacing (so the 3d_fullres
# network sees the 512x512x300 test scan at 256x256x150 and a CPU sliding window takes minutes, not an
# hour), one test scan of typical CT geometry kept outside the dataset.
PREDICT_TRAIN = ((128, 128, 64), (1.6, 1.6, 3.0))  # shape x, y, z; spacing x, y, z (mm)
PREDICT_TEST = ((512, 512, 300), (0.8, 0.8, 1.5))
PREDICT_TEST_CASE = "ct512"


def write_ct_predict_dataset(root: Path, dataset_name: str = "Dataset951_SynthCTPredict",
                             train_cases: int = 5) -> tuple[Path, Path]:
    """Write (or reuse) `train_cases` small cases as a dataset plus one 512x512x300 scan in a folder
    beside it; return (dataset folder, folder holding {PREDICT_TEST_CASE}_0000.nii.gz)."""
    folder = Path(root) / dataset_name
    test = Path(root) / f"{dataset_name}_test"
    if (folder / "dataset.json").is_file() and (test / f"{PREDICT_TEST_CASE}_0000.nii.gz").is_file():
        return folder, test
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    test.mkdir(parents=True, exist_ok=True)
    shape, spacing = PREDICT_TEST
    image, _ = _case(shape, 100)
    _write(image, spacing, test / f"{PREDICT_TEST_CASE}_0000.nii.gz")
    del image
    shape, spacing = PREDICT_TRAIN
    for i in range(train_cases):
        image, label = _case(shape, 10 + i)
        _write(image, spacing, folder / "imagesTr" / f"ct{i:03d}_0000.nii.gz")
        _write(label, spacing, folder / "labelsTr" / f"ct{i:03d}.nii.gz")
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumor": 2},
            "numTraining": train_cases, "file_ending": ".nii.gz", "name": dataset_name}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))  # written last: marks complete
    return folder, test


if __name__ == "__main__":
    print(write_ct_dataset(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/autoseg-bench-data")))

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HIPPOCAMPUS = SHARED_DATA / "Dataset004_Hippocampus"


def run_autoseg(*args, check=True, **kw) -> subprocess.CompletedProcess:
    """`python -m autoseg ARGS` from the repo; with check, a non-zero exit fails the test showing stderr."""
    proc = subprocess.run([sys.executable, "-m", "autoseg", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, **kw)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def autoseg_here(*args, check=True) -> subprocess.CompletedProcess:
    """`autoseg ARGS` in this process, its output captured: run_autoseg without the seconds a new process
    spends importing PyTorch, for runs where the process boundary is not what is tested."""
    import contextlib
    import io

    from autoseg.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's refusals
            code = e.code if isinstance(e.code, int) else 1
    proc = subprocess.CompletedProcess(["autoseg", *argv], code, out.getvalue(), err.getvalue())
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def require_data(path: Path) -> Path:
    """Skip (or fail, under CI's AUTOSEG_REQUIRE_DATA=1) when real data is not beside the repo."""
    if path.exists():
        return path
    message = f"real data not found at {path} (clone with ../shared/data beside the repo to run this test)"
    if os.environ.get("AUTOSEG_REQUIRE_DATA") == "1":
        pytest.fail(message + "; AUTOSEG_REQUIRE_DATA=1 makes this an error")
    pytest.skip(message)


@pytest.fixture
def hippocampus_dir() -> Path:
    return require_data(HIPPOCAMPUS)


def write_image(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                direction=None) -> Path:
    """Write an array given in internal (z, y, x) order with spacing in the same order."""
    image = sitk.GetImageFromArray(array, isVector=False)
    dim = image.GetDimension()
    sp = list(spacing)[::-1] if dim == len(spacing) else list(spacing)[::-1] + [1.0] * (dim - len(spacing))
    image.SetSpacing([float(s) for s in sp[:dim]])
    image.SetOrigin([float(o) for o in (list(origin) + [0.0] * dim)[:dim]])
    if direction is not None:
        image.SetDirection([float(d) for d in direction])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def write_nifti(path: Path, array_xyz: np.ndarray, affine: np.ndarray, *, qform_code: int = 1,
                sform_code: int = 2) -> Path:
    """A NIfTI in nibabel's (x, y, z) order whose qform and sform both hold `affine`, with the given codes."""
    import nibabel as nib

    image = nib.Nifti1Image(array_xyz, affine)
    image.header.set_qform(affine, code=qform_code)
    image.header.set_sform(affine, code=sform_code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def synthetic_case(rng: np.random.Generator, shape=(12, 16, 14), n_channels=1, n_labels=2):
    """Images with a bright blob labelled 1 (and a second labelled 2), zero padding at the border."""
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = np.array(shape) / 2 + rng.uniform(-1, 1, 3)
    r = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
    label = np.zeros(shape, np.uint8)
    label[r < 3.5] = 1
    if n_labels >= 2:
        label[(r < 3.5) & (xx > centre[2])] = 2
    images = []
    for c in range(n_channels):
        img = rng.normal(100 + 50 * c, 10, shape).astype(np.float32) + 80 * (label > 0)
        img[:1] = 0  # a zero border so cropping to nonzero has something to remove
        images.append(img)
    return images, label


def write_nnunet_dataset(root: Path, n_cases=4, n_channels=1, shape=(12, 16, 14), spacing=(2.0, 1.0, 1.0),
                         ending=".nii.gz", channel_names=None, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    channel_names = channel_names or {str(c): ("MRI" if c == 0 else f"MR{c}") for c in range(n_channels)}
    for i in range(n_cases):
        images, label = synthetic_case(rng, shape, n_channels)
        for c, img in enumerate(images):
            write_image(root / "imagesTr" / f"case_{i:03d}_{c:04d}{ending}", img, spacing)
        write_image(root / "labelsTr" / f"case_{i:03d}{ending}", label, spacing)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": channel_names, "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": n_cases, "file_ending": ending, "name": "Synthetic"}))
    return root


def write_msd_dataset(root: Path, n_cases=4, n_channels=2, shape=(12, 16, 14), spacing=(2.0, 1.0, 1.0), seed=0):
    """The same voxels as write_nnunet_dataset(seed) but as MSD: 4D image files, value->name labels."""
    rng = np.random.default_rng(seed)
    training = []
    for i in range(n_cases):
        images, label = synthetic_case(rng, shape, n_channels)
        name = f"case_{i:03d}.nii.gz"
        stacked = np.stack(images) if n_channels > 1 else images[0]
        write_image(root / "imagesTr" / name, stacked, spacing)
        write_image(root / "labelsTr" / name, label, spacing)
        # MSD tarballs carry macOS resource forks; they must be ignored
        (root / "imagesTr" / f"._{name}").write_bytes(b"\x00junk")
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Synthetic", "modality": {str(c): ("MRI" if c == 0 else f"MR{c}") for c in range(n_channels)},
        "labels": {"0": "background", "1": "a", "2": "b"}, "numTraining": n_cases, "training": training}))
    return root


# the standard recipe: the auto recipe would time candidate networks first, seconds per run the tests do not test
FAST_TRAINING = ["--precision", "fp32", "--workers", "0", "-q", "--no-validation", "--recipe", "standard"]


_TINY_MODELS: dict[tuple, Path] = {}
_TEXT_SUFFIXES = {".json", ".jsonl", ".log"}  # where a model folder writes paths (fingerprint.json, training.log)


def train_tiny(root: Path, n_channels: int = 1, folds=("0",), *, validate: bool = False, n_cases: int = 6) -> Path:
    """A synthetic dataset planned, preprocessed and trained for two iterations per fold: a real model
    folder in seconds (its predictions are not meant to be good). Returns the training folder.

    Trained once per session for each set of arguments, then copied into ROOT with every path written in its
    text files moved there, so that a module which needs *a* model neither trains its own nor shares files
    with another module."""
    key = (n_channels, tuple(folds), validate, n_cases)
    if key not in _TINY_MODELS:
        source = Path(tempfile.mkdtemp(prefix="autoseg-tiny-")).resolve()
        atexit.register(shutil.rmtree, source, ignore_errors=True)
        _train_tiny(source, n_channels, folds, validate=validate, n_cases=n_cases)
        _TINY_MODELS[key] = source
    source, root = _TINY_MODELS[key], Path(root).resolve()
    shutil.copytree(source, root, dirs_exist_ok=True)
    for path in root.rglob("*"):
        if path.suffix in _TEXT_SUFFIXES and path.is_file():
            text = path.read_text()
            if str(source) in text:
                path.write_text(text.replace(str(source), str(root)))
    return root / "planned"


def _train_tiny(root: Path, n_channels: int, folds, *, validate: bool, n_cases: int) -> None:
    from autoseg.planning.run import plan_dataset
    from autoseg.preprocessing import preprocess_dataset

    data = write_nnunet_dataset(root / "Dataset001_Syn", n_cases=n_cases, n_channels=n_channels, shape=(16, 20, 18),
                                spacing=(1.0, 1.0, 1.0))
    out = root / "planned"
    plan_dataset(data, out, workers=1, configurations=("3d_fullres",), progress=False)
    preprocess_dataset(out, workers=1, progress=False)
    flags = [f for f in FAST_TRAINING if not (validate and f == "--no-validation")]
    for fold in folds:
        run_autoseg("train", out, "--fold", fold, "--epochs", "1", "--iterations-per-epoch", "2", *flags)

"""Hostile output locations for every command that writes, and atomic writers for every image format.

Corpus (CORPUS_CLASSES, ids "<class>/<case>"): an output that is the wrong kind of file, a parent that is
a file, a read-only location, a disk that is full or fills up mid-write, a name too long — for plan,
preprocess, train, predict, evaluate, find-best, export and serve's temp dir. Each asserts exit code 1,
exactly one line naming the path with the errno's name, no traceback, and nothing written (or, for a
disk that fills up mid-run, finished outputs intact and no temp files left).

How the hostile places are made: full and read-only disks are real tmpfs mounts (`mount -t tmpfs`,
remounted read-only), because `chmod 555` does not stop root and a monkeypatched OSError proves less
than the kernel's own ENOSPC/EROFS. Mounting needs root (CAP_SYS_ADMIN); without it those cases skip
and say why. A disk that fills up *during* a run is made by a hook that fills the tmpfs with a balloon
file just before one chosen write — as another program filling the disk would.

Writers: every format round-trips exactly; the two-file formats' headers name the final data file;
kill -9 at random moments of a loop of writes (seeded) and at each step between the renames leaves only
readable final files, before and after the `.tmp-*` cleanup that predict and preprocess do.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import FAST_TRAINING, REPO, run_autoseg, train_tiny

CORPUS_STAGE = "outputs"
CORPUS_CLASSES = {
    "output-wrong-kind": "An output folder that is an existing file (or an output file that is an existing folder) "
                         "is refused before any work in one line naming it; nothing is written.",
    "parent-is-file": "An output whose parent folder is a file is refused before any work in one line naming "
                      "both (ENOTDIR); nothing is written.",
    "read-only": "A read-only location (a read-only mount) is refused before any work in one line (EROFS) — "
                 "for plan's default DATASET.autoseg beside a read-only dataset share before the fingerprint.",
    "full-disk": "A full disk is refused up front; a disk that fills up mid-run stops the command with exit 1 and "
                 "one line naming the file that could not be written (ENOSPC); finished outputs stay readable "
                 "and no temp file is left.",
    "name-too-long": "An output name longer than the file system allows is refused up front in one line "
                     "(ENAMETOOLONG); a name that fits is written even when its temp name would not.",
}

COMMANDS = ("plan", "preprocess", "train", "predict", "evaluate", "find-best", "export")
ERROR = "autoseg: error: "


# ---------------------------------------------------------------------------------------------- helpers

@dataclass
class Trained:
    """The module's one trained synthetic model and what the commands need around it."""

    root: Path
    dataset: Path
    trained: Path  # the training folder (plan.json, fingerprint.json, preprocessed/, models/)
    scans: Path  # predict's input
    refs: Path  # evaluate's reference folder
    preds: Path  # evaluate's prediction folder (a copy of the references: every case matches)

    @property
    def models(self) -> Path:
        return self.trained / "models"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("hostile_outputs")
    trained = train_tiny(root, validate=True)
    dataset = root / "Dataset001_Syn"
    scans = root / "scans"
    scans.mkdir()
    for path in sorted((dataset / "imagesTr").iterdir())[:3]:
        shutil.copy(path, scans / path.name)
    preds = root / "preds"
    shutil.copytree(dataset / "labelsTr", preds)
    return Trained(root, dataset, trained, scans, dataset / "labelsTr", preds)


def argv(command: str, ctx: Trained, out: Path, training: Path | None = None) -> list[str]:
    """The command with `out` as its output location (the training folder for preprocess, train and
    find-best, which write into it; `training` overrides the folder export reads)."""
    quiet = ["--workers", "1", "-q"]
    return {
        "plan": ["plan", ctx.dataset, "-o", out, "--configs", "3d_fullres", *quiet],
        "preprocess": ["preprocess", out, *quiet],
        "train": ["train", out, "--epochs", "1", "--iterations-per-epoch", "1", *FAST_TRAINING],
        "predict": ["predict", "-i", ctx.scans, "-o", out, "-m", ctx.models, "--no-tta", "--device", "cpu", "-q"],
        "evaluate": ["evaluate", ctx.preds, ctx.refs, "-o", out, *quiet],
        "find-best": ["find-best", out, *quiet],
        "export": ["export", training or ctx.trained, "-o", out],
        "serve": ["serve", ctx.models, "--temp-dir", out],
    }[command]


def run_cli(args, capsys, via_subprocess: bool = False) -> tuple[int, str]:
    """Exit code and stderr of the CLI, in-process (any exception but a one-line error fails the test by
    itself) or through a real process (proves no traceback reaches the terminal)."""
    args = [str(a) for a in args]
    if via_subprocess:
        proc = run_autoseg(*args, check=False)
        return proc.returncode, proc.stderr
    from autoseg.cli import main

    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *needles: str) -> str:
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(ERROR), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    files = {}
    for root in roots:
        if root.is_dir():
            for path in root.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    st = path.stat()
                    files[str(path)] = (st.st_size, st.st_mtime_ns)
    return files


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".tmp-*")]


class Disks:
    """tmpfs mounts made for one test and unmounted after it."""

    def __init__(self, base: Path):
        self.base, self.mounted = base, []

    def mount(self, name: str, size: str = "32m", *, read_only: bool = False, populate=None) -> Path:
        path = self.base / name
        path.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                  capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("no mount command: full and read-only disks are real tmpfs mounts here")
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs ({proc.stderr.strip()}): full and read-only disks need root "
                        f"(CAP_SYS_ADMIN), which CI has")
        self.mounted.append(path)
        if populate is not None:
            populate(path)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        return path

    def unmount_all(self):
        for path in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def disks(tmp_path):
    d = Disks(tmp_path / "mnt")
    yield d
    d.unmount_all()


def fill(disk: Path) -> None:
    """Take every free block of the tmpfs at `disk` with a balloon file: the next write there fails."""
    fd = os.open(disk / "balloon", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)


def fill_before_call(monkeypatch, module, name: str, disk: Path, call: int = 1) -> None:
    """Fill the disk just before the `call`-th call of module.name (counted from 1)."""
    original = getattr(module, name)
    calls = []

    def hooked(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            fill(disk)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, hooked)


def copy_planned(ctx: Trained, dest: Path, *, preprocessed=False, models=False) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("plan.json", "fingerprint.json", "splits.json"):
        if (ctx.trained / name).is_file():
            shutil.copy(ctx.trained / name, dest / name)
    if preprocessed:
        shutil.copytree(ctx.trained / "preprocessed", dest / "preprocessed")
    if models:
        shutil.copytree(ctx.trained / "models", dest / "models")
    return dest


# ------------------------------------------------------------------- corpus: locations refused up front

def _wrong_kind(command: str, tmp: Path) -> tuple[Path, str]:
    if command in ("evaluate", "export"):  # their -o is a file: a folder there is the wrong kind
        out = tmp / "taken"
        out.mkdir()
        return out, "EISDIR"
    out = tmp / "taken"
    out.write_text("not a folder\n")
    return out, "ENOTDIR"


def _parent_is_file(command: str, tmp: Path) -> tuple[Path, str]:
    (tmp / "afile").write_text("x\n")
    return tmp / "afile" / ("out.autoseg" if command in ("evaluate", "export") else "out"), "ENOTDIR"


def _too_long(command: str, tmp: Path) -> tuple[Path, str]:
    return tmp / ("x" * 300 + (".json" if command in ("evaluate", "export") else "")), "ENAMETOOLONG"


UP_FRONT = {"output-wrong-kind": _wrong_kind, "parent-is-file": _parent_is_file, "name-too-long": _too_long}
SUBPROCESS = {("output-wrong-kind", "plan"), ("parent-is-file", "predict"), ("name-too-long", "export")}


@pytest.mark.parametrize("kind,command,via_subprocess", [
    pytest.param(kind, command, (kind, command) in SUBPROCESS,
                 id=f"{kind}/{command}" + ("-subprocess" if (kind, command) in SUBPROCESS else ""))
    for kind in UP_FRONT for command in (*COMMANDS, "serve")])
def test_bad_output_location_is_refused_before_any_work(kind, command, via_subprocess, ctx, tmp_path, capsys):
    out, errno_name = UP_FRONT[kind](command, tmp_path)
    before = snapshot(tmp_path, ctx.root)
    code, err = run_cli(argv(command, ctx, out), capsys, via_subprocess)
    shown = str(out)[:60]  # a name too long is shown cut in the middle
    assert_one_line(code, err, shown, f"({errno_name})")
    assert snapshot(tmp_path, ctx.root) == before  # nothing written, nothing touched


@pytest.mark.parametrize("command,via_subprocess", [
    pytest.param(c, c == "predict", id=f"read-only/{c}" + ("-subprocess" if c == "predict" else ""))
    for c in (*COMMANDS, "serve")])
def test_read_only_location_is_refused_before_any_work(command, via_subprocess, ctx, disks, capsys):
    """A real read-only tmpfs mount (chmod 555 would not stop root)."""
    def populate(disk):
        if command in ("preprocess", "train", "find-best"):
            copy_planned(ctx, disk / "out")

    disk = disks.mount("ro", "4m", read_only=True, populate=populate)
    out = disk / ("out.json" if command == "evaluate" else "model.autoseg" if command == "export" else "out")
    before = snapshot(disk, ctx.root)
    code, err = run_cli(argv(command, ctx, out), capsys, via_subprocess)
    assert_one_line(code, err, str(out), "read-only file system", "(EROFS)")
    assert snapshot(disk, ctx.root) == before


@pytest.mark.parametrize("case", [pytest.param("default", id="read-only/plan-default-output")])
def test_plan_default_output_beside_read_only_dataset_fails_before_the_fingerprint(case, ctx, disks, capsys,
                                                                                   monkeypatch):
    """DATASET.autoseg would go onto the read-only share (a read-only tmpfs); the error must come before the
    fingerprint reads the whole dataset: compute_fingerprint is made to fail the test if it is called."""
    import autoseg.planning.run as plan_run

    disk = disks.mount("share", "8m", read_only=True,
                       populate=lambda d: shutil.copytree(ctx.dataset, d / ctx.dataset.name))
    monkeypatch.setattr(plan_run, "compute_fingerprint",
                        lambda *a, **k: pytest.fail("the fingerprint ran before the output folder was checked"))
    code, err = run_cli(["plan", disk / ctx.dataset.name, "-q"], capsys)
    line = assert_one_line(code, err, str(disk / f"{ctx.dataset.name}.autoseg"), "(EROFS)")
    assert "-o OUTPUT_DIR" in line


# ------------------------------------------------------------------------------------ corpus: full disk

def _populate_for(command: str, ctx: Trained):
    def populate(disk: Path):
        if command in ("preprocess", "find-best"):
            copy_planned(ctx, disk / "out", models=command == "find-best")
        elif command == "train":
            copy_planned(ctx, disk / "out", preprocessed=True)
    return populate


def _out_on(command: str, disk: Path) -> Path:
    return disk / {"evaluate": "eval/summary.json", "export": "model.autoseg", "predict": "pred"}.get(command, "out")


@pytest.mark.parametrize("command,via_subprocess", [
    pytest.param(c, c == "plan", id=f"full-disk/{c}-up-front" + ("-subprocess" if c == "plan" else ""))
    for c in (*COMMANDS, "serve")])
def test_full_disk_is_refused_up_front(command, via_subprocess, ctx, disks, capsys):
    """A tmpfs filled to the last block before the command starts."""
    disk = disks.mount("full", "32m", populate=_populate_for(command, ctx))
    fill(disk)
    out = _out_on(command, disk)
    before = snapshot(disk, ctx.root)
    code, err = run_cli(argv(command, ctx, out), capsys, via_subprocess)
    assert_one_line(code, err, str(out), "not enough free space", "(ENOSPC)")
    assert snapshot(disk, ctx.root) == before


def assert_finished_outputs_readable(root: Path) -> int:
    """Every file under root (the balloon aside) is whole: JSON parses, arrays and images load. Returns how
    many were checked."""
    from autoseg.dataset.image_io import file_ending, read_image

    checked = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "balloon"):
        name = path.name
        if name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith(".jsonl"):
            [json.loads(line) for line in path.read_text().splitlines()]
        elif name.endswith(".npy"):
            np.load(path)
        elif name.endswith(".npz"):
            with np.load(path) as saved:
                [saved[k] for k in saved.files]
        elif name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        elif file_ending(path):
            read_image(path)
        elif name.endswith((".csv", ".log")):
            assert path.stat().st_size > 0, path
        checked += 1
    return checked


# (module holding the write, its name there, which call fills the disk, the file that cannot be written)
MID_WRITE = {
    "plan": ("autoseg.planning.run", "save_plan", 1, "out/plan.json"),
    "preprocess": ("autoseg.preprocessing.run", "save_properties", 2, "out/preprocessed/"),
    "train": ("autoseg.training.loop", "save_checkpoint", 1, "out/models/3d_fullres/fold_0/checkpoint_"),
    "predict": ("autoseg.inference.predict", "write_case_report", 2, "pred/case_"),
    "evaluate": ("autoseg.evaluation.evaluate", "write_text_atomic", 1, "eval/cases.csv"),
    "find-best": ("autoseg.evaluation.find_best", "write_json_atomic", 1, "out/models/inference.json"),
    "export": ("autoseg.model.package", "atomic_path", 1, "model.autoseg"),
}


@pytest.mark.parametrize("command", [pytest.param(c, id=f"full-disk/{c}-mid-write") for c in COMMANDS])
def test_disk_filling_up_mid_write_stops_with_one_line(command, ctx, disks, capsys, monkeypatch):
    """The disk (a tmpfs) has room when the command starts; a hook fills it just before one write, as another
    program would. The command stops: exit 1, one line naming the file with ENOSPC, every file already
    finished still readable, no temp file left."""
    import importlib

    module, name, call, failing = MID_WRITE[command]
    disk = disks.mount("filling", "48m", populate=_populate_for(command, ctx))
    fill_before_call(monkeypatch, importlib.import_module(module), name, disk, call)
    code, err = run_cli(argv(command, ctx, _out_on(command, disk)), capsys)
    assert_one_line(code, err, str(disk / failing), "(ENOSPC)")
    assert temp_files(disk) == []
    finished = assert_finished_outputs_readable(disk)
    if command in ("plan", "preprocess", "predict", "evaluate", "find-best"):
        assert finished > 0, "the hook fired before anything was finished"


@pytest.mark.parametrize("case", [pytest.param("long", id="name-too-long/predict-long-case-name-written")])
def test_output_whose_temp_name_would_be_too_long_is_still_written(case, ctx, tmp_path, capsys):
    """A case name of 240 characters: its outputs fit in 255 bytes but '.tmp-<pid>-' + name would not, so
    the temp file takes a short stand-in name."""
    scans = tmp_path / "scans"
    scans.mkdir()
    long_id = "c" * 240
    shutil.copy(next(ctx.scans.iterdir()), scans / f"{long_id}_0000.nii.gz")
    code, err = run_cli(["predict", "-i", scans, "-o", tmp_path / "out", "-m", ctx.models, "--no-tta",
                         "--device", "cpu", "-q"], capsys)
    assert code == 0, err
    from autoseg.dataset.image_io import read_image

    read_image(tmp_path / "out" / f"{long_id}.nii.gz")
    json.loads((tmp_path / "out" / f"{long_id}_report.json").read_text())
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("case", [pytest.param("probabilities", id="name-too-long/predict-probabilities-name")])
def test_output_name_too_long_fails_that_case_only(case, ctx, tmp_path, capsys):
    """{case}_probabilities.npz of a 240-character case id is 258 bytes: that case fails in one line naming
    the file (ENAMETOOLONG); the other case is written; the run ends with exit 1."""
    scans = tmp_path / "scans"
    scans.mkdir()
    first, second = sorted(ctx.scans.iterdir())[:2]
    shutil.copy(first, scans / f"{'c' * 240}_0000.nii.gz")
    shutil.copy(second, scans / second.name)
    code, err = run_cli(["predict", "-i", scans, "-o", tmp_path / "out", "-m", ctx.models, "--no-tta",
                         "--device", "cpu", "--save-probabilities", "-q"], capsys)
    assert code == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].endswith("_probabilities.npz: name too long; choose a shorter name (ENAMETOOLONG)"), err
    assert lines[1].startswith(ERROR) and "1 case(s) failed" in lines[1], err
    assert (tmp_path / "out" / second.name.replace("_0000", "")).is_file()
    assert temp_files(tmp_path) == []


# ------------------------------------------------------------------------------ writers, every format

ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")
TWO_FILE = {".mhd": "ElementDataFile", ".nhdr": "data file"}
# a signed permutation: exact in every header format (oblique directions are printed rounded by some)
DIRECTION = (0.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0)


def _data_file_named(header: Path) -> str:
    key = TWO_FILE[header.suffix]
    for line in header.read_text().splitlines():
        if line.startswith(key):
            return line.split("=" if key == "ElementDataFile" else ":", 1)[1].strip()
    raise AssertionError(f"{header}: no {key} line")


@pytest.mark.parametrize("ending", ENDINGS)
def test_every_format_round_trips_exactly_with_no_temp_left(ending, tmp_path):
    from autoseg.dataset.image_io import read_image
    from autoseg.dataset.image_write import write_image_like

    rng = np.random.default_rng(3)
    path = tmp_path / f"case{ending}"
    for shape in ((7, 9, 11), (5, 6, 4)):  # the second write replaces the first, with another size
        array = rng.integers(-300, 300, shape).astype(np.int16)
        write_image_like(array, path, (2.5, 0.75, 1.25), (10.5, -3.25, 7.0), DIRECTION)
        back, geometry = read_image(path)
        np.testing.assert_array_equal(back, array)
        assert back.dtype == np.int16
        assert geometry.spacing == (2.5, 0.75, 1.25)
        assert geometry.origin == (10.5, -3.25, 7.0)
        assert geometry.direction == DIRECTION
        itk = sitk.ReadImage(str(path))  # and ITK agrees
        np.testing.assert_array_equal(sitk.GetArrayFromImage(itk), array)
    names = sorted(p.name for p in tmp_path.iterdir())
    if ending in TWO_FILE:
        data = _data_file_named(path)
        assert data in ("case.zraw", "case.raw.gz"), data  # the final name, never a temp one
        assert names == sorted([path.name, data])
    else:
        assert names == [path.name]


@pytest.mark.parametrize("ending", ENDINGS)
def test_every_file_is_fsynced_under_a_temp_name_then_renamed_data_before_header(ending, tmp_path, monkeypatch):
    from autoseg.dataset.image_write import write_image_like

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / f"case{ending}"
    write_image_like(np.ones((4, 5, 6), np.uint8), path, (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    replaces = [e for e in events if e[0] == "replace"]
    finals = [Path(e[2]).name for e in replaces]
    assert finals == ([_data_file_named(path)] if ending in TWO_FILE else []) + [path.name]
    for _, src, dst in replaces:
        assert Path(src).name.startswith(".tmp-") and Path(src).parent == Path(dst).parent
        assert ("fsync", src) in events[:events.index(("replace", src, dst))], f"{src} renamed unflushed"
    assert events[-1] == ("fsync", str(tmp_path))  # the folder too, so the renames survive a crash


@pytest.mark.parametrize("ending", ENDINGS)
def test_full_disk_while_writing_keeps_the_old_file_and_names_the_target(ending, disks):
    """A real full tmpfs; the error is an OSError (ENOSPC) naming the final file, which the CLI prints in
    one line; the previous version of the file is untouched."""
    from autoseg.dataset.image_io import read_image
    from autoseg.dataset.image_write import write_image_like
    from autoseg.output_location import describe_os_error

    disk = disks.mount("small", "1m")
    path = disk / f"case{ending}"
    old = np.full((6, 6, 6), 7, np.uint8)
    write_image_like(old, path, (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    fill(disk)
    noise = np.random.default_rng(0).integers(0, 255, (40, 40, 40)).astype(np.uint8)
    with pytest.raises(OSError) as raised:
        write_image_like(noise, path, (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert raised.value.errno == errno.ENOSPC
    line = describe_os_error(raised.value)
    assert line.startswith(str(disk / "case")) and line.endswith("(ENOSPC)"), line
    np.testing.assert_array_equal(read_image(path)[0], old)
    assert temp_files(disk) == []


def _final_images(folder: Path) -> list[Path]:
    from autoseg.dataset.image_io import file_ending

    return sorted(p for p in folder.iterdir() if file_ending(p) and not p.name.startswith(".tmp-"))


def _assert_every_final_image_whole(folder: Path) -> int:
    """Each final image reads, and holds one value (each write writes a constant array of a random shape, so an
    old header over new data, or a torn file, cannot pass); a two-file header names a final data file."""
    from autoseg.dataset.image_io import read_image

    images = _final_images(folder)
    for path in images:
        if path.suffix in TWO_FILE:
            data = _data_file_named(path)
            assert not data.startswith(".tmp-") and (folder / data).is_file(), f"{path} names {data}"
        array, _ = read_image(path)
        assert np.unique(array).size == 1, path
    return len(images)


def _clean_temp_files(folder: Path) -> None:
    """What predict and preprocess do with leftovers of a killed run."""
    for stale in folder.glob(".tmp-*"):
        stale.unlink(missing_ok=True)


WRITE_LOOP = """
import sys
import numpy as np
from autoseg.dataset.image_write import write_image_like
folder, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
endings = [".mhd", ".nhdr", ".nii.gz", ".nrrd", ".mha", ".nii"]
print("ready", flush=True)
while True:
    name = f"case_{rng.integers(3)}{endings[rng.integers(len(endings))]}"
    shape = tuple(int(s) for s in rng.integers(4, 48, 3))
    array = np.full(shape, int(rng.integers(1, 250)), np.uint8)
    write_image_like(array, f"{folder}/{name}", (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
"""


def test_kill_9_at_random_moments_of_a_write_loop_leaves_only_whole_images(tmp_path):
    """Six kills of a process writing label maps of every format into one folder (seeded moments): every final
    file present is readable and whole, before and after the temp-file cleanup that the next run does."""
    rng = random.Random(17)
    folder = tmp_path / "out"
    folder.mkdir()
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITE_LOOP, str(folder), str(round_)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.5))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        _assert_every_final_image_whole(folder)
        _clean_temp_files(folder)
        _assert_every_final_image_whole(folder)
    assert _final_images(folder), "the writer never finished a file"


KILL_AT = """
import os, sys
import numpy as np
import autoseg.dataset.image_write as w
folder, ending, point = sys.argv[1], sys.argv[2], sys.argv[3]
geometry = ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
w.write_image_like(np.full((5, 6, 7), 3, np.uint8), f"{folder}/case{ending}", *geometry)
calls = []
def dying(name, real):
    def wrapper(*args):
        calls.append(name)
        if calls.count(name) == int(point.split(":")[1]) and name == point.split(":")[0]:
            os._exit(9)
        return real(*args)
    return wrapper
w.fsync_file = dying("fsync_file", w.fsync_file)
w.os.replace = dying("replace", w.os.replace)
w.write_image_like(np.full((9, 4, 8), 5, np.uint8), f"{folder}/case{ending}", *geometry)
"""


@pytest.mark.parametrize("ending", [".mhd", ".nhdr"])
@pytest.mark.parametrize("point", ["fsync_file:1", "replace:1", "replace:2"],
                         ids=["before-old-header-removed", "before-data-renamed", "before-header-renamed"])
def test_kill_between_the_steps_of_a_two_file_write(ending, point, tmp_path):
    """os._exit at each step of replacing an existing pair: the old pair stays whole until its header is
    removed; after that there is no header until the new pair is complete; no header ever names a temp."""
    proc = subprocess.run([sys.executable, "-c", KILL_AT, str(tmp_path), ending, point], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    from autoseg.dataset.image_io import read_image

    header = tmp_path / f"case{ending}"
    for _ in range(2):  # before and after the cleanup of temp files
        if point == "fsync_file:1":
            assert read_image(header)[0].tolist() == np.full((5, 6, 7), 3).tolist()
        else:
            assert not header.exists()
        _assert_every_final_image_whole(tmp_path)
        _clean_temp_files(tmp_path)
    assert temp_files(tmp_path) == []


# ----------------------------------------------------------------------------------- output_location

def test_not_writable_per_os_access_is_refused(tmp_path, monkeypatch):
    """os.access is monkeypatched to say no (root passes a chmod 555 folder), the probe itself succeeds."""
    from autoseg.errors import AutosegError
    from autoseg.output_location import check_output_dir

    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(AutosegError, match=r"permission denied.*\(EACCES\)"):
        check_output_dir(tmp_path / "out", what="output folder")
    assert list(tmp_path.iterdir()) == []  # the probe left nothing


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                                  errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG])
def test_writing_errors_turn_each_os_error_into_one_line_naming_the_output(code):
    from autoseg.errors import AutosegError
    from autoseg.output_location import writing_errors

    with pytest.raises(AutosegError) as raised:
        with writing_errors("/hint"):
            raise OSError(code, os.strerror(code), "/data/out/.tmp-4242-case_001.nii.gz")
    line = str(raised.value)
    assert line.startswith("/data/out/case_001.nii.gz: ") and line.endswith(f"({errno.errorcode[code]})")
    assert "\n" not in line
    with pytest.raises(AutosegError, match=r"^/hint: no space left"):  # a bare write() names no file
        with writing_errors("/hint"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OSError):  # a failing disk is not a location problem: it passes through
        with writing_errors("/hint"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), "/x")


def test_atomic_path_names_the_final_file_and_recovers_errors_hidden_in_runtime_errors(disks):
    """A bare write() on a full tmpfs names no file; torch.save hides the ENOSPC in a RuntimeError."""
    import torch

    from autoseg.jsonio import atomic_path

    disk = disks.mount("tiny", "1m")
    fill(disk)
    with pytest.raises(OSError) as raised:
        with atomic_path(disk / "a.bin") as tmp, open(tmp, "wb") as f:
            f.write(b"x" * 100_000)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(disk / "a.bin")
    with pytest.raises(OSError) as raised:
        with atomic_path(disk / "w.pt") as tmp, open(tmp, "wb") as f:
            torch.save({"w": torch.zeros(100_000)}, f)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(disk / "w.pt")
    assert temp_files(disk) == []


def test_temp_name_of_a_long_name_fits_and_keeps_the_ending():
    from autoseg.jsonio import NAME_MAX, temp_path

    for name in ("c" * 250 + ".nii.gz", "c" * 240 + "_report.json", "short.nii.gz"):
        tmp = temp_path(Path("/x") / name)
        assert len(tmp.name) <= NAME_MAX and tmp.name.startswith(".tmp-")
        assert tmp.name.endswith(".nii.gz" if "nii" in name else ".json")

"""Training on tiny synthetic data: sampler, augmentation, schedule, loop, resume, DDP."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.preprocessing.crop import OUTSIDE
from autoseg.training.augmentation import augmentation_settings, build_transforms, sample_size
from autoseg.training.batches import TRAIN_STREAM, CaseSource, IndexedBatches
from autoseg.training.distributed import Ranks, rank_batch_size
from autoseg.training.sampler import Case, PatchSampler, crop_padded, enlarged_sample_size, foreground_count
from autoseg.training.schedule import parse_duration, poly_lr

from conftest import REPO, autoseg_here, run_autoseg, write_nnunet_dataset

FAST = ["--precision", "fp32", "--workers", "0", "-q", "--recipe", "standard"]


def _tiny_case(rng, shape=(30, 40, 36), blob=(20, 5, 30)):
    """Mostly background with a single foreground voxel pair, so random patches rarely see it."""
    image = rng.normal(size=(1, *shape)).astype(np.float32)
    label = np.zeros(shape, np.int8)
    label[blob] = 1
    label[blob[0], blob[1] + 1, blob[2]] = 2
    locations = {v: np.argwhere(label == v) for v in (1, 2)}
    return Case(image, label, locations)


def test_foreground_count_is_a_third_never_zero():
    assert [foreground_count(b) for b in (1, 2, 3, 4, 7, 9, 12)] == [1, 1, 1, 1, 2, 3, 4]


@pytest.mark.parametrize("batch_size", [1, 2, 7])
def test_every_batch_has_its_foreground_share_centred_on_foreground(batch_size):
    rng = np.random.default_rng(0)
    cases = [_tiny_case(rng, blob=(20, 5, 30)), _tiny_case(rng, blob=(2, 35, 3))]
    patch = (8, 10, 12)
    sampler = PatchSampler(cases, patch, patch)
    centre = tuple(p // 2 for p in patch)
    for _ in range(100):
        seg = sampler.batch(rng, batch_size)["seg"][:, 0]
        assert seg.shape == (batch_size, *patch)
        forced = seg[batch_size - foreground_count(batch_size):]
        assert all(s[centre] > 0 for s in forced)


def test_random_patches_stay_inside_and_padding_is_ignored():
    rng = np.random.default_rng(1)
    case = _tiny_case(rng, shape=(6, 40, 36), blob=(3, 5, 30))
    sampler = PatchSampler([case], (8, 10, 12), (8, 10, 12))  # first axis larger than the volume
    batch = sampler.batch(rng, 6)
    seg, data = batch["seg"][:, 0], batch["data"][:, 0]
    assert ((seg == OUTSIDE).sum(axis=(2, 3)) > 0).sum(axis=1).tolist() == [2] * 6  # 2 padded slices each
    assert np.all(data[seg == OUTSIDE] == 0)


def test_crop_padded_matches_numpy_pad():
    a = np.arange(5 * 6).reshape(5, 6)
    out = crop_padded(a, (-2, 3), (4, 5), -1)
    expected = np.pad(a, ((2, 0), (0, 2)), constant_values=-1)[0:4, 3:8]
    assert np.array_equal(out, expected)


def test_two_dimensional_sampling_takes_slices_with_foreground():
    rng = np.random.default_rng(2)
    case = _tiny_case(rng)
    sampler = PatchSampler([case], (10, 12), (10, 12))
    batch = sampler.batch(rng, 3)
    assert batch["data"].shape == (3, 1, 10, 12)
    assert batch["seg"][-1, 0, 5, 6] > 0


def test_rank_shares_keep_a_foreground_sample_each():
    shares = [rank_batch_size(3, Ranks(r, 2)) for r in range(2)]
    assert shares == [2, 1]
    assert all(foreground_count(s) >= 1 for s in shares)
    assert rank_batch_size(1, Ranks(1, 4)) == 1


def test_enlarged_sample_size():
    assert enlarged_sample_size((20, 30), 0.0, 1.0) == [20, 30]
    size = enlarged_sample_size((20, 20), math.pi / 4, 1.0)
    assert size == [math.ceil(20 * math.sqrt(2))] * 2
    assert enlarged_sample_size((20, 20), 0.0, 0.5) == [40, 40]


def test_augmentation_returns_patch_sized_batches_with_valid_labels():
    rng = np.random.default_rng(3)
    for patch in ([16, 20, 20], [4, 24, 24], [20, 24]):
        settings = augmentation_settings(patch)
        assert settings.in_plane_only == (patch == [4, 24, 24])
        size = sample_size(settings)
        case = _tiny_case(rng, shape=(30, 40, 36))
        sampler = PatchSampler([case], patch, size)
        np.random.seed(0)
        out = build_transforms(settings)(**sampler.batch(rng, 3))
        assert out["data"].shape == (3, 1, *patch)
        assert out["seg"].shape == (3, 1, *patch)
        assert set(np.unique(out["seg"])) <= {OUTSIDE, 0, 1, 2}
        assert np.isfinite(out["data"]).all()


def test_schedule_and_durations():
    assert poly_lr(0.01, 0.0) == pytest.approx(0.01)
    assert poly_lr(0.01, 0.5) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 1.0) == 0.0
    assert poly_lr(0.01, 0.05, warmup=0.1) == pytest.approx(0.01 * (0.05 + 1e-3) / 0.1)
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    with pytest.raises(ValueError):
        parse_duration("thirty minutes")


# ---- end to end on a tiny planned dataset ----

@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    from autoseg.planning.run import plan_dataset
    from autoseg.preprocessing import preprocess_dataset

    root = tmp_path_factory.mktemp("train")
    data = write_nnunet_dataset(root / "Dataset001_Syn", n_cases=6, shape=(16, 20, 18), spacing=(1.0, 1.0, 1.0))
    out = root / "planned"
    plan_dataset(data, out, workers=1, configurations=("2d", "3d_fullres"), progress=False)
    preprocess_dataset(out, workers=1, progress=False)
    return out


def _copy(planned, tmp_path) -> Path:
    dest = tmp_path / "out"
    shutil.copytree(planned, dest)
    return dest


def test_training_reduces_the_loss_and_writes_the_model_folder(planned, tmp_path):
    from autoseg.training.loop import train
    from autoseg.training.options import TrainOptions

    out = _copy(planned, tmp_path)
    result = train(out, "0", "3d_fullres", TrainOptions(epochs=4, iterations_per_epoch=8, precision="fp32"),
                   device="cpu", workers=1, progress=False)
    metrics = [json.loads(line) for line in (result.model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[-1]["lr"] < metrics[0]["lr"]
    assert set(metrics[0]["pseudo_dice"]) == {"a", "b"}
    folder = result.model_dir
    for name in ("plan.json", "options.json", "training.log", "checkpoint_final.pt", "checkpoint_best.pt"):
        assert (folder / name).is_file(), name
    assert not (folder / "checkpoint_latest.pt").exists()
    assert (folder / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((folder / "validation" / "summary.json").read_text())
    splits = json.loads((out / "splits.json").read_text())
    assert [c["case"] for c in summary["cases"]] == splits[0]["val"]
    assert all(0.0 <= c["dice"]["a"] <= 1.0 for c in summary["cases"])
    written = sorted(p.name for p in (folder / "validation").glob("*.nii.gz"))
    assert written == sorted(f"{c}.nii.gz" for c in splits[0]["val"])


def test_two_dimensional_configuration_trains_and_validates(planned, tmp_path):
    out = _copy(planned, tmp_path)
    run_autoseg("train", out, "--config", "2d", "--epochs", "1", "--iterations-per-epoch", "3", *FAST)
    summary = json.loads((out / "models/2d/fold_0/validation/summary.json").read_text())
    assert summary["configuration"] == "2d" and summary["num_cases"] == 2


def _final_state(folder: Path) -> dict:
    return torch.load(folder / "checkpoint_final.pt", weights_only=False)


def test_killed_run_resumes_to_the_same_state_as_an_uninterrupted_one(planned, tmp_path):
    args = ["--epochs", "4", "--iterations-per-epoch", "3", "--checkpoint-every", "0", "--no-validation", *FAST]
    straight = _copy(planned, tmp_path / "a")
    autoseg_here("train", straight, *args)

    killed = _copy(planned, tmp_path / "b")
    metrics = killed / "models/3d_fullres/fold_0/metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "autoseg", "train", str(killed), *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(metrics.read_text().splitlines()) < 4, "the run finished before it could be killed"
    assert not (killed / "models/3d_fullres/fold_0/checkpoint_final.pt").exists()
    autoseg_here("train", killed, *args)

    a, b = _final_state(straight / "models/3d_fullres/fold_0"), _final_state(killed / "models/3d_fullres/fold_0")
    assert a["state"]["epoch"] == b["state"]["epoch"] == 4
    assert a["state"]["iteration"] == b["state"]["iteration"] == 12
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    for key, value in a["optimizer"]["state"].items():
        assert torch.allclose(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"], atol=1e-5)
    for key, value in a["network"].items():
        assert torch.allclose(value, b["network"][key], atol=1e-5), key
    lines_a = (straight / "models/3d_fullres/fold_0/metrics.jsonl").read_text().splitlines()
    lines_b = metrics.read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines_b] == [1, 2, 3, 4]
    assert [json.loads(x)["lr"] for x in lines_a] == [json.loads(x)["lr"] for x in lines_b]


def test_a_finished_run_trains_longer_on_the_longer_schedule(planned, tmp_path):
    """--epochs 1 -> 3 after the run finished: two more epochs from the final checkpoint, the learning rate of
    a run planned for 3 epochs from there on (docs/training.md, "Training longer")."""
    args = ["--iterations-per-epoch", "2", "--no-validation", *FAST]
    straight = _copy(planned, tmp_path / "a")
    autoseg_here("train", straight, "--epochs", "3", *args)
    longer = _copy(planned, tmp_path / "b")
    autoseg_here("train", longer, "--epochs", "1", *args)
    folder = longer / "models/3d_fullres/fold_0"
    first_lr = json.loads((folder / "metrics.jsonl").read_text())["lr"]
    assert first_lr == pytest.approx(poly_lr(0.01, 1 / 2))  # the 1-epoch schedule: last step at 1 of 2
    autoseg_here("train", longer, "--epochs", "3", *args)
    metrics = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(x) for x in (straight / "models/3d_fullres/fold_0/metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert [m["lr"] for m in metrics[1:]] == pytest.approx([m["lr"] for m in reference[1:]])
    assert metrics[1]["lr"] == pytest.approx(poly_lr(0.01, 3 / 6))
    assert _final_state(folder)["state"]["iteration"] == 6
    assert json.loads((folder / "options.json").read_text())["epochs"] == 3
    assert "training longer (epochs: 1 -> 3)" in (folder / "training.log").read_text()


def test_a_larger_time_budget_continues_a_finished_budget_run(planned, tmp_path):
    out = _copy(planned, tmp_path)
    args = ["--iterations-per-epoch", "5", "--no-validation", *FAST]
    autoseg_here("train", out, "--time-budget", "3s", *args)
    folder = out / "models/3d_fullres/fold_0"
    before = _final_state(folder)["state"]
    autoseg_here("train", out, "--time-budget", "6s", *args)
    after = _final_state(folder)["state"]
    assert after["iteration"] > before["iteration"] and 5.0 <= after["train_seconds"] <= 7.0
    proc = autoseg_here("train", out, "--time-budget", "4s", *args, check=False)
    assert proc.returncode == 1 and "time_budget_s: 6.0 -> 4.0 (it can only grow)" in proc.stderr


def test_a_budget_used_up_before_the_first_epoch_still_ends_with_a_model(planned, tmp_path):
    out = _copy(planned, tmp_path)
    autoseg_here("train", out, "--time-budget", "0.01s", "--iterations-per-epoch", "3", "--no-validation", *FAST)
    state = _final_state(out / "models/3d_fullres/fold_0")["state"]
    assert state["epoch"] == 1 and 1 <= state["iteration"] <= 3


def test_batches_depend_only_on_their_index(planned):
    folder = planned / "preprocessed" / "3d_fullres"
    ids = sorted(p.stem for p in folder.glob("*.json"))
    settings = augmentation_settings([16, 20, 20])
    a = IndexedBatches(CaseSource(folder, tuple(ids)), settings, 2, 0, TRAIN_STREAM, 0, True)
    b = IndexedBatches(CaseSource(folder, tuple(ids)), settings, 2, 0, TRAIN_STREAM, 0, True)
    assert torch.equal(a[5]["data"], b[5]["data"]) and torch.equal(a[5]["target"], b[5]["target"])
    assert not torch.equal(a[5]["data"], a[6]["data"])


def _cli_error(capsys, *args) -> str:
    """`autoseg ARGS` in this process (no interpreter start per refusal): exit code 1 and its stderr."""
    from autoseg.cli import main

    capsys.readouterr()
    assert main([str(a) for a in args]) == 1
    return capsys.readouterr().err


def test_cli_errors_are_one_line(planned, tmp_path, capsys):
    out = _copy(planned, tmp_path)
    shutil.rmtree(out / "preprocessed" / "3d_fullres")
    err = _cli_error(capsys, "train", out, *FAST)
    assert err.count("\n") == 1 and "autoseg preprocess" in err
    out = _copy(planned, tmp_path / "x")
    assert "nothing to resume" in _cli_error(capsys, "train", out, "--resume", *FAST)
    assert "fold 7 does not exist" in _cli_error(capsys, "train", out, "--fold", "7", *FAST)
    assert "no configuration 3d_lowres" in _cli_error(capsys, "train", out, "--config", "3d_lowres", *FAST)
    run_autoseg("train", out, "--epochs", "2", "--iterations-per-epoch", "1", "--no-validation", *FAST)
    for changed, words in ((["--epochs", "1"], "epochs: 2 -> 1 (it can only grow)"),
                           (["--epochs", "2", "--batch-size", "3"], "batch_size: None -> 3"),
                           (["--time-budget", "1m"], "time_budget_s: None -> 60.0")):
        err = _cli_error(capsys, "train", out, "--iterations-per-epoch", "1", "--no-validation", *changed, *FAST)
        assert words in err and err.count("\n") == 1, err
        assert "only --epochs or --time-budget may grow" in err
    proc = run_autoseg("train", out, "--time-budget", "soon", *FAST, check=False)
    assert proc.returncode == 2 and "not a duration" in proc.stderr


def test_time_budget_fits_the_schedule_into_the_budget(planned, tmp_path):
    out = _copy(planned, tmp_path)
    autoseg_here("train", out, "--time-budget", "4s", "--iterations-per-epoch", "5", "--no-validation", *FAST)
    metrics = [json.loads(x) for x in (out / "models/3d_fullres/fold_0/metrics.jsonl").read_text().splitlines()]
    step_s = max(m["iterations_time_s"] / m["iterations"] for m in metrics)
    assert 4.0 - 2 * step_s - 0.3 <= metrics[-1]["train_seconds"] <= 4.0 + step_s + 0.3
    # the learning rate follows the clock: at the last epoch's last step it is the poly value of the
    # time spent before that step, whatever the machine's speed
    # (the schedule spans the budget left after the recipe's step-time probe, which recipe.json records)
    probe = json.loads((out / "models/3d_fullres/fold_0/recipe.json").read_text())["probe_seconds"]
    assert 0 < probe < 4.0
    last = metrics[-1]
    step = last["iterations_time_s"] / last["iterations"]
    progress_before_last_step = (last["train_seconds"] - (last["epoch_time_s"] - last["iterations_time_s"])
                                 - step - probe) / (4.0 - probe)
    # the last step's start is estimated from the epoch's mean step: one slow step in a busy suite moves the
    # estimate by a few percent of a 4-second budget (0.06 seen once), hence the margin
    assert last["lr"] <= poly_lr(0.01, progress_before_last_step - 0.1)
    assert [m["lr"] for m in metrics] == sorted((m["lr"] for m in metrics), reverse=True)


def test_two_process_gloo_ddp_run(planned, tmp_path):
    out = _copy(planned, tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "autoseg", "train", str(out), "--epochs", "2", "--iterations-per-epoch", "3",
                           "--device", "cpu", *FAST], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    folder = out / "models/3d_fullres/fold_0"
    log = (folder / "training.log").read_text()
    context = f"log:\n{log}\nstderr:\n{proc.stderr[-2000:]}"
    assert log.count("training 3d_fullres fold 0") == 1 and "2 processes" in log, context
    metrics = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    state = _final_state(folder)
    assert state["state"]["iteration"] == 6
    assert not any(k.startswith("module.") for k in state["network"])  # saved unwrapped, loadable without DDP
    assert (folder / "validation" / "summary.json").is_file()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # half a minute; CI keeps the two-process run beside it within its time (run with -m slow)
def test_two_node_groups_on_loopback_train_and_resume(planned, tmp_path):
    """torchrun --nnodes 2 as two node groups of one process each on this machine (gloo over loopback), sharing
    the output folder as nodes share a file system; then the finished run trained longer on both nodes, which
    resumes from rank 0's checkpoint."""
    out = _copy(planned, tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")

    def on_two_nodes(epochs: int) -> None:
        port = _free_port()
        launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                  "--master_addr=127.0.0.1", f"--master_port={port}"]
        train = ["-m", "autoseg", "train", str(out), "--epochs", str(epochs), "--iterations-per-epoch", "3",
                 "--device", "cpu", "--no-validation", *FAST]
        nodes = [subprocess.Popen([*launch, f"--node_rank={k}", *train], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for k in (0, 1)]
        for node in nodes:
            stdout, stderr = node.communicate(timeout=300)
            assert node.returncode == 0, stdout[-2000:] + stderr[-3000:]

    on_two_nodes(1)
    on_two_nodes(2)
    folder = out / "models/3d_fullres/fold_0"
    log = (folder / "training.log").read_text()
    assert log.count("2 processes") == 1 and "resuming 3d_fullres fold 0 from checkpoint_final.pt" in log, log
    assert "training longer (epochs: 1 -> 2)" in log
    metrics = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert _final_state(folder)["state"]["iteration"] == 6

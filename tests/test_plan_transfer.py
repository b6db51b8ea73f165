"""`autoseg plan --plan-from`: a target dataset planned with a source model's network and preprocessing, so
`autoseg train --init-from` can load the source's weights."""
import json

import pytest

from autoseg.planning.plan_types import load_plan

from conftest import run_autoseg, write_nnunet_dataset

FAST = ["--precision", "fp32", "--workers", "0", "-q", "--no-validation", "--recipe", "standard"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A CT source dataset planned, preprocessed and trained at half width, and exported."""
    root = tmp_path_factory.mktemp("source")
    data = write_nnunet_dataset(root / "Dataset020_Source", n_cases=5, shape=(16, 20, 18), spacing=(1.0, 1.0, 1.0),
                                channel_names={"0": "CT"})
    out = root / "out"
    run_autoseg("plan", data, "-o", out, "--configs", "3d_fullres", "--preprocess", "--workers", "1", "-q")
    run_autoseg("train", out, "--fold", "0", "--epochs", "1", "--iterations-per-epoch", "2", "--width", "0.5", *FAST)
    run_autoseg("export", out, "-o", root / "source.autoseg")
    return out, root / "source.autoseg"


def _target(tmp_path):
    """Another dataset: other spacing, a second channel (MRI), one foreground label fewer, another seed."""
    data = write_nnunet_dataset(tmp_path / "Dataset021_Target", n_cases=5, n_channels=2, shape=(14, 22, 20),
                                spacing=(2.0, 0.8, 0.8), channel_names={"0": "CT", "1": "T2"}, seed=3)
    meta = json.loads((data / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "structure": 1, "other": 2}
    (data / "dataset.json").write_text(json.dumps(meta))
    return data


def test_target_keeps_the_source_network_and_ct_statistics_and_plans_its_own_labels(source, tmp_path):
    out, _ = source
    data = _target(tmp_path)
    proc = run_autoseg("plan", data, "-o", tmp_path / "target", "--plan-from", out / "plan.json", "--configs",
                       "3d_fullres", "-q")
    assert "network and preprocessing kept from" in proc.stdout
    run_autoseg("plan", data, "-o", tmp_path / "own", "--configs", "3d_fullres", "-q")
    theirs, ours = load_plan(out / "plan.json"), load_plan(tmp_path / "target" / "plan.json")
    own = load_plan(tmp_path / "own" / "plan.json")
    assert ours.configurations["3d_fullres"] == theirs.configurations["3d_fullres"]
    assert own.configurations["3d_fullres"].spacing != theirs.configurations["3d_fullres"].spacing  # it would differ
    assert (ours.orientation, ours.transpose_forward) == (theirs.orientation, theirs.transpose_forward)
    ct = ours.normalization[0]
    assert (ct.scheme, ct.clip_low, ct.clip_high, ct.mean, ct.std) == (
        "ct", theirs.normalization[0].clip_low, theirs.normalization[0].clip_high, theirs.normalization[0].mean,
        theirs.normalization[0].std)
    assert ct.mean != own.normalization[0].mean  # the target's own CT statistics differ
    assert ours.normalization[1] == own.normalization[1]  # the new channel is planned for the target
    assert ours.labels == {"background": 0, "structure": 1, "other": 2}
    assert ours.original_median_spacing == own.original_median_spacing  # the target's, for input checks
    assert ours.transferred_from == f"Synthetic ({out / 'plan.json'})"


def test_fine_tuning_from_a_package_gets_the_trained_width_and_loads_the_weights(source, tmp_path):
    _, package = source
    data = _target(tmp_path)
    target = tmp_path / "target"
    run_autoseg("plan", data, "-o", target, "--plan-from", package, "--configs", "3d_fullres", "--preprocess",
                "--workers", "1", "-q")
    planned = load_plan(target / "plan.json").configurations["3d_fullres"].features_per_stage
    trained = load_plan(next((source[0] / "models" / "3d_fullres").glob("fold_0")) / "plan.json")
    assert planned == trained.configurations["3d_fullres"].features_per_stage  # the half-width network
    run_autoseg("train", target, "--fold", "0", "--epochs", "1", "--iterations-per-epoch", "2", "--init-from", package,
                *FAST)
    log = (target / "models" / "3d_fullres" / "fold_0" / "training.log").read_text()
    assert "tensors copied from" in log and "1 -> 2 input channels" in log


def test_without_the_plan_transfer_a_width_mismatch_names_the_remedy(source, tmp_path):
    _, package = source
    data = _target(tmp_path)
    target = tmp_path / "own"
    run_autoseg("plan", data, "-o", target, "--configs", "3d_fullres", "--preprocess", "--workers", "1", "-q")
    proc = run_autoseg("train", target, "--fold", "0", "--epochs", "1", "--iterations-per-epoch", "2",
                       "--init-from", package, *FAST, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--plan-from" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_source_without_the_asked_configuration_is_one_line(source, tmp_path):
    out, _ = source
    proc = run_autoseg("plan", _target(tmp_path), "-o", tmp_path / "t", "--plan-from", out, "--configs", "2d",
                       check=False)
    assert proc.returncode != 0 and "has none of the configurations asked for (2d)" in proc.stderr
    assert "Traceback" not in proc.stderr

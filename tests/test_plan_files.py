"""plan.json / fingerprint.json: schema kept in sync, round trip, strict loading, CLI end to end."""
import json
import shutil

import jsonschema
import numpy as np
import pytest

from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.fingerprint import FINGERPRINT_VERSION, compute_fingerprint, load_fingerprint
from autoseg.planning import load_plan
from autoseg.planning.plan_types import PLAN_VERSION
from autoseg.planning.run import default_output_dir
from autoseg.schemas import schemas
from conftest import REPO, write_nnunet_dataset


def test_committed_schemas_are_up_to_date():
    for name, schema in schemas().items():
        committed = json.loads((REPO / "plans" / name).read_text())
        assert committed == schema, f"plans/{name} is stale: run python -m autoseg.schemas plans"


@pytest.fixture
def planned(tmp_path, capsys):
    ds = write_nnunet_dataset(tmp_path / "ds", n_cases=4, n_channels=2,
                              channel_names={"0": "CT", "1": "MRI"})
    out = tmp_path / "out"
    assert main(["plan", str(ds), "-o", str(out), "-q", "--workers", "2"]) == 0
    capsys.readouterr()
    return ds, out


def test_written_files_validate_and_round_trip(planned):
    _, out = planned
    s = schemas()
    plan_json = json.loads((out / "plan.json").read_text())
    fp_json = json.loads((out / "fingerprint.json").read_text())
    jsonschema.validate(plan_json, s["schema.json"])
    jsonschema.validate(fp_json, s["fingerprint.schema.json"])
    plan, fp = load_plan(out / "plan.json"), load_fingerprint(out / "fingerprint.json")
    assert plan.version == PLAN_VERSION and fp.version == FINGERPRINT_VERSION
    assert [n.scheme for n in plan.normalization] == ["ct", "zscore"]
    assert plan.normalization[0].clip_low == fp.foreground_intensity[0].percentile_00_5


def test_loading_rejects_wrong_version_and_unknown_fields(planned, tmp_path):
    _, out = planned
    data = json.loads((out / "plan.json").read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(AutosegError, match="version 99 is not supported"):
        load_plan(bad)
    bad.write_text(json.dumps({**data, "surprise": 1}))
    with pytest.raises(AutosegError, match="unknown field"):
        load_plan(bad)
    broken = dict(data)
    broken["configurations"] = {"2d": {**data["configurations"]["2d"], "batch_size": "two"}}
    bad.write_text(json.dumps(broken))
    with pytest.raises(AutosegError, match=r"configurations\.2d\.batch_size: expected an integer"):
        load_plan(bad)


def test_replan_from_fingerprint_reads_no_images(planned, tmp_path, capsys):
    ds, out = planned
    shutil.rmtree(ds)  # images are gone: re-planning must not need them
    assert main(["plan", "--fingerprint", str(out / "fingerprint.json"), "--gpu-memory", "24", "-o",
                 str(tmp_path / "replan")]) == 0
    capsys.readouterr()
    assert load_plan(tmp_path / "replan" / "plan.json").gpu_memory_gb == 24.0
    # without -o it writes next to the fingerprint
    assert main(["plan", "--fingerprint", str(out / "fingerprint.json"), "--configs", "2d"]) == 0
    assert list(load_plan(out / "plan.json").configurations) == ["2d"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["plan", "--fingerprint", str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.json: file not found" in err
    (tmp_path / "bad.json").write_text("{")
    assert main(["plan", "--fingerprint", str(tmp_path / "bad.json")]) == 1
    assert "bad.json: not valid JSON" in capsys.readouterr().err
    assert main(["plan"]) == 1
    assert "give either DATASET_DIR or --fingerprint" in capsys.readouterr().err


def test_default_output_dir_is_beside_the_dataset(tmp_path):
    assert default_output_dir(tmp_path / "Dataset004_X") == (tmp_path / "Dataset004_X.autoseg").resolve()


def test_fingerprint_statistics_hand_computed(tmp_path):
    from conftest import write_image
    root = tmp_path / "ds"
    image = np.zeros((6, 6, 6), np.float32)
    image[1:5, 1:5, 1:5] = 7.0  # nonzero region 4x4x4
    label = np.zeros((6, 6, 6), np.uint8)
    label[2:4, 2:4, 2:4] = 1
    image[2:4, 2:4, 2:4] = np.arange(8, dtype=np.float32).reshape(2, 2, 2)  # foreground 0..7
    write_image(root / "imagesTr" / "a_0000.nii.gz", image)
    write_image(root / "labelsTr" / "a.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "x": 1},
                                                   "numTraining": 1, "file_ending": ".nii.gz"}))
    n = 80_000
    fp = compute_fingerprint(root, workers=1, progress=False, intensity_samples=n)
    case = fp.cases[0]
    assert case.shape_before_crop == [6, 6, 6] and case.shape_after_crop == [4, 4, 4]
    assert case.nonzero_bbox == [[1, 5], [1, 5], [1, 5]]
    assert case.relative_size_after_crop == pytest.approx(64 / 216)
    # n values drawn with replacement from the 8 foreground voxels 0..7 (tests/test_fingerprint_stats.py
    # covers the weighting): within 5 standard errors of the voxels' own statistics
    stats = fp.foreground_intensity[0]
    assert (stats.min, stats.max, stats.num_samples) == (0.0, 7.0, n)
    sigma = np.std(np.arange(8))
    assert abs(stats.mean - 3.5) <= 5 * sigma / np.sqrt(n)
    assert stats.std == pytest.approx(sigma, rel=1e-2)
    assert stats.median in (3.0, 3.5, 4.0) and (stats.percentile_00_5, stats.percentile_99_5) == (0.0, 7.0)


def test_fingerprint_same_with_any_worker_count(tmp_path):
    ds = write_nnunet_dataset(tmp_path / "ds", n_cases=5)
    a = compute_fingerprint(ds, workers=1, progress=False)
    b = compute_fingerprint(ds, workers=2, progress=False)
    assert a == b


def test_cli_end_to_end_on_hippocampus(hippocampus_dir, tmp_path, capsys):
    out = tmp_path / "hippo"
    assert main(["plan", str(hippocampus_dir), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3d_fullres" in printed and "40x56x40" in printed
    fp, plan = load_fingerprint(out / "fingerprint.json"), load_plan(out / "plan.json")
    assert len(fp.cases) == 208
    full = plan.configurations["3d_fullres"]
    assert full.spacing == [1.0, 1.0, 1.0] and full.patch_size == [40, 56, 40] and full.batch_size == 7
    assert list(plan.configurations) == ["2d", "3d_fullres"]
    assert plan.normalization[0].scheme == "zscore"


def test_properties_files_validate_against_committed_schema(planned):
    _, out = planned
    assert main(["preprocess", str(out), "-q", "--workers", "1"]) == 0
    schema = schemas()["properties.schema.json"]
    files = list((out / "preprocessed").glob("*/*.json"))
    assert files
    for path in files:
        jsonschema.validate(json.loads(path.read_text()), schema)

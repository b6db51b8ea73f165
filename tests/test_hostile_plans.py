"""Hand-edited plan.json: names that become paths stay inside the output folder; other edits are typed."""
import json

import pytest

from autoseg.cli import main

from conftest import write_nnunet_dataset

CORPUS_STAGE = "preprocess"
CORPUS_CLASSES = {
    "plan-path-escape": "a plan value that names a folder or file and would leave the output folder is refused "
                        "with one line naming plan.json and the field; nothing is written",
    "plan-type": "a plan value of the wrong type or an unknown field is refused with one line naming plan.json and "
                 "the field",
    "plan-version": "a plan from another autoseg version is refused with one line saying which step to rerun",
}


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("plans")
    data = write_nnunet_dataset(root / "Dataset001_Syn", n_cases=3)
    out = root / "out"
    assert main(["plan", str(data), "-o", str(out), "--configs", "3d_fullres", "--workers", "1", "-q"]) == 0
    return out


def _edit(plan: dict, path: str, value):
    target = plan
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value


_DELETE = object()

CASES = [
    pytest.param("configurations.3d_fullres.data_identifier", "../../escaped", "data_identifier",
                 id="plan-path-escape/data-identifier-dotdot"),
    pytest.param("configurations.3d_fullres.data_identifier", "/tmp/escaped", "data_identifier",
                 id="plan-path-escape/data-identifier-absolute"),
    pytest.param("configurations.3d_fullres.data_identifier", "..", "data_identifier",
                 id="plan-path-escape/data-identifier-parent"),
    pytest.param("configurations.3d_fullres.data_identifier", "", "data_identifier",
                 id="plan-path-escape/data-identifier-empty"),
    pytest.param("configurations.3d_fullres.data_identifier", "a\\..\\..\\b", "data_identifier",
                 id="plan-path-escape/data-identifier-backslash"),
    pytest.param("fingerprint_file", "../../../etc/passwd", "fingerprint_file",
                 id="plan-path-escape/fingerprint-file"),
    pytest.param("configurations.3d_fullres.previous_stage", "3d_lowres", "previous_stage",
                 id="plan-path-escape/previous-stage-missing"),
    pytest.param("configurations.3d_fullres.patch_size", "big", "patch_size", id="plan-type/patch-size-string"),
    pytest.param("configurations.3d_fullres.batch_size", 2.5, "batch_size", id="plan-type/batch-size-float"),
    pytest.param("labels", ["background", "a"], "labels", id="plan-type/labels-list"),
    pytest.param("orientation", _DELETE, "orientation", id="plan-type/orientation-missing"),
    pytest.param("orientation", "XYZ", "orientation", id="plan-type/orientation-code"),
    pytest.param("version", 1, "older autoseg", id="plan-version/older"),
    pytest.param("version", 99, "version 99", id="plan-version/newer"),
]


@pytest.mark.parametrize("field, value, named", CASES)
def test_hand_edited_plan_is_refused_in_one_line(planned, tmp_path, capsys, field, value, named):
    out = tmp_path / "out"
    out.mkdir()
    plan = json.loads((planned / "plan.json").read_text())
    _edit(plan, field, value)
    (out / "plan.json").write_text(json.dumps(plan))
    (out / "fingerprint.json").write_text((planned / "fingerprint.json").read_text())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(["preprocess", str(out), "--workers", "1", "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1, lines
    assert str(out / "plan.json") in lines[0] and named in lines[0], lines[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path.parent / "escaped").exists()

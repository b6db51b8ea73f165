"""autoseg's planner against nnU-Net v2 on the same fingerprints (references in plans/reference/).

benchmarks/reference_plans.py ran nnU-Net v2's planner on each fingerprint and stored its
plans (the default planner in nnunet/, its residual-encoder presets in nnunet-resenc-m/ -l/ -xl/);
here autoseg re-plans each fingerprint with the same preset and must (a) reproduce its committed plan
and (b) make the same decisions as nnU-Net, except the documented cap of 6 pools per axis.
"""
import dataclasses
import json
import sys

import pytest

from autoseg.fingerprint import compute_fingerprint, load_fingerprint
from autoseg.jsonio import to_dict
from autoseg.planning import plan_experiment
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from nnunet_compare import MAX_POOLS_PER_AXIS, deliberate, differences, nnunet_decisions  # noqa: E402

REFERENCE = REPO / "plans" / "reference"
NAMES = sorted(p.stem for p in (REFERENCE / "fingerprints").glob("*.json"))
TOPOLOGY_KEYS = {"patch_size", "batch_size", "pool_strides", "num_pools_per_axis", "conv_kernels", "features_per_stage",
                 "blocks_per_stage", "convs_per_stage_decoder"}
PRESETS = ["plain", "resenc-m", "resenc-l", "resenc-xl"]
CASES = [(preset, name) for preset in PRESETS for name in NAMES]


def _folders(preset: str) -> tuple[str, str]:
    return ("nnunet", "autoseg") if preset == "plain" else (f"nnunet-{preset}", f"autoseg-{preset}")


def test_reference_set_covers_the_required_cases():
    assert {"Dataset004_Hippocampus", "Dataset900_SynthIsoMRI", "Dataset901_SynthProstate",
            "Dataset902_SynthLargeCT", "Dataset904_Synth2D", "Dataset905_SynthCTSlices2D"} <= set(NAMES)


@pytest.mark.parametrize("preset, name", CASES)
def test_replanning_reproduces_committed_plan(preset, name):
    fp = load_fingerprint(REFERENCE / "fingerprints" / f"{name}.json")
    plan = to_dict(plan_experiment(fp, fingerprint_file=f"../fingerprints/{name}.json", preset=preset))
    committed = json.loads((REFERENCE / _folders(preset)[1] / name / "plan.json").read_text())
    assert plan == committed


@pytest.mark.parametrize("preset, name", CASES)
def test_same_decisions_as_nnunet(preset, name):
    fp = load_fingerprint(REFERENCE / "fingerprints" / f"{name}.json")
    plan = to_dict(plan_experiment(fp, preset=preset))
    nnunet = json.loads((REFERENCE / _folders(preset)[0] / name / "nnUNetPlans.json").read_text())
    allowed = deliberate(nnunet)
    for line in differences(plan, nnunet):
        config, key = line.split(":")[0].split(".", 1) if "." in line.split(":")[0] else (line, "")
        assert config in allowed and key in TOPOLOGY_KEYS, f"unexpected difference from nnU-Net: {line}"
    for config in allowed:
        theirs = nnunet_decisions(nnunet)["configurations"][config]["num_pools_per_axis"]
        ours = plan["configurations"][config]["num_pools_per_axis"]
        assert ours == [min(n, MAX_POOLS_PER_AXIS) for n in theirs]


def test_large_ct_slices_plan_six_pools_in_2d():
    nnunet = json.loads((REFERENCE / "nnunet" / "Dataset905_SynthCTSlices2D" / "nnUNetPlans.json").read_text())
    assert nnunet_decisions(nnunet)["configurations"]["2d"]["num_pools_per_axis"] == [7, 7]
    ours = json.loads((REFERENCE / "autoseg" / "Dataset905_SynthCTSlices2D" / "plan.json").read_text())
    two_d = ours["configurations"]["2d"]
    assert two_d["num_pools_per_axis"] == [6, 6] and len(two_d["pool_strides"]) == 7
    assert two_d["patch_size"] == [512, 512]


def test_hippocampus_fingerprint_matches_committed_reference(hippocampus_dir):
    committed = load_fingerprint(REFERENCE / "fingerprints" / "Dataset004_Hippocampus.json")
    fresh = compute_fingerprint(hippocampus_dir, progress=False)
    # the dataset report's measurements came later than the committed reference: compared without them
    assert all(c.quality is not None for c in fresh.cases)
    assert [dataclasses.replace(c, quality=None) for c in fresh.cases] == committed.cases
    assert fresh.foreground_intensity == committed.foreground_intensity

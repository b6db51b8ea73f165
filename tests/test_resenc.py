"""Residual-encoder presets (nnU-Net's ResEnc M / L / XL): the memory count, the network built from a plan,
and training; the planner's decisions against nnU-Net's are in test_reference_plans.py."""
import json

import pytest
import torch

from autoseg.fingerprint import load_fingerprint
from autoseg.model.blocks import ResidualBlock
from autoseg.model.network import build_network
from autoseg.planning import plan_experiment
from autoseg.planning.memory import residual_feature_map_voxels

from conftest import REPO, run_autoseg, write_nnunet_dataset

REFERENCE = REPO / "plans" / "reference"


def test_feature_map_count_equals_nnunets_own_figures():
    # the values nnU-Net's residual_encoder_unet_planners.py prints for its ResidualEncoderUNet (3 classes,
    # deep supervision on): 3D 128^3 with 6 stages, 2D 512^2 with 7
    three_d = residual_feature_map_voxels([128] * 3, [[1, 1, 1]] + [[2, 2, 2]] * 5, [32, 64, 128, 256, 320, 320], 3,
                                          [1, 3, 4, 6, 6, 6], [1] * 5, deep_supervision=True)
    two_d = residual_feature_map_voxels([512] * 2, [[1, 1]] + [[2, 2]] * 6, [32, 64, 128, 256, 512, 512, 512], 3,
                                        [1, 3, 4, 6, 6, 6, 6], [1] * 6, deep_supervision=True)
    assert (three_d, two_d) == (558319104, 129793792)


@pytest.mark.parametrize("name, configuration", [("Dataset901_SynthProstate", "3d_fullres"),
                                                 ("Dataset900_SynthIsoMRI", "3d_fullres"),
                                                 ("Dataset904_Synth2D", "2d")])
def test_network_from_a_resenc_plan_has_the_planned_blocks_and_output_shapes(name, configuration):
    plan = plan_experiment(load_fingerprint(REFERENCE / "fingerprints" / f"{name}.json"), preset="resenc-m")
    config = plan.configurations[configuration]
    assert config.architecture == "resenc" and config.convs_per_stage_encoder[:3] == [1, 3, 4]
    assert config.convs_per_stage_decoder == [1] * (config.num_stages - 1)
    with torch.device("meta"):  # the real sizes, without computing or allocating anything
        network = build_network(config, 2, 3, deep_supervision=True).train()
        outputs = network(torch.empty(1, 2, *config.patch_size))
    assert [len(stage) for stage in network.encoder] == config.convs_per_stage_encoder
    expected, size = [], list(config.patch_size)
    for stride in config.pool_strides[:-1]:
        size = [s // k for s, k in zip(size, stride)]
        expected.append((1, 3, *size))
    assert [tuple(o.shape) for o in outputs] == expected


def test_a_residual_block_starts_as_its_shortcut():
    block = ResidualBlock(3, 8, 16, [3, 3, 3], [2, 2, 2])
    torch.nn.init.zeros_(block.conv2[1].weight)  # as UNet initialises it
    torch.nn.init.zeros_(block.conv2[1].bias)
    x = torch.randn(1, 8, 8, 8, 8)
    assert torch.allclose(block(x), torch.nn.functional.leaky_relu(block.shortcut(x), 0.01))
    network = build_network(plan_experiment(load_fingerprint(REFERENCE / "fingerprints" / "Dataset900_SynthIsoMRI.json"),
                                            preset="resenc-m").configurations["3d_fullres"], 1, 3)
    blocks = [m for m in network.modules() if isinstance(m, ResidualBlock)]
    assert blocks and all(not b.conv2[1].weight.detach().any() for b in blocks)


def test_resenc_plan_records_the_preset_and_its_memory_and_trains(tmp_path):
    data = write_nnunet_dataset(tmp_path / "Dataset030_Res", n_cases=5, shape=(16, 20, 18), spacing=(1.0, 1.0, 1.0))
    out = tmp_path / "out"
    proc = run_autoseg("plan", data, "-o", out, "--preset", "resenc-l", "--configs", "3d_fullres", "--preprocess",
                       "--workers", "1", "-q")
    assert "resenc-l network" in proc.stdout
    plan = json.loads((out / "plan.json").read_text())
    assert plan["preset"] == "resenc-l" and plan["gpu_memory_gb"] == 24.0
    assert plan["configurations"]["3d_fullres"]["architecture"] == "resenc"
    run_autoseg("train", out, "--fold", "0", "--epochs", "4", "--iterations-per-epoch", "8", "--width", "0.5",
                "--batch-size", "2", "--precision", "fp32", "--workers", "0", "-q", "--no-validation")
    fold = out / "models" / "3d_fullres" / "fold_0"
    metrics = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    state = torch.load(fold / "checkpoint_final.pt", map_location="cpu", weights_only=False)["network"]
    assert any(k.startswith("stem.") for k in state) and any(".shortcut." in k for k in state)

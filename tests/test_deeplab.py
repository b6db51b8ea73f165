"""The DeepLab family: the atrous layout and ASPP rates the planner decides, the memory count, the network it
builds (shapes, dilations, ASPP branches), and training through the CLI."""
import json

import numpy as np
import pytest
import torch

from autoseg.fingerprint import load_fingerprint
from autoseg.model.aspp import ASPP
from autoseg.model.network import build_network
from autoseg.planning import plan_experiment
from autoseg.planning.atrous import atrous_layout
from autoseg.planning.memory import deeplab_feature_map_voxels, residual_feature_map_voxels
from autoseg.training.loop import train
from autoseg.training.options import TrainOptions

from conftest import REPO, run_autoseg, write_nnunet_dataset

REFERENCE = REPO / "plans" / "reference"


def test_isotropic_layout_keeps_output_stride_4_and_spreads_the_rates():
    layout = atrous_layout([1.0, 1.0, 1.0], [40, 56, 40], [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]])
    # a total stride of 8: one atrous stage leaves output stride 4, a second would leave 2
    assert layout.strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 1, 1]]
    assert layout.dilations == [[1, 1, 1], [1, 1, 1], [1, 1, 1], [2, 2, 2]]
    assert layout.bottleneck_size == [10, 14, 10]
    # bottleneck spacing 4 mm, smallest extent 40 mm: radii 6.7, 13.3, 20 mm = 1.7, 3.3, 5 voxels; the last is
    # capped at 4 on the 10-voxel axes so the kernel stays inside the map
    assert layout.aspp_rates == [[2, 2, 2], [3, 3, 3], [4, 5, 4]]
    assert layout.aspp_kernel == [3, 3, 3]
    deep = atrous_layout([1.0, 1.0, 1.0], [128] * 3, [[1, 1, 1]] + [[2, 2, 2]] * 5)
    assert deep.atrous_stages == 2 and deep.dilations[-2:] == [[2, 2, 2], [4, 4, 4]] and deep.bottleneck_size == [16] * 3
    shallow = atrous_layout([1.0, 1.0, 1.0], [16, 20, 20], [[1, 1, 1], [2, 2, 2], [2, 2, 2]])
    assert shallow.atrous_stages == 0 and shallow.strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]


def test_anisotropic_layout_gives_the_thick_slice_axis_small_rates():
    strides = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
    layout = atrous_layout([3.6, 0.6, 0.6], [20, 320, 256], strides)
    assert layout.dilations[-2:] == [[1, 2, 2], [1, 4, 4]]  # the slice axis gave up no stride there
    # bottleneck 5 x 20 x 16 at 14.4 x 9.6 x 9.6 mm: radii 12, 24, 36 mm
    assert layout.bottleneck_size == [5, 20, 16]
    assert layout.aspp_rates == [[1, 1, 1], [2, 2, 2], [2, 4, 4]]
    thin = atrous_layout([3.0, 1.0, 1.0], [8, 64, 64], [[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2]])
    # bottleneck 8 x 16 x 16 at 3 x 4 x 4 mm, smallest extent 24 mm: radii 4, 8, 12 mm; the slice axis is capped
    # at 3 (a 7-voxel kernel in 8 slices)
    assert thin.bottleneck_size == [8, 16, 16]
    assert thin.aspp_rates == [[1, 1, 1], [3, 2, 2], [3, 3, 3]]
    flat = atrous_layout([4.0, 1.0, 1.0], [2, 64, 64], [[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2]])
    assert flat.aspp_kernel == [1, 3, 3] and all(rate[0] == 1 for rate in flat.aspp_rates)


def test_memory_count_adds_aspp_to_the_residual_count_at_the_real_strides():
    layout = atrous_layout([1.0, 1.0, 1.0], [40, 56, 40], [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]])
    features = [32, 64, 128, 256]
    residual = residual_feature_map_voxels([40, 56, 40], layout.strides, features, 3, [1, 3, 4, 6], [1, 1, 1])
    total = deeplab_feature_map_voxels([40, 56, 40], layout.strides, features, 3, [1, 3, 4, 6], [1, 1, 1],
                                       len(layout.aspp_rates))
    # the 1x1 branch, 3 dilated ones and the projection, 256 channels at 10 x 14 x 10 (pooling's is one voxel)
    assert total - residual == 5 * 256 * 10 * 14 * 10
    # the atrous stage itself: 6 residual blocks of 256 channels at 10 x 14 x 10 instead of 5 x 7 x 5
    planned = residual_feature_map_voxels([40, 56, 40], [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], features, 3,
                                          [1, 3, 4, 6], [1, 1, 1])
    assert residual - planned > 2 * 6 * 256 * (10 * 14 * 10 - 5 * 7 * 5)


@pytest.mark.parametrize("name, configuration", [("Dataset901_SynthProstate", "3d_fullres"),
                                                 ("Dataset900_SynthIsoMRI", "3d_fullres"),
                                                 ("Dataset904_Synth2D", "2d")])
def test_network_from_a_deeplab_plan_has_atrous_stages_aspp_and_the_planned_shapes(name, configuration):
    resenc = plan_experiment(load_fingerprint(REFERENCE / "fingerprints" / f"{name}.json"), preset="resenc-m")
    plan = plan_experiment(load_fingerprint(REFERENCE / "fingerprints" / f"{name}.json"), preset="deeplab")
    config = plan.configurations[configuration]
    assert config.architecture == "deeplab" and config.atrous_stages >= 1
    # the atrous stages and ASPP cost memory: more feature-map voxels per patch voxel than ResEnc M's network
    reference = resenc.configurations[configuration]
    assert config.estimated_feature_map_voxels / np.prod(config.patch_size) > \
        reference.estimated_feature_map_voxels / np.prod(reference.patch_size)
    assert config.batch_size <= reference.batch_size
    with torch.device("meta"):
        network = build_network(config, 2, 3, deep_supervision=True).train()
        outputs = network(torch.empty(1, 2, *config.patch_size))
    expected, size = [], list(config.patch_size)
    for stride in config.network_strides[:-1]:
        size = [s // k for s, k in zip(size, stride)]
        expected.append((1, 3, *size))
    assert [tuple(o.shape) for o in outputs] == expected
    deepest = [m for m in network.encoder[-1].modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert deepest[0].stride == (1,) * config.ndim
    assert all(list(c.dilation) == config.dilations[-1] for c in deepest if c.kernel_size != (1,) * config.ndim)
    assert isinstance(network.bottleneck, ASPP)
    dilated = [branch[0].dilation for branch in network.bottleneck.branches[1:]]
    assert [list(d) for d in dilated] == config.aspp_rates


def test_aspp_sees_the_whole_map_through_its_pooling_branch():
    aspp = ASPP(3, 4, [[2, 2, 2]], [3, 3, 3]).eval()
    x = torch.zeros(1, 4, 12, 12, 12)
    base = aspp(x)
    x[..., 0, 0, 0] = 50.0  # far outside the dilated kernel's reach from the opposite corner
    assert not torch.allclose(aspp(x)[..., 11, 11, 11], base[..., 11, 11, 11])


def test_deeplab_plans_from_the_cli_and_trains_with_falling_loss(tmp_path):
    # 32 voxels a side: four stages, the deepest atrous
    data = write_nnunet_dataset(tmp_path / "Dataset031_Deep", n_cases=5, shape=(32, 32, 32), spacing=(1.0, 1.0, 1.0))
    out = tmp_path / "out"
    proc = run_autoseg("plan", data, "-o", out, "--architecture", "deeplab", "--configs", "3d_fullres",
                       "--preprocess", "--workers", "1", "-q")
    assert "deeplab network" in proc.stdout
    plan = json.loads((out / "plan.json").read_text())
    config = plan["configurations"]["3d_fullres"]
    assert plan["preset"] == "deeplab" and config["architecture"] == "deeplab" and config["aspp_rates"]
    assert config["atrous_stages"] == 1
    train(out, "0", "3d_fullres", TrainOptions(epochs=4, iterations_per_epoch=8, width=0.25, batch_size=2,
                                               precision="fp32"), device="cpu", workers=0, progress=False,
          validate=False)
    fold = out / "models" / "3d_fullres" / "fold_0"
    metrics = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    state = torch.load(fold / "checkpoint_final.pt", map_location="cpu", weights_only=False)["network"]
    assert any(k.startswith("bottleneck.branches.") for k in state)


def test_preset_and_architecture_together_are_refused(tmp_path, capsys):
    from autoseg.cli import main

    data = write_nnunet_dataset(tmp_path / "Dataset032_Both", n_cases=2, shape=(8, 8, 8), spacing=(1.0, 1.0, 1.0))
    capsys.readouterr()
    assert main(["plan", str(data), "-o", str(tmp_path / "out"), "--architecture", "deeplab", "--preset", "plain"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "either --preset or --architecture" in err

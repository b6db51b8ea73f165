"""The classic families (FCN, SegNet, V-Net, UNet++, PSPNet, HRNet): each plan's memory count against the
network it builds, the output shapes in 2D, 3D and anisotropic plans, the part that defines each family, and
training with falling loss then prediction through the normal path."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from autoseg.fingerprint import load_fingerprint
from autoseg.model.cascade import cascade_classes
from autoseg.model.cost import network_cost
from autoseg.model.network import FAMILIES, build_network, supervision_weights
from autoseg.planning import plan_experiment
from autoseg.planning.presets import ARCHITECTURE_PRESETS, CLASSIC_FAMILIES
from autoseg.planning.pyramid import pyramid_bins

from conftest import REPO, run_autoseg, write_nnunet_dataset

REFERENCE = REPO / "plans" / "reference" / "fingerprints"
PLANS = [("Dataset901_SynthProstate", "3d_fullres"), ("Dataset900_SynthIsoMRI", "3d_fullres"),
         ("Dataset904_Synth2D", "2d")]
CONVOLUTIONS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _planned(family: str, name: str, configuration: str):
    plan = plan_experiment(load_fingerprint(REFERENCE / f"{name}.json"), preset=family)
    return plan.configurations[configuration], plan.label_scheme.output_channels


def _small_patch(config) -> list[int]:
    """The smallest patch the topology takes with two voxels left at the bottleneck: quick on a CPU."""
    divisible = [int(np.prod(axis)) for axis in zip(*config.pool_strides)]
    return [min(p, 2 * d) for p, d in zip(config.patch_size, divisible)]


def test_every_family_is_in_the_registry_and_has_a_preset():
    assert set(CLASSIC_FAMILIES) <= set(FAMILIES) and set(CLASSIC_FAMILIES) <= set(ARCHITECTURE_PRESETS)


@pytest.mark.parametrize("name, configuration", PLANS)
@pytest.mark.parametrize("family", CLASSIC_FAMILIES)
def test_memory_count_is_the_built_networks_feature_maps(family, name, configuration):
    """The planner's count (autoseg.planning.family_memory) is every convolution's output of the network the
    plan builds, plus the upsampled scores where the last step interpolates, for one sample."""
    config, classes = _planned(family, name, configuration)
    assert config.architecture == family
    counted = []
    # without autograd every convolution runs as its module (in CPU training a decoder stage's first one is summed
    # over its inputs' parts instead: autoseg.model.blocks.ConvNormAct); its outputs are the same maps
    with torch.device("meta"), torch.no_grad():
        network = build_network(config, 1, classes, deep_supervision=False).train()
        for module in network.modules():
            if isinstance(module, CONVOLUTIONS):
                module.register_forward_hook(lambda m, i, o: counted.append(o.numel()))
        output = network(torch.empty(2, 1, *config.patch_size))
    interpolated = output[0].numel() if family in ("pspnet", "hrnet") else 0
    assert sum(counted) // 2 + interpolated == config.estimated_feature_map_voxels


@pytest.mark.parametrize("name, configuration", PLANS)
@pytest.mark.parametrize("family", CLASSIC_FAMILIES)
def test_outputs_are_full_resolution_with_one_loss_weight_each(family, name, configuration):
    """On the meta device at the planned patch (shapes only; every family also runs for real in training below)."""
    config, classes = _planned(family, name, configuration)
    with torch.device("meta"):
        network = build_network(config, 2, classes, deep_supervision=True).train()
        x = torch.empty(1, 2, *config.patch_size)
        outputs = network(x)
        weights = supervision_weights(config)
        assert len(outputs) == len(weights) and abs(sum(weights) - 1) < 1e-9
        assert outputs[0].shape == (1, classes, *x.shape[2:])
        network.eval()
        with torch.no_grad():
            assert network(x).shape == (1, classes, *x.shape[2:])


@pytest.mark.parametrize("family", CLASSIC_FAMILIES)
def test_a_classic_family_plans_the_cascade_and_takes_its_extra_channels(family):
    """A large CT gets 3d_lowres and the cascade in the family's own network; the cascade's network reads the
    image and the first stage's one-hot segmentation (autoseg.model.cascade)."""
    plan = plan_experiment(load_fingerprint(REFERENCE / "Dataset902_SynthLargeCT.json"), preset=family)
    assert {"3d_lowres", "3d_cascade_fullres"} <= set(plan.configurations)
    classes = plan.label_scheme.output_channels
    for name in ("3d_lowres", "3d_cascade_fullres"):
        config = plan.configurations[name]
        assert config.architecture == family
        channels = len(plan.channel_names) + (cascade_classes(plan) - 1 if config.previous_stage else 0)
        with torch.device("meta"):
            output = build_network(config, channels, classes).eval()(torch.empty(1, channels, *config.patch_size))
        assert output.shape == (1, classes, *config.patch_size)


@pytest.mark.parametrize("family", CLASSIC_FAMILIES)
def test_cost_counts_the_parameters_and_a_training_steps_flops(family):
    config, classes = _planned(family, "Dataset900_SynthIsoMRI", "3d_fullres")
    cost = network_cost(config, 2, classes)
    with torch.device("meta"):
        network = build_network(config, 2, classes)
    assert cost.parameters == sum(p.numel() for p in network.parameters())
    forward = []  # 2 x multiply-accumulates of every convolution, from its shapes
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            module.register_forward_hook(lambda m, i, o: forward.append(
                2 * o.numel() * m.in_channels * np.prod(m.kernel_size) // m.groups))
        elif isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            module.register_forward_hook(lambda m, i, o: forward.append(
                2 * i[0].numel() * m.out_channels * np.prod(m.kernel_size) // m.groups))
    with torch.device("meta"), torch.no_grad():  # every convolution as its module (see the memory count above)
        network.train()(torch.empty(config.batch_size, 2, *config.patch_size))
    # backward costs two forwards (input and weight gradients), less the first layer's unneeded input gradient;
    # norms, activations, pooling and interpolation add a little
    ratio = cost.gflop_per_step * 1e9 / sum(forward)
    assert 2.5 < ratio < 3.3, ratio


def test_fcn_fuses_class_scores_from_every_depth_without_decoder_convolutions():
    config, classes = _planned("fcn", "Dataset900_SynthIsoMRI", "3d_fullres")
    network = build_network(config, 1, classes).eval()
    encoder = {id(m) for m in network.encoder.modules()}
    outside = [m for m in network.modules() if isinstance(m, CONVOLUTIONS) and id(m) not in encoder]
    assert len(outside) == config.num_stages and all(m.kernel_size == (1, 1, 1) for m in outside)
    assert all(m.out_channels == classes for m in outside)
    x = torch.randn(1, 1, *_small_patch(config))
    with torch.no_grad():
        before = network(x)
        network.scores[-1].bias.add_(1.0)  # the deepest score reaches the full-resolution output
        assert torch.allclose(network(x) - before, torch.ones_like(before), atol=1e-5)


def test_segnet_unpools_with_the_encoders_pooling_indices_and_has_no_skips():
    config, classes = _planned("segnet", "Dataset901_SynthProstate", "3d_fullres")
    network = build_network(config, 1, classes).eval()
    assert not any(isinstance(m, (nn.ConvTranspose3d, nn.ConvTranspose2d)) for m in network.modules())
    pooled, unpooled = [], []
    for pool in network.pools:
        pool.register_forward_hook(lambda m, i, o: pooled.append(o[1]))
    for unpool in network.unpools:
        unpool.register_forward_hook(lambda m, i, o: unpooled.append((i[0], i[1], o)))
    with torch.no_grad():
        network(torch.randn(1, 1, *_small_patch(config)))
    assert len(unpooled) == config.num_stages - 1
    for (values, indices, output), stored in zip(unpooled, reversed(pooled)):
        assert indices is stored  # the very tensor max pooling returned
        flat = output.flatten(2)
        assert torch.equal(flat.gather(2, indices.flatten(2)), values.flatten(2))  # each value where the max was
        assert int((flat != 0).sum()) <= indices.numel()  # and zeros everywhere else
    # no concatenation: every decoder block takes exactly the channels of the level below it
    for level, block in zip(range(config.num_stages - 1, -1, -1), network.decoder):
        assert block[0][0].in_channels == config.features_per_stage[level]


def test_vnet_learns_residuals_downsamples_by_strided_convolution_and_uses_prelu():
    config, classes = _planned("vnet", "Dataset901_SynthProstate", "3d_fullres")
    network = build_network(config, 1, classes).eval()
    assert not any(isinstance(m, (nn.MaxPool3d, nn.AvgPool3d)) for m in network.modules())
    for down, stride in zip(network.down, config.pool_strides[1:]):
        assert list(down[0].stride) == stride and list(down[0].kernel_size) == stride
    assert any(isinstance(m, nn.PReLU) for m in network.modules())
    assert not any(isinstance(m, nn.LeakyReLU) for m in network.modules())
    stage = network.encoder[1]  # with its convolutions silenced a stage passes its input on (through PReLU)
    for conv in stage.convs:
        nn.init.zeros_(conv[1].weight)
        nn.init.zeros_(conv[1].bias)
    x = torch.randn(1, config.features_per_stage[1], 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(stage(x, x), stage.act(x))
    assert network.decoder[-1].convs[0][0].in_channels == 2 * config.features_per_stage[0]  # skip concatenation


def test_unetpp_has_every_nested_node_and_prunes_at_inference():
    config, classes = _planned("unetpp", "Dataset900_SynthIsoMRI", "3d_fullres")
    network = build_network(config, 1, classes).eval()
    depth = config.num_stages - 1
    assert sorted(network.nodes) == sorted(f"{i}_{j}" for j in range(1, depth + 1) for i in range(depth - j + 1))
    # X(0, 2) concatenates X(0, 0), X(0, 1) and the upsampled X(1, 1)
    assert network.nodes["0_2"][0][0].in_channels == 3 * config.features_per_stage[0]
    ran = []
    for key, node in network.nodes.items():
        node.register_forward_hook(lambda m, i, o, key=key: ran.append(key))
    x = torch.randn(1, 1, *_small_patch(config))
    with torch.no_grad():
        full = network(x)
        assert len(ran) == depth * (depth + 1) // 2
        ran.clear()
        network.inference_depth = 1
        pruned = network(x)
    assert ran == ["0_1"] and pruned.shape == full.shape and not torch.equal(pruned, full)
    network.inference_depth = depth + 1
    with pytest.raises(ValueError, match="inference depth"):
        network(x)


def test_pspnet_pools_the_pyramid_bins_the_plan_adapted_per_axis():
    assert pyramid_bins([10, 14, 10]) == [[1, 1, 1], [2, 2, 2], [3, 3, 3], [6, 6, 6]]
    assert pyramid_bins([2, 16, 16]) == [[1, 1, 1], [2, 2, 2], [2, 3, 3], [2, 6, 6]]  # a thin axis keeps 2 bins
    assert pyramid_bins([1, 1, 1]) == [[1, 1, 1]]
    config, classes = _planned("pspnet", "Dataset900_SynthIsoMRI", "3d_fullres")
    assert config.atrous_stages >= 1 and config.pyramid_bins
    network = build_network(config, 1, classes).eval()
    assert network.encoder[-1][0][0].stride == (1, 1, 1)  # the deepest stage is dilated, not strided
    assert list(network.encoder[-1][0][0].dilation) == config.dilations[-1]
    pooled = []
    for level in network.pyramid.levels:
        level[0].register_forward_hook(lambda m, i, o: pooled.append(list(o.shape[2:])))
    with torch.no_grad():
        network(torch.randn(1, 1, *_small_patch(config)))
    assert pooled == config.pyramid_bins


def test_hrnet_keeps_parallel_streams_and_fuses_every_pair():
    config, classes = _planned("hrnet", "Dataset901_SynthProstate", "3d_fullres")
    n = config.streams
    assert n == min(4, config.num_stages - 1)
    network = build_network(config, 1, classes).eval()
    for stage, fusion in enumerate(network.fusions):
        assert len(getattr(fusion, "paths", {})) == stage * (stage + 1)  # every ordered pair of streams
    shapes = []
    # the mixing block takes the streams as a list standing for their concatenation (autoseg.model.blocks)
    network.mix.register_forward_hook(lambda m, i, o: shapes.append([part.shape for part in i[0]]))
    streams = []
    for block in network.blocks[-1]:
        block.register_forward_hook(lambda m, i, o: streams.append(list(o.shape[2:])))
    patch = _small_patch(config)
    with torch.no_grad():
        network(torch.randn(1, 1, *patch))
    expected, size = [], list(patch)
    for stride in config.pool_strides[1:n + 1]:
        size = [s // k for s, k in zip(size, stride)]
        expected.append(size)
    assert streams == expected  # stream k at planned stage k+1's resolution
    assert sum(shape[1] for shape in shapes[0]) == sum(config.features_per_stage[:n])  # HRNetV2: every stream
    assert len({tuple(shape[2:]) for shape in shapes[0]}) == 1  # ... upsampled to the first one's size


@pytest.fixture(scope="module")
def families_trained(tmp_path_factory):
    """One synthetic dataset planned with every classic family beside the U-Net, each trained a little."""
    from autoseg.planning.run import plan_dataset
    from autoseg.preprocessing import preprocess_dataset
    from autoseg.training.loop import train
    from autoseg.training.options import TrainOptions

    root = tmp_path_factory.mktemp("families")
    data = write_nnunet_dataset(root / "Dataset033_Families", n_cases=5, shape=(32, 32, 32),
                                spacing=(1.0, 1.0, 1.0))
    out = root / "out"
    plan_dataset(data, out, workers=1, configurations=("3d_fullres",), progress=False, families=CLASSIC_FAMILIES)
    preprocess_dataset(out, workers=1, progress=False)
    for family in CLASSIC_FAMILIES:
        torch.manual_seed(0)
        train(out, "0", f"3d_fullres@{family}", TrainOptions(epochs=3, iterations_per_epoch=8, width=0.25,
                                                              batch_size=2, precision="fp32"),
              device="cpu", workers=0, progress=False, validate=False)
    return data, out


@pytest.mark.parametrize("family", CLASSIC_FAMILIES)
def test_each_family_trains_with_falling_loss_and_predicts_in_the_input_geometry(families_trained, family, tmp_path):
    import nibabel as nib

    from autoseg.inference.predictor import Predictor

    data, out = families_trained
    fold = out / "models" / f"3d_fullres@{family}" / "fold_0"
    metrics = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    predictor = Predictor.load(out / "models", device="cpu", configuration=f"3d_fullres@{family}", folds=["0"],
                               mirror=False)
    image = sorted((data / "imagesTr").glob("*.nii.gz"))[0]
    segmentation = predictor.predict(image)
    assert segmentation.shape == nib.load(image).shape
    assert set(np.unique(np.asarray(segmentation.dataobj))) <= {0, 1, 2}


def test_plan_cli_builds_a_classic_family_and_reports_its_cost(tmp_path):
    data = write_nnunet_dataset(tmp_path / "Dataset034_Seg", n_cases=2, shape=(16, 16, 16), spacing=(1.0, 1.0, 1.0))
    proc = run_autoseg("plan", data, "-o", tmp_path / "out", "--architecture", "segnet", "--configs", "3d_fullres")
    assert "segnet network" in proc.stdout and "GFLOP per training step" in proc.stdout
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["preset"] == "segnet" and plan["configurations"]["3d_fullres"]["architecture"] == "segnet"


def test_unetpp_prunes_through_the_predictor_and_other_families_refuse(families_trained):
    from autoseg.errors import AutosegError
    from autoseg.inference.predictor import Predictor

    data, out = families_trained
    image = sorted((data / "imagesTr").glob("*.nii.gz"))[0]
    configuration = "3d_fullres@unetpp"
    full = Predictor.load(out / "models", device="cpu", configuration=configuration, folds=["0"], mirror=False)
    pruned = Predictor.load(out / "models", device="cpu", configuration=configuration, folds=["0"], mirror=False,
                            prune_depth=1)
    assert [n.inference_depth for n in pruned.models.models[0].networks] == [1]
    assert [n.inference_depth for n in full.models.models[0].networks] == [3]  # 32^3: four stages
    assert pruned.predict(image).shape == full.predict(image).shape
    with pytest.raises(AutosegError, match="only UNet\\+\\+ networks can be pruned"):
        Predictor.load(out / "models", device="cpu", configuration="3d_fullres@segnet", folds=["0"], prune_depth=1)
    with pytest.raises(AutosegError, match="depths 1 to 3"):
        Predictor.load(out / "models", device="cpu", configuration=configuration, folds=["0"], prune_depth=4)


def test_a_classic_family_exports_into_a_package_and_predicts_from_it(families_trained, tmp_path):
    from autoseg.inference.predictor import Predictor
    from autoseg.model.package import ExportOptions, export_package

    data, out = families_trained
    image = sorted((data / "imagesTr").glob("*.nii.gz"))[0]
    package = tmp_path / "hrnet.autoseg"
    export_package(out, package, ExportOptions(configuration="3d_fullres@hrnet", folds=["0"]))
    from_package = Predictor.load(package, device="cpu", mirror=False).predict(image)
    from_folder = Predictor.load(out / "models", device="cpu", configuration="3d_fullres@hrnet", folds=["0"],
                                 mirror=False).predict(image)
    assert np.array_equal(np.asarray(from_package.dataobj), np.asarray(from_folder.dataobj))

"""The U-Net built from plans: output shapes for 2D, 3D and anisotropic topologies; deep supervision."""
import pytest
import torch

from autoseg.fingerprint import load_fingerprint
from autoseg.planning import plan_experiment
from autoseg.model.network import build_network, deep_supervision_weights
from conftest import REPO

REFERENCE = REPO / "plans" / "reference"


def planned(name):
    return plan_experiment(load_fingerprint(REFERENCE / "fingerprints" / f"{name}.json"))


def test_hippocampus_3d_outputs_every_decoder_resolution():
    config = planned("Dataset004_Hippocampus").configurations["3d_fullres"]
    net = build_network(config, in_channels=1, num_classes=3).train()
    x = torch.randn(2, 1, *config.patch_size)
    outputs = net(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 40, 56, 40), (2, 3, 20, 28, 20), (2, 3, 10, 14, 10)]
    net.eval()
    with torch.no_grad():
        assert tuple(net(x).shape) == (2, 3, 40, 56, 40)


def test_anisotropic_plan_keeps_thick_axis_until_it_is_pooled():
    config = planned("Dataset901_SynthProstate").configurations["3d_fullres"]
    assert config.pool_strides[1] == [1, 2, 2] and config.conv_kernels[0] == [1, 3, 3]
    net = build_network(config, in_channels=2, num_classes=3).train()
    first_conv = net.encoder[0][0][0]
    assert tuple(first_conv.kernel_size) == (1, 3, 3) and tuple(first_conv.padding) == (0, 1, 1)
    size = [2 * 2 ** p for p in config.num_pools_per_axis]  # a 2-voxel bottleneck: instance norm needs > 1 voxel
    outputs = net(torch.randn(1, 2, *size))
    assert tuple(outputs[0].shape) == (1, 3, *size)
    assert tuple(outputs[1].shape) == (1, 3, size[0], size[1] // 2, size[2] // 2)  # first pool is in-plane only


def test_2d_plan_with_six_pools():
    config = planned("Dataset905_SynthCTSlices2D").configurations["2d"]
    net = build_network(config, in_channels=1, num_classes=3, deep_supervision=False).eval()
    with torch.no_grad():
        assert tuple(net(torch.randn(1, 1, 128, 128)).shape) == (1, 3, 128, 128)
    assert len(net.encoder) == 7 and net.encoder[-1][0][0].out_channels == 512


def test_features_follow_the_plan_and_skips_concatenate():
    config = planned("Dataset004_Hippocampus").configurations["3d_fullres"]
    net = build_network(config, in_channels=1, num_classes=3)
    assert [stage[0][0].out_channels for stage in net.encoder] == config.features_per_stage
    assert [stage[0][0].in_channels for stage in net.decoder] == [2 * f for f in config.features_per_stage[-2::-1]]


def test_he_initialization_scale():
    config = planned("Dataset004_Hippocampus").configurations["3d_fullres"]
    conv = build_network(config, 1, 3).encoder[2][1][0]
    fan_in = conv.in_channels * 27
    expected = (2 / (1 + 0.01 ** 2) / fan_in) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0


def test_deep_supervision_weights():
    assert deep_supervision_weights(1) == [1.0]
    w = deep_supervision_weights(4)  # 1, 1/2, 1/4, 0 normalized
    assert w == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])
    assert sum(w) == pytest.approx(1.0)


def _native(block, x):
    conv, norm, act = block
    return act(norm(conv(x)))


@pytest.mark.parametrize("chunk_elements", [2 ** 18, 500])  # one piece, or 4 of the 6 rows of 120, then 2
def test_norm_activation_keeping_only_its_output_has_pytorchs_gradients(monkeypatch, chunk_elements):
    from autoseg.model import blocks
    from autoseg.model.blocks import ConvNormAct, _NormLeakyReLU

    monkeypatch.setattr(blocks, "ROWS_CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6, 4, dtype=torch.float64, requires_grad=True)
    weight = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: _NormLeakyReLU.apply(*a, 1e-5, 0.01), (x, weight, bias))
    # float64: the conv bias's true gradient is zero (the norm removes it), and float32 leaves a
    # summation-order residue of ~1e-5 that differs between CPUs' kernels
    block = ConvNormAct(3, 2, 4, [3, 3, 3], [1, 1, 1]).double()
    with torch.no_grad():
        block[1].weight.uniform_(-2, 2)  # negative scales invert as well
        block[1].weight[block[1].weight.abs() < 0.1] = 0.5
        block[1].bias.normal_()
    x = torch.randn(2, 2, 6, 7, 5, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 4, 6, 7, 5, dtype=torch.float64)
    fused = torch.autograd.grad((block(x) * upstream).sum(), (x, *block.parameters()))
    native = torch.autograd.grad((_native(block, x) * upstream).sum(), (x, *block.parameters()))
    for a, b in zip(fused, native):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_norm_activation_keeps_one_activation_map_instead_of_two():
    from autoseg.model.blocks import ConvNormAct

    def saved_bytes(forward, x) -> int:
        saved = {}

        def pack(tensor):
            saved[id(tensor)] = tensor.numel() * tensor.element_size()
            return tensor
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            forward(x)
        return sum(saved.values())

    block = ConvNormAct(3, 8, 8, [3, 3, 3], [1, 1, 1])
    x = torch.randn(2, 8, 16, 16, 16, requires_grad=True)
    activation = x.numel() * 4
    fused, native = saved_bytes(block, x), saved_bytes(lambda t: _native(block, t), x)
    # both keep the convolution's input; the native modules also keep the convolution's output
    assert native - fused >= activation and fused < 2.1 * activation


def test_norm_activation_falls_back_where_the_output_cannot_be_inverted():
    from autoseg.model.blocks import ConvNormAct

    block = ConvNormAct(3, 2, 4, [3, 3, 3], [1, 1, 1])
    with torch.no_grad():
        block[1].weight[1] = 0.0  # that channel's output no longer holds its normalised values
    x = torch.randn(1, 2, 6, 6, 6, requires_grad=True)
    grads = torch.autograd.grad(block(x).square().sum(), (x, block[1].weight))
    reference = torch.autograd.grad(_native(block, x).square().sum(), (x, block[1].weight))
    for a, b in zip(grads, reference):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # prediction: PyTorch's modules, bit for bit
        assert torch.equal(block(x), _native(block, x))


@pytest.mark.parametrize("ndim", [2, 3])
def test_a_stage_on_concatenated_parts_matches_the_concatenation_and_does_not_keep_it(ndim):
    from autoseg.model.blocks import conv_stage

    torch.manual_seed(0)
    stage = conv_stage(ndim, 6, 4, [3] * ndim, [1] * ndim, 2)
    shape = (2, 8, 9, 7)[:ndim + 1]
    parts = [torch.randn(2, 4, *shape[1:], requires_grad=True), torch.randn(2, 2, *shape[1:], requires_grad=True)]
    upstream = torch.randn(2, 4, *shape[1:])

    def run(forward):
        saved = {}

        def pack(tensor):
            saved[id(tensor)] = tuple(tensor.shape)
            return tensor
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = forward()
        grads = torch.autograd.grad((out * upstream).sum(), (*parts, *stage.parameters()))
        return out.detach(), grads, set(saved.values())

    split_out, split_grads, split_saved = run(lambda: stage(parts))
    cat_out, cat_grads, cat_saved = run(lambda: stage(torch.cat(parts, dim=1)))
    torch.testing.assert_close(split_out, cat_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(split_grads, cat_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # each part is kept at its own size (in the network the skip is kept anyway), never their concatenation
    concatenation = (2, 6, *shape[1:])
    assert concatenation in cat_saved and concatenation not in split_saved
    assert {tuple(p.shape) for p in parts} <= split_saved
    with torch.no_grad():  # prediction: the concatenation, as before
        assert torch.equal(stage(parts), stage(torch.cat(parts, dim=1)))

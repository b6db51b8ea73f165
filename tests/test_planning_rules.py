"""Planner rules on hand-computed cases and on synthetic fingerprints designed to trigger each rule."""
import numpy as np
import pytest

from autoseg.fingerprint import FINGERPRINT_VERSION, CaseFingerprint, Fingerprint, IntensityStats
from autoseg.planning import plan_experiment
from autoseg.planning.memory import feature_map_voxels
from autoseg.planning.spacing import target_spacing, transpose_for
from autoseg.planning.topology import pool_and_conv_layout


def make_fingerprint(spacings, shapes, channel_names=None, crop_ratio=1.0, labels=None) -> Fingerprint:
    cases = [CaseFingerprint(f"c{i}", "RAS", [float(s) for s in sp], [int(x) for x in sh], [int(x) for x in sh],
                             [[0, int(x)] for x in sh], crop_ratio) for i, (sp, sh) in enumerate(zip(spacings, shapes))]
    channel_names = channel_names or {"0": "MRI"}
    stats = [IntensityStats(100.0, 20.0, 95.0, -1000.0, 3000.0, -50.0, 400.0, 1000) for _ in channel_names]
    return Fingerprint(FINGERPRINT_VERSION, "synthetic", "/nowhere", "nnunet", channel_names,
                       labels or {"background": 0, "a": 1, "b": 2}, ".nii.gz", "RAS", cases, stats)


def jitter(rng, n, centre, rel):
    return [[c * (1 + rng.uniform(-rel, rel)) for c in centre] for _ in range(n)]


def test_topology_hand_computed_anisotropic():
    topo = pool_and_conv_layout([3.6, 0.6, 0.6], [20, 320, 320])
    assert topo.num_pools_per_axis == [2, 6, 6]
    assert topo.pool_strides == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert topo.conv_kernels == [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    assert topo.patch_size == [20, 320, 320] and topo.divisible_by == [4, 64, 64]


def test_topology_pads_patch_to_divisibility():
    topo = pool_and_conv_layout([1.0, 1.0, 1.0], [36, 50, 35])
    assert topo.num_pools_per_axis == [3, 3, 3]
    assert topo.patch_size == [40, 56, 40]


def test_topology_caps_pools_at_six_per_axis():
    assert pool_and_conv_layout([0.7, 0.7], [512, 512]).num_pools_per_axis == [6, 6]
    assert pool_and_conv_layout([0.7, 0.7], [512, 512], max_pools=99).num_pools_per_axis == [7, 7]


def test_topology_lone_axis_needs_three_times_min_edge():
    # only the long axis can still be pooled; at 10 (< 12) it stops instead of pooling alone
    topo = pool_and_conv_layout([1.0, 1.0], [80, 8])
    assert topo.num_pools_per_axis == [3, 1]


def test_memory_model_hand_computed():
    # stage sizes 8^3 and 4^3; encoder 2*32*512 + 2*64*64, decoder 2*32*512 + 32*512 (transposed conv) + 3*512
    assert feature_map_voxels([8, 8, 8], [[1, 1, 1], [2, 2, 2]], [32, 64], num_classes=3) == 91648
    # three stages (8^3, 4^3, 2^3): encoder 2*32*512 + 2*64*64 + 2*128*8 = 43008; decoder at 4^3:
    # 2*64*64 + 64*64 = 12288; at 8^3: 50688 as above; deep supervision adds a 3*64 head at 4^3
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert feature_map_voxels([8, 8, 8], strides, [32, 64, 128], num_classes=3) == 105984
    assert feature_map_voxels([8, 8, 8], strides, [32, 64, 128], num_classes=3, deep_supervision=True) == 106176


def test_target_spacing_median_when_isotropic():
    spacings = np.array([[1.0, 1.0, 1.0], [1.2, 0.9, 0.9], [0.8, 1.1, 1.0]])
    np.testing.assert_allclose(target_spacing(spacings, np.full((3, 3), 50)), [1.0, 1.0, 1.0])


def test_target_spacing_anisotropy_rule_uses_10th_percentile():
    z = np.linspace(2.0, 5.0, 11)
    spacings = np.stack([z, np.full(11, 0.6), np.full(11, 0.6)], axis=1)
    shapes = np.tile([20, 320, 320], (11, 1))
    expected = np.percentile(z, 10)
    np.testing.assert_allclose(target_spacing(spacings, shapes), [expected, 0.6, 0.6])
    # without few slices the rule does not apply (anisotropic spacing alone is not enough)
    np.testing.assert_allclose(target_spacing(spacings, np.tile([200, 320, 320], (11, 1))), [np.median(z), 0.6, 0.6])


def test_target_spacing_never_finer_than_other_axes():
    z = np.array([0.5] * 3 + [5.0] * 8)  # 10th percentile would be finer than in-plane
    spacings = np.stack([z, np.full(11, 1.0), np.full(11, 1.0)], axis=1)
    result = target_spacing(spacings, np.tile([10, 300, 300], (11, 1)))
    assert result[0] == pytest.approx(1.0 + 1e-5)


def test_transpose_moves_coarsest_axis_first():
    forward, backward = transpose_for([0.7, 0.7, 5.0])
    assert forward == [2, 0, 1] and backward == [1, 2, 0]
    assert [forward[b] for b in backward] == [0, 1, 2]


def check_invariants(plan):
    for c in plan.configurations.values():
        assert all(p % d == 0 for p, d in zip(c.patch_size, [2 ** n for n in c.num_pools_per_axis]))
        assert max(c.num_pools_per_axis) <= 6
        assert c.batch_size >= 2
        assert len(c.pool_strides) == len(c.conv_kernels) == len(c.features_per_stage)
        assert c.features_per_stage[0] == 32 and max(c.features_per_stage) <= (512 if c.ndim == 2 else 320)
        assert c.conv_kernels[-1] == [3] * c.ndim


def test_isotropic_small_mri():
    rng = np.random.default_rng(0)
    fp = make_fingerprint(jitter(rng, 40, [1.0, 1.0, 1.0], 0.05), jitter(rng, 40, [64, 96, 80], 0.1))
    plan = plan_experiment(fp)
    check_invariants(plan)
    assert set(plan.configurations) == {"2d", "3d_fullres"}
    full = plan.configurations["3d_fullres"]
    assert full.conv_kernels[0] == [3, 3, 3] and full.batch_dice is False
    # the patch covers the median image: the memory budget is not the limit here
    assert all(p >= m for p, m in zip(full.patch_size, full.median_shape))
    assert plan.normalization[0].scheme == "zscore" and not plan.normalization[0].use_nonzero_mask


def test_anisotropic_prostate_like():
    rng = np.random.default_rng(1)
    spacings = [[rng.uniform(3.0, 4.0), 0.6, 0.6] for _ in range(32)]
    shapes = jitter(rng, 32, [20, 320, 320], 0.1)
    fp = make_fingerprint(spacings, shapes, channel_names={"0": "T2", "1": "ADC"}, crop_ratio=0.6)
    plan = plan_experiment(fp)
    check_invariants(plan)
    full = plan.configurations["3d_fullres"]
    assert plan.transpose_forward == [0, 1, 2]
    assert full.spacing[0] == pytest.approx(np.percentile([s[0] for s in spacings], 10))
    assert full.conv_kernels[0] == [1, 3, 3]  # no convolution across thick slices at full resolution
    assert full.pool_strides[1] == [1, 2, 2]
    assert full.num_pools_per_axis[0] < full.num_pools_per_axis[1]
    assert [n.use_nonzero_mask for n in plan.normalization] == [True, True]  # cropping removed 40%


def test_anisotropic_axis_last_is_transposed_first():
    rng = np.random.default_rng(2)
    spacings = [[0.6, 0.6, rng.uniform(3.0, 4.0)] for _ in range(20)]
    fp = make_fingerprint(spacings, jitter(rng, 20, [320, 320, 20], 0.1))
    plan = plan_experiment(fp)
    assert plan.transpose_forward == [2, 0, 1] and plan.transpose_backward == [1, 2, 0]
    assert plan.configurations["3d_fullres"].spacing[0] > 3 * plan.configurations["3d_fullres"].spacing[1]
    assert plan.configurations["2d"].spacing == pytest.approx([0.6, 0.6])


def test_large_ct_gets_lowres_and_cascade():
    rng = np.random.default_rng(3)
    fp = make_fingerprint(jitter(rng, 40, [1.0, 0.78, 0.78], 0.1), jitter(rng, 40, [400, 512, 512], 0.05),
                          channel_names={"0": "CT"})
    plan = plan_experiment(fp)
    check_invariants(plan)
    assert list(plan.configurations) == ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
    full, low, cascade = (plan.configurations[n] for n in ("3d_fullres", "3d_lowres", "3d_cascade_fullres"))
    assert all(l > f for l, f in zip(low.spacing, full.spacing))
    assert np.prod(low.median_shape) * 2 <= np.prod(full.median_shape)
    assert np.prod(full.patch_size) < 0.25 * np.prod(full.median_shape)
    assert cascade.previous_stage == "3d_lowres" and low.next_stage == "3d_cascade_fullres"
    assert cascade.patch_size == full.patch_size and cascade.spacing == full.spacing
    assert full.batch_dice and not low.batch_dice
    ct = plan.normalization[0]
    assert (ct.scheme, ct.clip_low, ct.clip_high, ct.mean, ct.std) == ("ct", -50.0, 400.0, 100.0, 20.0)
    # 512x512 slices: 2d pools six times per axis, never seven
    assert plan.configurations["2d"].num_pools_per_axis == [6, 6]


def test_more_gpu_memory_means_larger_patches():
    rng = np.random.default_rng(3)
    fp = make_fingerprint(jitter(rng, 40, [1.0, 0.78, 0.78], 0.1), jitter(rng, 40, [400, 512, 512], 0.05))
    small, large = plan_experiment(fp, 8), plan_experiment(fp, 40)
    assert np.prod(large.configurations["3d_fullres"].patch_size) > np.prod(small.configurations["3d_fullres"].patch_size)


def test_2d_only_dataset_has_no_3d_configuration():
    rng = np.random.default_rng(4)
    fp = make_fingerprint([[999.0, 0.5, 0.5]] * 30, [[1] + s[1:] for s in jitter(rng, 30, [1, 256, 320], 0.05)])
    plan = plan_experiment(fp)
    check_invariants(plan)
    assert list(plan.configurations) == ["2d"]
    assert plan.configurations["2d"].spacing == [0.5, 0.5]


def test_requested_configurations_only():
    rng = np.random.default_rng(3)
    fp = make_fingerprint(jitter(rng, 40, [1.0, 0.78, 0.78], 0.1), jitter(rng, 40, [400, 512, 512], 0.05))
    assert list(plan_experiment(fp, configurations=("3d_fullres",)).configurations) == ["3d_fullres"]
    # the cascade needs its low-resolution stage
    assert list(plan_experiment(fp, configurations=("3d_cascade_fullres",)).configurations) == [
        "3d_lowres", "3d_cascade_fullres"]

"""Checks of a scan against the training summary: each rule fires on a crafted scan, and not on realistic ones."""
import dataclasses
import json

import numpy as np
import pytest

from autoseg.dataset import load_dataset, read_case
from autoseg.errors import AutosegError
from autoseg.fingerprint import FINGERPRINT_VERSION, CaseFingerprint, Fingerprint, IntensityStats, compute_fingerprint
from autoseg.jsonio import from_dict, to_dict
from autoseg.model.input_checks import (MAX_SAMPLE_VOXELS, SUMMARY_VERSION, TrainingSummary, _subsample,
                                        check_scan, summary_from_dict, training_summary)
from autoseg.planning import plan_experiment
from autoseg.planning.plan_types import PLAN_VERSION, ChannelNormalization, Plan, Resampling
from conftest import write_nnunet_dataset

NAME = "/in/scan_0000.nii.gz"
CT_SPACINGS = [(2.5, 0.8, 0.8), (1.25, 0.7, 0.7), (1.8, 0.9, 0.9)]
CT_SHAPES = [(40, 96, 96), (80, 128, 128), (30, 96, 96)]


def _make(cls, **kwargs):
    """A dataclass by keyword, with an orientation where the class has one (fingerprint version 2)."""
    if "orientation" in {f.name for f in dataclasses.fields(cls)}:
        kwargs.setdefault("orientation", "RAS")
    return cls(**kwargs)


def make_fingerprint(spacings, shapes, stats) -> Fingerprint:
    cases = [_make(CaseFingerprint, case_id=f"c{i}", spacing=list(map(float, sp)), shape_before_crop=list(sh),
                   shape_after_crop=list(sh), nonzero_bbox=[[0, s] for s in sh], relative_size_after_crop=1.0)
             for i, (sp, sh) in enumerate(zip(spacings, shapes))]
    return _make(Fingerprint, version=FINGERPRINT_VERSION, dataset_name="synthetic", dataset_dir="/nowhere",
                 layout="nnunet", channel_names={str(i): f"ch{i}" for i in range(len(stats))},
                 labels={"background": 0, "a": 1}, file_ending=".nii.gz", cases=cases, foreground_intensity=stats)


def make_plan(rules) -> Plan:
    return _make(Plan, version=PLAN_VERSION, dataset_name="synthetic", fingerprint_file="fingerprint.json",
                 gpu_memory_gb=8.0, transpose_forward=[0, 1, 2], transpose_backward=[0, 1, 2],
                 original_median_spacing=[1.8, 0.8, 0.8], original_median_shape=[40.0, 96.0, 96.0],
                 channel_names={str(i): r.channel for i, r in enumerate(rules)}, labels={"background": 0, "a": 1},
                 normalization=rules, resampling=Resampling())


@pytest.fixture
def ct_summary() -> TrainingSummary:
    stats = [IntensityStats(60.0, 40.0, 55.0, -500.0, 2000.0, -80.0, 400.0, 1000)]
    rules = [ChannelNormalization("CT", "ct", False, -80.0, 400.0, 60.0, 40.0)]
    return training_summary(make_fingerprint(CT_SPACINGS, CT_SHAPES, stats), make_plan(rules))


def mr_summary(scheme="zscore", mask=False, fg_min=0.0) -> TrainingSummary:
    stats = [IntensityStats(300.0, 80.0, 290.0, fg_min, 900.0, 120.0, 600.0, 1000)]
    rules = [ChannelNormalization("T2", scheme, mask)]
    return training_summary(make_fingerprint(CT_SPACINGS, CT_SHAPES, stats), make_plan(rules))


def realistic_ct(shape=(40, 96, 96), seed=0) -> np.ndarray:
    """Air around a body (soft tissue, a fat rim, lungs, bone), -3024 outside the round field of view."""
    rng = np.random.default_rng(seed)
    _, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    cy, cx = shape[1] / 2, shape[2] / 2
    r = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    ct = rng.normal(-1000, 15, shape)
    body = ((y - cy) / 0.36 / shape[1]) ** 2 + ((x - cx) / 0.42 / shape[2]) ** 2 < 1
    ct[body] = rng.normal(40, 15, body.sum())
    rim = body & (((y - cy) / 0.33 / shape[1]) ** 2 + ((x - cx) / 0.39 / shape[2]) ** 2 >= 1)
    ct[rim] = rng.normal(-100, 15, rim.sum())
    side = np.abs(x - cx) / shape[2]
    lungs = body & (side > 0.08) & (side < 0.3) & (np.abs(y - cy) < shape[1] * 0.2)
    ct[lungs] = rng.normal(-850, 40, lungs.sum())
    bone = np.sqrt((y - cy - shape[1] * 0.25) ** 2 + (x - cx) ** 2) < shape[1] * 0.06
    ct[bone] = rng.normal(1000, 200, bone.sum())
    ct[r > min(cy, cx)] = -3024  # padding outside the field of view, about 21% of the voxels
    return np.round(ct).astype(np.float32)[None]


def mr_like(shape=(40, 96, 96), seed=0, scale=1.0) -> np.ndarray:
    """Zero background around a head-like ellipsoid of positive intensities."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) if s > 1 else np.zeros(1) for s in shape], indexing="ij")
    inside = z ** 2 / 0.9 + y ** 2 / 0.7 + x ** 2 / 0.6 < 1
    image = np.where(inside, rng.normal(300, 60, shape).clip(5, None), 0.0) * scale
    return image.astype(np.float32)[None]


def only(lines: list[str], *fragments: str) -> str:
    assert len(lines) == 1, lines
    assert lines[0].startswith(NAME + ": "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "\n" not in lines[0]
    return lines[0]


def test_summary_from_fingerprint_and_plan(ct_summary):
    s = ct_summary
    assert s.version == SUMMARY_VERSION and s.num_channels == 1 and s.num_training_cases == 3
    assert s.channel_names == ["CT"] and s.channel_schemes == ["ct"] and s.channel_nonzero_mask == [False]
    assert s.spacing_min == [1.25, 0.7, 0.7] and s.spacing_max == [2.5, 0.9, 0.9]
    assert s.spacing_median == [1.8, 0.8, 0.8]
    assert s.shape_min == [30, 96, 96] and s.shape_max == [80, 128, 128]
    fg = s.foreground_intensity[0]
    assert (fg.percentile_00_5, fg.percentile_99_5, fg.mean, fg.std, fg.min, fg.max) == (-80, 400, 60, 40, -500, 2000)


def test_summary_round_trips_through_json(ct_summary):
    data = json.loads(json.dumps(to_dict(ct_summary)))
    assert from_dict(TrainingSummary, data) == ct_summary
    assert summary_from_dict(data) == ct_summary
    with pytest.raises(AutosegError, match="version 2"):
        summary_from_dict({**data, "version": 2})


def test_summary_refuses_plan_and_fingerprint_disagreeing_on_channels():
    stats = [IntensityStats(0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 10)] * 2
    with pytest.raises(AutosegError, match="channel"):
        training_summary(make_fingerprint(CT_SPACINGS, CT_SHAPES, stats),
                         make_plan([ChannelNormalization("CT", "ct", False, 0.0, 1.0, 0.0, 1.0)]))


def test_realistic_ct_passes(ct_summary):
    image = realistic_ct()
    padding = (image == -3024).mean()
    assert 0.15 < padding < 0.5
    assert check_scan(image, (2.5, 0.8, 0.8), ct_summary, name=NAME) == []


def test_ct_clipped_at_minus_1024_with_metal_passes(ct_summary):
    image = realistic_ct(seed=1)
    image = np.maximum(image, -1024)  # scanners that clip air at -1024 (and the padding with it)
    image[0, 20, 70:73, 45:48] = 20000  # a small implant on an extended HU scale
    assert check_scan(image, (2.5, 0.8, 0.8), ct_summary, name=NAME) == []


def test_matching_mr_passes_whatever_its_scale():
    summary = mr_summary()
    assert check_scan(mr_like(), (2.0, 0.8, 0.8), summary, name=NAME) == []
    # per-scan z-scoring absorbs scale: 100x brighter than the training foreground is fine
    assert check_scan(mr_like(scale=100.0), (2.0, 0.8, 0.8), summary, name=NAME) == []


def test_channel_count(ct_summary):
    image = np.concatenate([realistic_ct(), realistic_ct(seed=1)])
    only(check_scan(image, (2.5, 0.8, 0.8), ct_summary, name=NAME), "2 channel(s)", "trained on 1 (CT)")


def test_spacing_bounds_are_inclusive(ct_summary):
    image = realistic_ct()
    # largest training spacing along axis 0 is 2.5, smallest along axis 1 is 0.7
    assert check_scan(image, (5.0, 0.8, 0.8), ct_summary, name=NAME) == []
    assert check_scan(image, (2.5, 0.35, 0.8), ct_summary, name=NAME) == []
    line = only(check_scan(image, (5.025, 0.8, 0.8), ct_summary, name=NAME),
                "spacing 5.03 mm along axis 0 (z)", "2x the largest training spacing (2.5 mm)", "0.625 to 5 mm")
    assert "smallest" not in line
    only(check_scan(image, (2.5, 0.8, 0.3), ct_summary, name=NAME),
         "spacing 0.3 mm along axis 2 (x)", "smallest training spacing (0.7 mm)")
    only(check_scan(image, (2.5, 0.0, 0.8), ct_summary, name=NAME), "axis 1 (y)", "not a positive number")


def test_image_size_far_outside_training(ct_summary):
    spacing, ct = (2.5, 0.8, 0.8), realistic_ct()
    only(check_scan(ct[:, :2], spacing, ct_summary, name=NAME), "only 2 voxel(s) along axis 0 (z)", "30 to 80")
    assert check_scan(ct[:, :8], spacing, ct_summary, name=NAME) == []  # 30 / 4 = 7.5
    only(check_scan(ct[:, :7], spacing, ct_summary, name=NAME), "7 voxels along axis 0 (z)", "under 1/4")
    only(check_scan(ct[:, :, 38:58], spacing, ct_summary, name=NAME),
         "20 voxels along axis 1 (y)", "smallest training size (96)")
    wide = np.pad(ct, ((0, 0), (0, 0), (0, 0), (212, 212)), constant_values=-1000)
    only(check_scan(wide, spacing, ct_summary, name=NAME),
         "520 voxels along axis 2 (x)", "4.1x the largest training size (128)")
    assert check_scan(wide[..., :512], spacing, ct_summary, name=NAME) == []


def test_thin_axis_not_flagged_when_training_was_thin():
    stats = [IntensityStats(300.0, 80.0, 290.0, 0.0, 900.0, 120.0, 600.0, 1000)]
    summary = training_summary(make_fingerprint([(1.0, 0.8, 0.8)] * 2, [(1, 96, 96), (1, 128, 128)], stats),
                               make_plan([ChannelNormalization("T2", "zscore", False)]))
    assert check_scan(mr_like((1, 96, 96)), (1.0, 0.8, 0.8), summary, name=NAME) == []


def test_constant_empty_and_non_finite_channels(ct_summary):
    spacing = (2.5, 0.8, 0.8)
    only(check_scan(np.full((1, 40, 96, 96), -1024, np.float32), spacing, ct_summary, name=NAME),
         "channel 0 (CT)", "constant", "-1.02e+03")
    empty = np.zeros((1, 40, 96, 96), np.float32)
    empty[0, 20, 40, 40:45] = 300
    only(check_scan(empty, spacing, mr_summary(), name=NAME), "channel 0 (T2)", "all but 5 of 368640 voxels are 0")
    broken = mr_like()
    broken[0, 3, 3, 3] = np.nan
    only(check_scan(broken, spacing, mr_summary(), name=NAME), "channel 0 (T2)", "NaN")


def test_mr_under_ct_summary_warns(ct_summary):
    only(check_scan(mr_like(), (2.5, 0.8, 0.8), ct_summary, name=NAME),
         "channel 0 (CT)", "no voxel below -200 HU", "looks like an MR")


def test_ct_without_rescale_intercept_warns(ct_summary):
    raw = realistic_ct(seed=2)
    inside = raw > -2000
    raw[inside] += 1024  # stored values, intercept -1024 never applied
    raw[~inside] = -2000
    only(check_scan(raw, (2.5, 0.8, 0.8), ct_summary, name=NAME), "no voxel below -200 HU", "rescale intercept")


def test_normalised_ct_warns(ct_summary):
    ct = realistic_ct()
    rescaled = (ct - ct.min()) / (ct.max() - ct.min())
    only(check_scan(rescaled, (2.5, 0.8, 0.8), ct_summary, name=NAME), "channel 0 (CT)", "normalised")
    zscored = (ct - ct.mean()) / ct.std()
    only(check_scan(zscored, (2.5, 0.8, 0.8), ct_summary, name=NAME), "normalised")


def test_ct_padding_over_half_warns(ct_summary):
    ct = realistic_ct()
    ct[0, :, :, :60] = -32768
    only(check_scan(ct, (2.5, 0.8, 0.8), ct_summary, name=NAME), "channel 0 (CT)", "padding value -3.28e+04")


def test_ct_in_wrong_units_warns(ct_summary):
    ct = realistic_ct()
    body = ct > -500
    ct[body] *= 10  # tissue and bone ten times too bright; air and padding untouched
    only(check_scan(ct, (2.5, 0.8, 0.8), ct_summary, name=NAME), "99.5th percentile", "above 4000 HU")


def test_int16_padding_in_mr_warns():
    mr = mr_like()
    mr[0, :, :3] = -32768  # a padded band: about 3% of the voxels
    only(check_scan(mr, (2.0, 0.8, 0.8), mr_summary(), name=NAME), "channel 0 (T2)", "-32768", "padding value")


def test_negative_mr_noted_only_when_normalised_over_nonzero_mask():
    shifted = mr_like() - 100.0  # background -100 instead of 0
    only(check_scan(shifted, (2.0, 0.8, 0.8), mr_summary(mask=True), name=NAME), "channel 0 (T2)", "negative")
    assert check_scan(shifted, (2.0, 0.8, 0.8), mr_summary(mask=False), name=NAME) == []
    assert check_scan(shifted, (2.0, 0.8, 0.8), mr_summary(mask=True, fg_min=-50.0), name=NAME) == []


def test_unnormalised_channel_on_another_scale_warns():
    summary = mr_summary(scheme="none")
    assert check_scan(mr_like(), (2.0, 0.8, 0.8), summary, name=NAME) == []
    only(check_scan(mr_like(scale=1 / 300), (2.0, 0.8, 0.8), summary, name=NAME), "do not overlap", "120 to 600")
    # rescale_0_1 normalises per scan: the same scan is fine there
    assert check_scan(mr_like(scale=1 / 300), (2.0, 0.8, 0.8), mr_summary(scheme="rescale_0_1"), name=NAME) == []


def test_subsample_bounded_for_a_large_ct():
    big = np.broadcast_to(np.float32(0), (300, 512, 512))  # no memory: a view
    n = _subsample(big).size
    assert MAX_SAMPLE_VOXELS / 8 < n <= MAX_SAMPLE_VOXELS


def test_bad_arguments_raise(ct_summary):
    with pytest.raises(ValueError, match="shape"):
        check_scan(np.zeros((40, 96, 96)), (2.5, 0.8, 0.8), ct_summary, name=NAME)
    with pytest.raises(ValueError, match="spacings"):
        check_scan(realistic_ct(), (0.8, 0.8), ct_summary, name=NAME)


def test_summary_of_a_real_fingerprint_accepts_its_own_cases(tmp_path):
    root = write_nnunet_dataset(tmp_path / "ds", n_cases=3, spacing=(2.0, 1.0, 1.0))
    fingerprint = compute_fingerprint(root, workers=1, progress=False)
    summary = training_summary(fingerprint, plan_experiment(fingerprint))
    assert summary.spacing_min == [2.0, 1.0, 1.0] and summary.shape_max == [12, 16, 14]
    dataset = load_dataset(root)
    data, problems = read_case(dataset, dataset.cases[0])
    assert not problems
    assert check_scan(data.image, data.geometry.spacing, summary, name=str(dataset.cases[0].image_files[0])) == []
    lines = check_scan(data.image, (4.5, 1.0, 1.0), summary, name="x.nii.gz")
    assert len(lines) == 1 and lines[0].startswith("x.nii.gz: spacing 4.5 mm along axis 0 (z)")

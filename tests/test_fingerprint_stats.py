"""Foreground intensity statistics weighted equally per case (as nnU-Net v2), and the z-score mask.

The expected values are computed here from the arrays the test writes, not by autoseg's code:
the equal-weight distribution is the average of the per-case empirical distributions, and the
tolerances are the standard errors of an n-sample estimate (autoseg/fingerprint.py docstring).
"""
import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage

from autoseg.dataset import load_dataset, read_case
from autoseg.errors import AutosegError
from autoseg.fingerprint import (FINGERPRINT_VERSION, compute_fingerprint, foreground_samples, load_fingerprint,
                                 save_fingerprint)
from autoseg.planning import plan_experiment
from autoseg.planning.plan_types import ChannelNormalization
from autoseg.preprocessing import preprocess_case
from conftest import REPO, write_image

SHAPE = (12, 20, 20)
# case id: (foreground voxels, foreground mean); "b" has 10x the foreground of "a"
CASES = {"a": (150, 1000.0), "b": (1500, 100.0), "c": (600, 400.0)}
PER_CASE = 100_000  # values drawn per case in these tests


def _write_case(root, name, n_foreground, mean, rng):
    image = np.zeros(SHAPE, np.float32)
    image[1:-1, 1:-1, 1:-1] = rng.normal(50.0, 5.0, (SHAPE[0] - 2, SHAPE[1] - 2, SHAPE[2] - 2))
    label = np.zeros(SHAPE, np.uint8)
    interior = np.zeros(SHAPE, bool)
    interior[1:-1, 1:-1, 1:-1] = True
    label[np.unravel_index(np.flatnonzero(interior)[:n_foreground], SHAPE)] = 1
    image[label > 0] = rng.normal(mean, 20.0, n_foreground).astype(np.float32)
    write_image(root / "imagesTr" / f"{name}_0000.nii.gz", image)
    write_image(root / "labelsTr" / f"{name}.nii.gz", label)
    return image[label > 0].astype(np.float64)


def _dataset(root, cases=CASES, seed=0):
    """Writes the cases; returns {case id: its foreground values as written (float32 -> float64)}."""
    rng = np.random.default_rng(seed)
    values = {name: _write_case(root, name, n, mean, rng) for name, (n, mean) in cases.items()}
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, "numTraining": len(cases),
        "file_ending": ".nii.gz"}))
    return values


def _mixture_cdf(per_case: list[np.ndarray], q: float) -> tuple[float, float]:
    """(P(X < q), P(X <= q)) under the equal-weight mixture of the cases' empirical distributions."""
    below = np.mean([np.mean(v < q) for v in per_case])
    at_or_below = np.mean([np.mean(v <= q) for v in per_case])
    return float(below), float(at_or_below)


def _assert_percentile(per_case, q, p, n, sigmas=5.0):
    """q estimates the p-quantile of the mixture within `sigmas` standard errors of an n-sample estimate in rank."""
    tol = sigmas * np.sqrt(p * (1 - p) / n)
    below, at_or_below = _mixture_cdf(per_case, q)
    assert below <= p + tol and at_or_below >= p - tol, (q, p, below, at_or_below, tol)


def test_statistics_weight_every_case_equally(tmp_path):
    per_case = list(_dataset(tmp_path).values())
    fp = compute_fingerprint(tmp_path, workers=1, progress=False, intensity_samples=len(per_case) * PER_CASE)
    stats, = fp.foreground_intensity
    n = len(per_case) * PER_CASE
    assert fp.samples_per_case_cap == PER_CASE and stats.num_samples == n

    means = np.array([v.mean() for v in per_case])
    variances = np.array([v.var() for v in per_case])
    equal_weight_mean = means.mean()
    voxel_pooled_mean = np.concatenate(per_case).mean()
    # stratified sampling: var(estimate) = sum(var_i / m) / N^2
    se_mean = np.sqrt(variances.sum() / PER_CASE) / len(per_case)
    assert abs(stats.mean - equal_weight_mean) <= 5 * se_mean
    assert abs(stats.mean - voxel_pooled_mean) > 1000 * se_mean  # the old per-voxel weighting is far off

    mixture_var = (variances + means ** 2).mean() - equal_weight_mean ** 2
    assert stats.std == pytest.approx(np.sqrt(mixture_var), rel=5e-3)
    for q, p in ((stats.percentile_00_5, 0.005), (stats.median, 0.5), (stats.percentile_99_5, 0.995)):
        _assert_percentile(per_case, q, p, n)
    # min and max are extremes of the drawn values, so inside the foreground range
    everything = np.concatenate(per_case)
    assert everything.min() <= stats.min <= stats.max <= everything.max()


def test_small_case_drawn_with_replacement_to_the_same_count():
    image = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6)
    label = np.zeros((4, 5, 6), np.uint8)
    label[1, 2, 3:5] = 1  # two foreground voxels, far fewer than the draw
    channels = foreground_samples(image, label, 1000, "tiny")
    for channel, values in zip(channels, image):
        assert channel.shape == (1000,) and channel.dtype == np.float32
        assert set(np.unique(channel)) == set(values[label > 0])
        assert 400 < np.count_nonzero(channel == values[label > 0][0]) < 600  # both voxels drawn about equally
    again = foreground_samples(image, label, 1000, "tiny")
    assert all(np.array_equal(a, b) for a, b in zip(channels, again))  # seeded by the case id
    assert not np.array_equal(foreground_samples(image, label, 1000, "other")[0], channels[0])


def test_statistics_do_not_depend_on_worker_count(tmp_path):
    _dataset(tmp_path)
    one = compute_fingerprint(tmp_path, workers=1, progress=False, intensity_samples=30_000)
    two = compute_fingerprint(tmp_path, workers=2, progress=False, intensity_samples=30_000)
    assert one.foreground_intensity == two.foreground_intensity


def test_case_without_foreground_contributes_nothing(tmp_path):
    with_empty = dict(CASES, d_empty=(0, 0.0))
    _dataset(tmp_path / "three")
    _dataset(tmp_path / "four", with_empty)
    m = 20_000
    three = compute_fingerprint(tmp_path / "three", workers=1, progress=False, intensity_samples=3 * m)
    four = compute_fingerprint(tmp_path / "four", workers=1, progress=False, intensity_samples=4 * m)
    assert three.samples_per_case_cap == four.samples_per_case_cap == m
    # same cases, same seeds, same count each: the empty case adds no value and takes no weight
    assert four.foreground_intensity[0].num_samples == 3 * m
    for field in dataclasses.fields(three.foreground_intensity[0]):
        assert getattr(four.foreground_intensity[0], field.name) == pytest.approx(
            getattr(three.foreground_intensity[0], field.name), rel=1e-12), field.name
    image = np.ones((1, 3, 3, 3), np.float32)
    assert foreground_samples(image, np.zeros((3, 3, 3), np.uint8), 50, "x")[0].size == 0


def test_fingerprint_of_the_previous_version_is_refused(tmp_path):
    _dataset(tmp_path / "data")
    fp = compute_fingerprint(tmp_path / "data", workers=1, progress=False, intensity_samples=3000)
    path = tmp_path / "fingerprint.json"
    save_fingerprint(fp, path)
    assert load_fingerprint(path).foreground_intensity == fp.foreground_intensity
    data = json.loads(path.read_text())
    data["version"] = FINGERPRINT_VERSION - 1
    path.write_text(json.dumps(data))
    with pytest.raises(AutosegError) as e:
        load_fingerprint(path)
    message = str(e.value)
    assert f"version {FINGERPRINT_VERSION - 1} is not supported (expected {FINGERPRINT_VERSION})" in message
    assert "older autoseg" in message and "rerun autoseg plan" in message and "\n" not in message


def test_hippocampus_statistics_within_sampling_noise_of_nnunet(hippocampus_dir):
    """The committed reference fingerprint (recomputed in test_reference_plans) against nnU-Net 2.8.1's own
    fingerprint of the same data, within the tolerances the fingerprint module states."""
    ours = load_fingerprint(REPO / "plans" / "reference" / "fingerprints" / "Dataset004_Hippocampus.json")
    theirs = json.loads((REPO / "plans" / "reference" / "nnunet" / "Dataset004_Hippocampus" /
                         "dataset_fingerprint.json").read_text())["foreground_intensity_properties_per_channel"]["0"]
    stats, = ours.foreground_intensity
    ds = load_dataset(hippocampus_dir)
    per_case = []
    for case in ds.cases:
        data, _ = read_case(ds, case)
        values = data.image[0][data.label > 0].astype(np.float64)
        if values.size:
            per_case.append(values)
    n_ours, n_theirs = stats.num_samples, int(1e8 // len(ds.cases)) * len(per_case)
    sigma = theirs["std"]
    both = np.sqrt(1 / n_ours + 1 / n_theirs)
    assert abs(stats.mean - theirs["mean"]) <= 3 * sigma * both
    centred = [v - stats.mean for v in per_case]
    kurtosis = np.mean([np.mean(c ** 4) for c in centred]) / np.mean([np.mean(c ** 2) for c in centred]) ** 2
    assert abs(stats.std - sigma) <= 3 * sigma * both * np.sqrt((kurtosis - 1) / 4)
    for key, p in (("percentile_00_5", 0.005), ("median", 0.5), ("percentile_99_5", 0.995)):
        tol = 3 * np.sqrt(p * (1 - p)) * both
        rank_ours, rank_theirs = _mixture_cdf(per_case, getattr(stats, key)), _mixture_cdf(per_case, theirs[key])
        # the two estimates' ranks overlap within the tolerance (ties make each rank an interval)
        assert rank_ours[0] <= rank_theirs[1] + tol and rank_theirs[0] <= rank_ours[1] + tol, key


# ---------- the z-score nonzero mask ----------

def _mask_case():
    """A body with an enclosed hole (value 0, labelled), a labelled body part, and a groove open to the
    outside (value 0) that is partly labelled: the only voxels where `seg >= 0` and the filled nonzero
    region could differ."""
    rng = np.random.default_rng(3)
    image = np.zeros((12, 16, 16), np.float32)
    image[2:10, 3:13, 3:13] = rng.normal(100.0, 10.0, (8, 10, 10))
    label = np.zeros(image.shape, np.uint8)
    image[5:7, 7:9, 7:9] = 0  # enclosed: filled into the mask
    label[5:7, 7:9, 7:9] = 1
    label[3:5, 4:6, 4:6] = 1
    image[2:10, 3:6, 10:12] = 0  # a groove from the y = 3 face, open to the zero region outside
    label[4:8, 3:6, 10:12] = 1  # labelled voxels of value 0 outside the filled nonzero region
    return image, label


def _nnunet_mask(image: np.ndarray, label: np.ndarray | None):
    """nnU-Net's z-score mask, written out here: crop to the filled nonzero region's box, seg = -1 where the
    label is 0 outside the filled region (everywhere outside it without a label), mask = seg >= 0."""
    filled = ndimage.binary_fill_holes(image != 0)
    hits = np.nonzero(filled)
    box = tuple(slice(int(h.min()), int(h.max()) + 1) for h in hits)
    seg = np.zeros(image.shape, np.int16) if label is None else label.astype(np.int16)
    seg = seg[box]
    seg[(seg == 0) & ~filled[box]] = -1
    return box, seg >= 0, filled[box]


@pytest.mark.parametrize("with_label", [True, False])
def test_zscore_nonzero_mask_is_nnunets_seg_at_least_zero(tmp_path, with_label):
    image, label = _mask_case()
    write_image(tmp_path / "imagesTr" / "m_0000.nii.gz", image)
    write_image(tmp_path / "labelsTr" / "m.nii.gz", label)
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1"}, "labels": {"background": 0, "a": 1}, "numTraining": 1, "file_ending": ".nii.gz"}))
    ds = load_dataset(tmp_path)
    plan = plan_experiment(compute_fingerprint(ds, workers=1, progress=False))
    plan = dataclasses.replace(plan, normalization=[ChannelNormalization("T1", "zscore", True)])
    data, _ = read_case(ds, ds.cases[0])
    if not with_label:
        data = dataclasses.replace(data, label=None)
    out, _, props = preprocess_case(data, plan, "3d_fullres")
    assert props.shape_after_resampling == props.shape_after_crop  # no resampling: the mask is all there is

    box, mask, filled = _nnunet_mask(image, label if with_label else None)
    if with_label:
        assert (mask & ~filled).any()  # the case does exercise labelled zero voxels outside the filled region
    assert [[s.start, s.stop] for s in box] == props.bbox
    x = image[box].astype(np.float64)
    expected = np.where(mask, (x - x[mask].mean()) / x[mask].std(), x)
    np.testing.assert_allclose(out[0], expected, atol=2e-5)

"""Dense CRF postprocessing: it refines noisy probabilities, works in millimetres, leaves certain background
alone, and the cross-validation decision keeps it only where it helps."""
from dataclasses import replace

import numpy as np
import SimpleITK as sitk

from autoseg.crf import CrfSettings, refine
from autoseg.evaluation.crf_decision import CrfCase, decide_crf
from autoseg.label_scheme import LabelScheme
from autoseg.model.outputs import save_probabilities
from autoseg.planning.plan_types import ChannelNormalization

SHAPE = (24, 32, 32)


def _ellipsoid(centre=(12, 16, 16), radii=(7, 10, 9)) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1


def _noisy_case(seed: int):
    """An ellipsoid of intensity 2 in background 0 (noise 0.3), and probabilities that are right on average but
    wrong in about a third of the voxels: the situation a CRF is for."""
    rng = np.random.default_rng(seed)
    truth = _ellipsoid().astype(np.int64)
    image = truth * 2.0 + rng.normal(0, 0.3, SHAPE)
    foreground = np.clip(0.5 + 0.3 * (2 * truth - 1) + rng.normal(0, 0.35, SHAPE), 0.01, 0.99)
    return np.stack([1 - foreground, foreground]).astype(np.float32), image.astype(np.float32), truth


def _dice(a, b) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_crf_recovers_a_noisy_prediction():
    probabilities, image, truth = _noisy_case(0)
    before = _dice(probabilities.argmax(0) == 1, truth == 1)
    refined = refine(probabilities, image, (1.0, 1.0, 1.0), CrfSettings())
    after = _dice(refined.argmax(0) == 1, truth == 1)
    assert before < 0.6 and after > 0.9
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-5)


def test_crf_works_in_millimetres():
    """The same scene at twice the voxel size with every width in mm doubled is the same problem."""
    probabilities, image, _ = _noisy_case(1)
    settings = CrfSettings(spatial_sigma_mm=4.0, smooth_sigma_mm=1.0)
    doubled = replace(settings, spatial_sigma_mm=8.0, smooth_sigma_mm=2.0)
    a = refine(probabilities, image, (1.0, 1.0, 1.0), settings)
    b = refine(probabilities, image, (2.0, 2.0, 2.0), doubled)
    np.testing.assert_allclose(a, b, atol=1e-6)
    # an anisotropic spacing changes the reach along that axis only
    c = refine(probabilities, image, (3.0, 1.0, 1.0), settings)
    assert not np.allclose(a, c, atol=1e-3)


def test_crf_leaves_certain_background_alone():
    probabilities, image, _ = _noisy_case(2)
    certain = np.array([1.0, 0.0], np.float32)[:, None, None, None]
    probabilities[:, :, 12:, :] = certain  # foreground is possible only where y < 12
    refined = refine(probabilities, image, (1.0, 1.0, 1.0), CrfSettings(spatial_sigma_mm=5.0))
    # two spatial sigmas (10 voxels) past the last possible foreground voxel nothing is refined
    assert np.array_equal(refined[:, :, 22:], probabilities[:, :, 22:])
    assert not np.allclose(refined[:, :, :12], probabilities[:, :, :12])
    none = np.stack([np.ones(SHAPE, np.float32), np.zeros(SHAPE, np.float32)])
    assert np.array_equal(refine(none, image, (1.0, 1.0, 1.0), CrfSettings()), none)


def _write(path, array_zyx, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(tuple(reversed(spacing)))
    sitk.WriteImage(image, str(path))
    return path


def _cases(tmp_path, exact: bool) -> list[CrfCase]:
    cases = []
    for k in range(3):
        probabilities, image, truth = _noisy_case(10 + k)
        if exact:  # the network already got every voxel, with certainty: nothing left to refine
            probabilities = np.stack([truth == 0, truth == 1]).astype(np.float32)
        prob_path = tmp_path / f"c{k}_probabilities.npz"
        save_probabilities(prob_path, probabilities.astype(np.float16), [0, 1])
        cases.append(CrfCase(f"c{k}", (prob_path,), _write(tmp_path / f"c{k}_0000.nii.gz", image),
                             _write(tmp_path / f"c{k}.nii.gz", truth.astype(np.uint8))))
    return cases


def test_decision_keeps_the_crf_where_it_helps_and_rejects_it_where_it_cannot(tmp_path):
    scheme = LabelScheme(labels={"background": 0, "organ": 1})
    rule = ChannelNormalization("MR", "zscore", use_nonzero_mask=False)
    candidates = (CrfSettings(bilateral_weight=1.0), CrfSettings(bilateral_weight=3.0))
    (tmp_path / "noisy").mkdir()
    (tmp_path / "exact").mkdir()
    chosen, report = decide_crf(_cases(tmp_path / "noisy", exact=False), scheme, rule, workers=1, progress=False,
                                candidates=candidates)
    assert chosen in candidates
    assert report["tried"][candidates.index(chosen)]["dice"]["1"] > report["dice_without"]["1"] + 0.1
    chosen, report = decide_crf(_cases(tmp_path / "exact", exact=True), scheme, rule, workers=1, progress=False,
                                candidates=candidates)
    assert chosen is None and report["chosen"] is None and report["dice_without"]["1"] == 1.0

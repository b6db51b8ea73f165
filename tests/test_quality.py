"""The dataset report of `autoseg plan`: planted outliers are named, a clean dataset flags nothing."""
import json
import shutil

import numpy as np
import SimpleITK as sitk

from conftest import REPO, run_autoseg, write_image, write_nnunet_dataset


def _planted(root):
    data = write_nnunet_dataset(root / "Dataset003_QC", n_cases=12, shape=(12, 16, 14), spacing=(2.0, 1.0, 1.0))
    images, labels = data / "imagesTr", data / "labelsTr"

    def read(path):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

    write_image(images / "case_011_0000.nii.gz", read(images / "case_011_0000.nii.gz"), (6.0, 1.0, 1.0))
    write_image(labels / "case_011.nii.gz", read(labels / "case_011.nii.gz"), (6.0, 1.0, 1.0))
    write_image(images / "case_010_0000.nii.gz", read(images / "case_010_0000.nii.gz") * 20 + 3000, (2.0, 1.0, 1.0))
    image, label = read(images / "case_009_0000.nii.gz"), read(labels / "case_009.nii.gz")
    image[label > 0] = 0  # the label lies where the scan is empty: misaligned
    write_image(images / "case_009_0000.nii.gz", image, (2.0, 1.0, 1.0))
    shutil.copy(images / "case_000_0000.nii.gz", images / "case_008_0000.nii.gz")
    shutil.copy(labels / "case_000.nii.gz", labels / "case_008.nii.gz")
    lps = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)
    write_image(images / "case_007_0000.nii.gz", read(images / "case_007_0000.nii.gz"), (2.0, 1.0, 1.0), direction=lps)
    write_image(labels / "case_007.nii.gz", read(labels / "case_007.nii.gz"), (2.0, 1.0, 1.0), direction=lps)
    label = read(labels / "case_001.nii.gz")
    label[6, 8, 2] = 3  # label c: in one case only
    write_image(labels / "case_001.nii.gz", label, (2.0, 1.0, 1.0))
    meta = json.loads((data / "dataset.json").read_text())
    meta["labels"]["c"] = 3
    (data / "dataset.json").write_text(json.dumps(meta))
    return data


def test_planted_outliers_are_named_in_the_report_and_the_overview(tmp_path):
    data = _planted(tmp_path)
    out = tmp_path / "planned"
    result = run_autoseg("plan", data, "-o", out, "--configs", "3d_fullres", "-q")
    report = json.loads((out / "dataset_report.json").read_text())
    by_kind = {}
    for finding in report["findings"]:
        by_kind.setdefault(finding["kind"], set()).update(finding["cases"])
        assert finding["message"] in result.stdout and "\n" not in finding["message"]
    assert by_kind["spacing_outlier"] == {"case_011"}
    assert by_kind["intensity_outlier"] == {"case_010"}
    assert by_kind["label_outside_image"] == {"case_009"}
    assert by_kind["duplicate_image"] == {"case_000", "case_008"}
    assert by_kind["mixed_orientation"] == {"case_007"}
    assert by_kind["rare_label"] == {"case_001"}
    assert "label c (3) is in 1 of 12 cases" in result.stdout
    planted = {"case_000", "case_001", "case_007", "case_008", "case_009", "case_010", "case_011"}
    assert set(report["flagged_cases"]) <= planted and "case_001" not in report["flagged_cases"]
    overview = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "dataset_overview.png")))
    assert overview.shape[:2] == (640, 840) and (overview == (214, 39, 40)).all(-1).any()  # flagged cases in red


def test_the_bundled_hippocampus_cases_flag_nothing(tmp_path):
    data = REPO / "autoseg" / "demo" / "Dataset004_Hippocampus24"
    result = run_autoseg("plan", data, "-o", tmp_path, "--configs", "3d_fullres", "-q")
    assert "dataset report: 0 finding(s), 0 case(s) flagged" in result.stdout
    report = json.loads((tmp_path / "dataset_report.json").read_text())
    assert report["num_cases"] == 20 and report["findings"] == []

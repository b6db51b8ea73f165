"""DICOM in, DICOM SEG out: series written by the tests themselves (never fetched), read back through
`autoseg predict`, compared voxel for voxel and point for point with the NIfTI path."""
import csv
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom", reason="DICOM tests need the dicom extra (pip install 'autoseg[dicom]')")
highdicom = pytest.importorskip("highdicom", reason="DICOM tests need the dicom extra (pip install 'autoseg[dicom]')")

from autoseg.dataset.geometry import Geometry  # noqa: E402
from autoseg.dataset.image_io import read_image  # noqa: E402
from autoseg.dicom.seg import Algorithm, read_seg_labels, write_seg  # noqa: E402
from autoseg.dicom.series import find_series, read_series  # noqa: E402
from autoseg.dicom.series_writer import SeriesDescription, representable, write_series  # noqa: E402

from conftest import REPO, run_autoseg, train_tiny  # noqa: E402

LABELS = {"background": 0, "a": 1, "b": 2}
DEMO = REPO / "autoseg" / "demo" / "Dataset004_Hippocampus24"


def _rotation(degrees_x: float, degrees_z: float) -> np.ndarray:
    a, b = np.radians(degrees_x), np.radians(degrees_z)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


OBLIQUE = Geometry((2.5, 0.7, 0.9), (10.0, -20.0, 5.0), tuple(_rotation(20, -35).ravel()))
# stored "radiologically flipped": rows run right-to-left... no, left-to-right is +x in LPS; this series' rows
# run towards the patient's right (-x) and its columns towards anterior (-y), the RAS-minded converter trap
FLIPPED = Geometry((2.0, 1.0, 1.0), (30.0, 40.0, -10.0), (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))


def _volume(shape=(12, 20, 16), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 30, shape).astype(np.float32)


def _sitk_image(volume: np.ndarray, geometry: Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(geometry.spacing[::-1])
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _lps_points_of_nifti(path: Path, value: int) -> np.ndarray:
    """Physical LPS points of the voxels holding `value`, from nibabel's RAS affine alone."""
    image = nib.load(str(path))
    ijk = np.argwhere(np.asanyarray(image.dataobj) == value)
    ras = nib.affines.apply_affine(image.affine, ijk)
    return ras * np.array([-1.0, -1.0, 1.0])


def _lps_points_of_seg(path: Path, segment: int) -> np.ndarray:
    """Physical LPS points of one segment's pixels, from the SEG file's own frame positions alone."""
    seg = pydicom.dcmread(path)
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    points = []
    for frame, groups in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        identification = groups if "SegmentIdentificationSequence" in groups else shared  # one segment: shared
        if int(identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != segment:
            continue
        position = np.asarray(groups.PlanePositionSequence[0].ImagePositionPatient, float)
        rows, columns = np.nonzero(frame)
        points.append(position + np.outer(columns * column_spacing, orientation[:3])
                      + np.outer(rows * row_spacing, orientation[3:]))
    return np.concatenate(points) if points else np.zeros((0, 3))


def _same_points(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    return np.allclose(a[np.lexsort(a.T[::-1])], b[np.lexsort(b.T[::-1])], atol=1e-3)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    trained = train_tiny(tmp_path_factory.mktemp("dicom_model"), 1, ["0"])
    package = trained / "tiny.autoseg"
    run_autoseg("export", trained, "-o", package)
    return package


# --- reading series ----------------------------------------------------------------------------------


def test_series_geometry_and_voxels_match_the_nifti_of_the_same_scan(tmp_path):
    volume = representable(_volume())
    files = write_series(volume, OBLIQUE, tmp_path / "dicom" / "deep" / "er",
                         SeriesDescription(reversed_instance_numbers=True))
    sitk.WriteImage(_sitk_image(volume, OBLIQUE), str(tmp_path / "scan.nii.gz"))
    nifti_voxels, nifti_geometry = read_image(tmp_path / "scan.nii.gz")
    [series] = find_series(tmp_path / "dicom").series
    assert series.problem is None and series.files == tuple(files)  # by position, not name or InstanceNumber
    assert series.geometry.matches(nifti_geometry) == []
    assert series.geometry.matches(OBLIQUE) == []
    assert np.array_equal(read_series(series), nifti_voxels)
    # and SimpleITK's own series reader agrees on where the grid is
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in files])
    itk = reader.Execute()
    assert np.allclose(itk.GetOrigin(), OBLIQUE.origin, atol=1e-4)
    assert np.allclose(itk.GetDirection(), OBLIQUE.direction, atol=1e-6)
    assert np.allclose(itk.GetSpacing(), OBLIQUE.spacing[::-1], atol=1e-5)


def test_in_plane_spacing_is_not_swapped(tmp_path):
    """PixelSpacing is (between rows, between columns): x (along a row) takes the second value."""
    geometry = Geometry((3.0, 0.5, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    write_series(_volume((4, 6, 9)), geometry, tmp_path)
    [series] = find_series(tmp_path).series
    assert series.geometry.spacing == pytest.approx((3.0, 0.5, 2.0))
    assert (series.rows, series.columns) == (6, 9)


def test_compressed_series_reads_like_the_uncompressed_one(tmp_path):
    volume = representable(_volume())
    write_series(volume, OBLIQUE, tmp_path / "plain")
    write_series(volume, OBLIQUE, tmp_path / "rle", SeriesDescription(series_number=2,
                                                                       transfer_syntax="1.2.840.10008.1.2.5"))
    plain, rle = find_series(tmp_path).series
    assert rle.transfer_syntax == "1.2.840.10008.1.2.5"
    assert np.array_equal(read_series(plain), read_series(rle))


def test_several_series_are_named_readably_and_without_collisions(tmp_path):
    volume = _volume((3, 8, 8))
    write_series(volume, OBLIQUE, tmp_path / "a", SeriesDescription(patient_id="P 7/x", series_number=3))
    write_series(volume, OBLIQUE, tmp_path / "b", SeriesDescription(patient_id="P2", series_number=5))
    twin = SeriesDescription(patient_id="P2", series_number=5)  # same patient, date and number: a collision
    write_series(volume, OBLIQUE, tmp_path / "c", twin)
    (tmp_path / "notes.txt").write_text("not DICOM")
    scan = find_series(tmp_path)
    names = [s.name for s in scan.series]
    assert names[0] == "P-7-x_20260101_3"
    assert len(set(names)) == 3 and all(n.startswith("P2_20260101_5-") for n in names[1:])
    first = {s.series_uid: s.name for s in scan.series}
    shutil.rmtree(tmp_path / "a")
    assert {s.series_uid: s.name for s in find_series(tmp_path).series}.items() <= first.items()  # stable
    assert scan.skipped == {"not DICOM": 1}


def _write_non_images(folder: Path) -> None:
    """A DICOMDIR, a structured report and a secondary capture: skipped, never fatal."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    for name, sop_class in (("DICOMDIR", "1.2.840.10008.1.3.10"), ("report.dcm", "1.2.840.10008.5.1.4.1.1.88.11"),
                            ("capture.dcm", "1.2.840.10008.5.1.4.1.1.7")):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        if sop_class != "1.2.840.10008.1.3.10":
            ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
            ds.SeriesInstanceUID, ds.Modality = generate_uid(), "SR" if "88" in sop_class else "OT"
        ds.save_as(folder / name, enforce_file_format=True)


def _refuse_missing_slice(folder):
    files = write_series(_volume(), OBLIQUE, folder)
    files[5].unlink()


def _refuse_tilt(folder):
    step = np.asarray(OBLIQUE.direction).reshape(3, 3)[:, 2] * OBLIQUE.spacing[0]
    shear = np.asarray(OBLIQUE.direction).reshape(3, 3)[:, 1] * 0.5  # 0.5 mm along the columns per slice
    positions = np.asarray(OBLIQUE.origin) + np.outer(np.arange(12), step + shear)
    write_series(_volume(), OBLIQUE, folder, positions=positions)


def _refuse_mixed_sizes(folder):
    description = SeriesDescription(series_uid=pydicom.uid.generate_uid())
    write_series(_volume((4, 20, 16)), OBLIQUE, folder / "x", description)
    moved = Geometry(OBLIQUE.spacing, tuple(np.asarray(OBLIQUE.origin) + 50), OBLIQUE.direction)
    write_series(_volume((4, 20, 18)), moved, folder / "y", description)


def _refuse_mixed_orientations(folder):
    description = SeriesDescription(series_uid=pydicom.uid.generate_uid())
    write_series(_volume((4, 20, 16)), OBLIQUE, folder / "x", description)
    write_series(_volume((4, 20, 16)), FLIPPED, folder / "y", description)


def _refuse_shared_positions(folder):
    description = SeriesDescription(series_uid=pydicom.uid.generate_uid())
    write_series(_volume((4, 20, 16)), OBLIQUE, folder / "x", description)
    write_series(_volume((4, 20, 16), seed=1), OBLIQUE, folder / "y", description)  # a second time point


def _refuse_multi_frame_mix(folder):
    files = write_series(_volume((4, 20, 16)), OBLIQUE, folder)
    ds = pydicom.dcmread(files[0])
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(files[0], enforce_file_format=True)


def _refuse_no_pixels(folder):
    files = write_series(_volume((4, 20, 16)), OBLIQUE, folder)
    ds = pydicom.dcmread(files[2])
    del ds.PixelData
    ds.save_as(files[2], enforce_file_format=True)


def _refuse_single_slice(folder):
    write_series(_volume((1, 20, 16)), OBLIQUE, folder)


@pytest.mark.parametrize("make,expected", [
    (_refuse_missing_slice, "1 slice(s) missing: a gap of 5 mm between slices 5 and 6 of 11"),
    (_refuse_tilt, "gantry tilt or sheared slices"),
    (_refuse_mixed_sizes, "mixed image sizes (20x16, 20x18 rows x columns)"),
    (_refuse_mixed_orientations, "mixed slice orientations"),
    (_refuse_shared_positions, "8 slices share 4 position(s)"),
    (_refuse_multi_frame_mix, "mixes 1 multi-frame and 3 single-frame files"),
    (_refuse_no_pixels, "1 file(s) without pixel data"),
    (_refuse_single_slice, "a single slice"),
])
def test_series_that_cannot_be_predicted_exactly_are_refused_in_one_line(tmp_path, make, expected):
    make(tmp_path / "bad")
    write_series(_volume(), OBLIQUE, tmp_path / "good", SeriesDescription(patient_id="GOOD"))
    _write_non_images(tmp_path / "other")
    scan = find_series(tmp_path)
    bad = [s for s in scan.series if s.problem is not None]
    assert [s.name for s in scan.series if s.problem is None] == ["GOOD_20260101_1"]
    assert len(bad) == 1 and "\n" not in bad[0].problem
    assert bad[0].problem.startswith(f"series {bad[0].name} (") and expected in bad[0].problem
    assert scan.skipped == {"DICOMDIR": 1, "structured report": 1, "secondary capture": 1}


# --- the SEG -----------------------------------------------------------------------------------------


def _labels_for(series_shape) -> np.ndarray:
    labels = np.zeros(series_shape, np.uint8)
    labels[2:5, 3:9, 2:7] = 1
    labels[7:9, 12:16, 10:14] = 2
    return labels


@pytest.mark.parametrize("geometry", [OBLIQUE, FLIPPED], ids=["oblique", "flipped-rows-and-columns"])
def test_seg_round_trip_frames_and_physical_positions(tmp_path, geometry):
    volume = _volume()
    write_series(volume, geometry, tmp_path / "series")
    [series] = find_series(tmp_path / "series").series
    labels = _labels_for(volume.shape)
    path = write_seg(labels, series, LABELS, tmp_path / "x.seg.dcm",
                     algorithm=Algorithm("tiny.autoseg", "0.1.0", "ab" * 32, "3d_fullres folds 0"))
    assert np.array_equal(read_seg_labels(path, series, LABELS), labels)
    seg = pydicom.dcmread(path)
    source = {s.sop_instance_uid: s for s in series.slices}
    source_orientation = pydicom.dcmread(series.files[0]).ImageOrientationPatient
    assert np.allclose(seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient,
                       source_orientation)
    frames_per_segment = {1: 0, 2: 0}
    for groups in seg.PerFrameFunctionalGroupsSequence:
        referenced = groups.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose(groups.PlanePositionSequence[0].ImagePositionPatient, source[referenced].position)
        frames_per_segment[int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)] += 1
    assert frames_per_segment == {1: 3, 2: 2}  # one frame per source slice that holds the segment
    assert seg.StudyInstanceUID == pydicom.dcmread(series.files[0]).StudyInstanceUID
    assert seg.FrameOfReferenceUID == series.frame_of_reference_uid
    assert {r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence} == {series.series_uid}
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["a", "b"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "tiny.autoseg" and algorithm.AlgorithmVersion == "0.1.0"
    assert "ab" * 32 in algorithm.AlgorithmParameters
    # the same voxels, placed in space by the SEG alone and by the source grid alone
    nifti = tmp_path / "labels.nii.gz"
    sitk.WriteImage(_sitk_image(labels, series.geometry), str(nifti))
    for value in (1, 2):
        assert _same_points(_lps_points_of_seg(path, value), _lps_points_of_nifti(nifti, value))


def test_seg_keeps_front_and_back_and_left_and_right(tmp_path):
    """A blob drawn anterior-left in the patient must be anterior-left in the SEG, whatever the storage order
    (TotalSegmentator's SEGs were mirrored front to back until its PR #598)."""
    volume = _volume((6, 20, 16))
    write_series(volume, FLIPPED, tmp_path / "series")
    [series] = find_series(tmp_path / "series").series
    grid = _sitk_image(volume, series.geometry)
    labels = np.zeros(volume.shape, np.uint8)
    for index in np.ndindex(volume.shape):
        x, y, _ = grid.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]])
        if x > 25 and y < 32:  # LPS: +x is the patient's left, -y anterior; the grid spans x 15..30, y 21..40
            labels[index] = 1
    assert 0 < labels.sum() < labels.size / 2
    path = write_seg(labels, series, {"background": 0, "anterior_left": 1}, tmp_path / "x.seg.dcm",
                     algorithm=Algorithm("m", "0", None))
    points = _lps_points_of_seg(path, 1)
    assert len(points) == labels.sum()
    assert (points[:, 0] > 25).all() and (points[:, 1] < 32).all()


def test_label_codes_and_generic_codes(tmp_path):
    from autoseg.dataset.label_codes import Code, LabelCode

    write_series(_volume((4, 20, 16)), OBLIQUE, tmp_path / "series")
    [series] = find_series(tmp_path / "series").series
    codes = {"a": LabelCode(Code("SCT", "123037004", "Anatomical Structure"), Code("SCT", "5001007", "Hippocampus"))}
    path = write_seg(_labels_for((4, 20, 16)), series, LABELS, tmp_path / "x.seg.dcm",
                     algorithm=Algorithm("m", "0", None), label_codes=codes)
    a, b = pydicom.dcmread(path).SegmentSequence
    assert a.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Hippocampus"
    assert a.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    assert b.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # generic: Tissue


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian's dicom3tools) is not installed")
def test_dciodvfy_finds_no_errors_in_the_seg(tmp_path):
    write_series(_volume(), OBLIQUE, tmp_path / "series", SeriesDescription(modality="CT"))
    [series] = find_series(tmp_path / "series").series
    path = write_seg(_labels_for((12, 20, 16)), series, LABELS, tmp_path / "x.seg.dcm",
                     algorithm=Algorithm("m", "0.1.0", "ab" * 32))
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    lines = (out.stdout + out.stderr).splitlines()
    assert lines and lines[0] == "Segmentation"
    assert [line for line in lines if line.startswith(("Error", "Warning"))] == []


# --- autoseg predict ---------------------------------------------------------------------------------


def _predict(*args, check=True):
    # no mirroring: the DICOM and NIfTI paths are compared with the same settings, in a third of the time
    return run_autoseg("predict", *[str(a) for a in args], "-q", "--device", "cpu", "--no-tta", check=check)


def test_predict_dicom_gives_the_nifti_paths_label_map_in_seg_and_nifti(model, tmp_path):
    volume = representable(_volume((16, 20, 18)) / 30)
    write_series(volume, OBLIQUE, tmp_path / "in" / "s1", SeriesDescription(patient_id="A"))
    write_series(volume[:, ::-1].copy(), FLIPPED, tmp_path / "in" / "s2", SeriesDescription(patient_id="B"))
    _write_non_images(tmp_path / "in" / "misc")
    before = _digest(tmp_path / "in")
    out = tmp_path / "out"
    result = _predict("-i", tmp_path / "in", "-o", out, "-m", model, "--output-type", "both")
    assert "skipped 1 DICOMDIR file(s), 1 secondary capture file(s), 1 structured report file(s)" in result.stderr
    assert _digest(tmp_path / "in") == before  # inputs never modified
    for name, volume_k, geometry in (("A_20260101_1", volume, OBLIQUE), ("B_20260101_1", volume[:, ::-1], FLIPPED)):
        nifti_in = tmp_path / "nifti_in" / f"{name}_0000.nii.gz"
        nifti_in.parent.mkdir(exist_ok=True)
        sitk.WriteImage(_sitk_image(np.ascontiguousarray(volume_k), geometry), str(nifti_in))
    _predict("-i", tmp_path / "nifti_in", "-o", tmp_path / "nifti_out", "-m", model)
    scan = find_series(tmp_path / "in")
    for series in scan.series:
        from_nifti = np.asanyarray(nib.load(str(tmp_path / "nifti_out" / f"{series.name}.nii.gz")).dataobj)
        from_dicom = nib.load(str(out / f"{series.name}.nii.gz"))
        assert len(np.unique(from_nifti)) == 3  # all labels present: the comparisons below compare something
        assert np.array_equal(np.asanyarray(from_dicom.dataobj), from_nifti)
        seg_labels = read_seg_labels(out / f"{series.name}.seg.dcm", series, LABELS)
        assert np.array_equal(seg_labels, read_image(out / f"{series.name}.nii.gz")[0])
        assert np.allclose(from_dicom.affine, nib.load(str(tmp_path / "nifti_in" / f"{series.name}_0000.nii.gz")).affine,
                           atol=1e-4)
        report = json.loads((out / f"{series.name}_report.json").read_text())
        assert report["source_series"] == [series.series_uid] and report["dicom_seg"].endswith(".seg.dcm")
        assert len(report["inputs"]) == len(series.slices)
    with open(out / "predictions.csv", newline="") as f:
        csv_inputs = [row["inputs"] for row in csv.DictReader(f)]
    assert csv_inputs == [f"series {s.series_uid} (16 files)" for s in scan.series]
    for series in scan.series:
        for value in (1, 2):
            assert _same_points(_lps_points_of_seg(out / f"{series.name}.seg.dcm", value),
                                _lps_points_of_nifti(out / f"{series.name}.nii.gz", value))
    # SEG alone (the default for DICOM input), restricted to one series, then --continue skips it
    only = scan.series[0]
    _predict("-i", tmp_path / "in", "-o", tmp_path / "seg_only", "-m", model, "--series", only.series_uid)
    assert sorted(p.name for p in (tmp_path / "seg_only").glob("*.dcm")) == [f"{only.name}.seg.dcm"]
    assert not list((tmp_path / "seg_only").glob("*.nii.gz"))
    again = _predict("-i", tmp_path / "in", "-o", tmp_path / "seg_only", "-m", model, "--series", only.series_uid,
                     "--continue")
    assert "1 already done" in again.stdout


def test_refused_series_fail_alone_and_modality_is_checked(model, tmp_path):
    write_series(_volume((16, 20, 18)), OBLIQUE, tmp_path / "in" / "ok", SeriesDescription(patient_id="MR1"))
    write_series(_volume((16, 20, 18)), OBLIQUE, tmp_path / "in" / "ct",
                 SeriesDescription(patient_id="CT1", modality="CT"))
    _refuse_missing_slice(tmp_path / "in" / "gap")
    result = _predict("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", model, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    refused = [line for line in result.stderr.splitlines() if "slice(s) missing" in line]
    assert len(refused) == 1 and refused[0].startswith("series ANON001_20260101_1 (")
    assert (tmp_path / "out" / "MR1_20260101_1.seg.dcm").is_file()
    report = json.loads((tmp_path / "out" / "CT1_20260101_1_report.json").read_text())
    assert any("modality CT, but the model's channel 0 is MRI (MR)" in w for w in report["warnings"])
    strict = _predict("-i", tmp_path / "in", "-o", tmp_path / "strict", "-m", model, "--strict",
                      "--series", report["source_series"][0], check=False)
    assert strict.returncode == 1 and "modality CT" in strict.stderr and "refused under --strict" in strict.stderr


def test_undecodable_pixel_data_is_one_line(model, tmp_path):
    from pydicom.encaps import encapsulate

    for path in write_series(_volume((16, 20, 18)), OBLIQUE, tmp_path / "in"):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"  # HTJ2K: GDCM cannot decode it
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 40])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
    result = _predict("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", model, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "series ANON001_20260101_1 (" in result.stderr
    assert "pixel data cannot be decoded (transfer syntax HTJ2K Lossless" in result.stderr


def test_dicom_only_options_on_image_files_and_a_single_dicom_file_are_one_line(model, tmp_path):
    files = write_series(_volume((16, 20, 18)), OBLIQUE, tmp_path / "dicom")
    one = _predict("-i", files[0], "-o", tmp_path / "out", "-m", model, check=False)
    assert one.returncode != 0 and "one DICOM file; give the folder that holds its series" in one.stderr
    nifti = tmp_path / "nifti" / "x_0000.nii.gz"
    nifti.parent.mkdir()
    sitk.WriteImage(_sitk_image(_volume((16, 20, 18)), OBLIQUE), str(nifti))
    seg = _predict("-i", nifti.parent, "-o", tmp_path / "out", "-m", model, "--output-type", "dicom-seg", check=False)
    assert seg.returncode != 0 and "a DICOM SEG references its source DICOM series" in seg.stderr
    assert "Traceback" not in one.stderr + seg.stderr


@pytest.fixture(scope="module")
def two_channel_model(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("dicom_model2"), 2, ["0"]) / "models"


def test_multi_channel_cases_are_mapped_by_channel_series(two_channel_model, tmp_path):
    t1 = write_series(_volume((16, 20, 18)), OBLIQUE, tmp_path / "in" / "t1", SeriesDescription(series_number=1))
    write_series(_volume((16, 20, 18), seed=2), OBLIQUE, tmp_path / "in" / "t2",
                 SeriesDescription(series_number=2, frame_of_reference_uid=pydicom.dcmread(t1[0]).FrameOfReferenceUID))
    uids = {s.name: s.series_uid for s in find_series(tmp_path / "in").series}
    unmapped = _predict("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", two_channel_model, check=False)
    assert unmapped.returncode != 0 and "--channel-series" in unmapped.stderr
    mapping = tmp_path / "channels.json"
    mapping.write_text(json.dumps({"case1": [uids["ANON001_20260101_1"], uids["ANON001_20260101_2"]],
                                   "case2": [uids["ANON001_20260101_1"], "1.2.3.999"]}))
    result = _predict("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", two_channel_model, "--channel-series",
                      mapping, "--output-type", "both", check=False)
    assert result.returncode == 1
    assert "case case2: channel 1 (MR1) series 1.2.3.999 is not under" in result.stderr
    assert (tmp_path / "out" / "case1.seg.dcm").is_file() and (tmp_path / "out" / "case1.nii.gz").is_file()
    report = json.loads((tmp_path / "out" / "case1_report.json").read_text())
    assert report["source_series"] == [uids["ANON001_20260101_1"], uids["ANON001_20260101_2"]]


def test_hippocampus_cases_as_dicom_predict_like_their_nifti(tmp_path):
    """The bundled Hippocampus test scans, written as DICOM series, through a model trained on the bundled
    Hippocampus cases: the DICOM path and the NIfTI path give the same label maps."""
    from autoseg.planning.run import plan_dataset
    from autoseg.preprocessing import preprocess_dataset

    planned = tmp_path / "planned"
    plan_dataset(DEMO, planned, workers=1, configurations=("3d_fullres",), progress=False)
    preprocess_dataset(planned, workers=1, progress=False)
    run_autoseg("train", planned, "--fold", "0", "--epochs", "1", "--iterations-per-epoch", "2", "--width", "0.25",
                "--precision", "fp32", "--workers", "0", "-q", "--no-validation")
    scans = sorted((DEMO / "imagesTs").glob("*.nii.gz"))[:2]
    (tmp_path / "nifti").mkdir()
    for k, scan in enumerate(scans):
        image = sitk.ReadImage(str(scan))
        voxels = representable(sitk.GetArrayFromImage(image))
        geometry = Geometry(image.GetSpacing()[::-1], image.GetOrigin(), image.GetDirection())
        write_series(voxels, geometry, tmp_path / "dicom" / scan.name, SeriesDescription(patient_id=f"H{k}"))
        sitk.WriteImage(_sitk_image(voxels, geometry), str(tmp_path / "nifti" / f"H{k}_20260101_1_0000.nii.gz"))
    _predict("-i", tmp_path / "dicom", "-o", tmp_path / "from_dicom", "-m", planned / "models", "--output-type", "both")
    _predict("-i", tmp_path / "nifti", "-o", tmp_path / "from_nifti", "-m", planned / "models")
    labels = json.loads((DEMO / "dataset.json").read_text())["labels"]
    for series in find_series(tmp_path / "dicom").series:
        expected = np.asanyarray(nib.load(str(tmp_path / "from_nifti" / f"{series.name}.nii.gz")).dataobj)
        assert len(np.unique(expected)) > 1  # a map with labels: the comparison compares something
        assert np.array_equal(np.asanyarray(nib.load(str(tmp_path / "from_dicom" / f"{series.name}.nii.gz")).dataobj),
                              expected)
        assert np.array_equal(read_seg_labels(tmp_path / "from_dicom" / f"{series.name}.seg.dcm", series, labels),
                              read_image(tmp_path / "from_nifti" / f"{series.name}.nii.gz")[0])


def test_label_codes_flow_from_dataset_json_into_the_plan_and_bad_ones_are_one_line(tmp_path):
    from autoseg.dataset.layout import scan_dataset
    from autoseg.planning.plan_types import load_plan
    from autoseg.planning.run import plan_dataset

    from conftest import write_nnunet_dataset

    data = write_nnunet_dataset(tmp_path / "Dataset002_Codes")
    meta = json.loads((data / "dataset.json").read_text())
    hippocampus = {"category": {"scheme": "SCT", "value": "123037004", "meaning": "Anatomical Structure"},
                   "type": {"scheme": "SCT", "value": "5001007", "meaning": "Hippocampus"}}
    meta["label_codes"] = {"a": hippocampus}
    (data / "dataset.json").write_text(json.dumps(meta))
    plan_dataset(data, tmp_path / "planned", workers=1, configurations=("3d_fullres",), progress=False)
    plan = load_plan(tmp_path / "planned" / "plan.json")
    assert plan.label_codes["a"].type.meaning == "Hippocampus" and "b" not in plan.label_codes
    meta["label_codes"] = {"a": {"type": hippocampus["type"]}, "nope": hippocampus, "background": hippocampus,
                           "b": {"category": hippocampus["category"], "type": {"scheme": "SCT", "value": 5}}}
    (data / "dataset.json").write_text(json.dumps(meta))
    problems = scan_dataset(data).problems
    assert [p.split(": ", 2)[1] for p in problems] == ['label_codes["a"]', 'label_codes["nope"]',
                                                       'label_codes["background"]', 'label_codes["b"].type']
    assert all(p.startswith(str(data / "dataset.json")) and "\n" not in p for p in problems)


def test_a_region_model_writes_each_region_whole_as_overlapping_segments(tmp_path):
    from autoseg.label_scheme import Region

    files = write_series(_volume((6, 10, 8)), FLIPPED, tmp_path / "dicom")
    assert files
    [series] = find_series(tmp_path / "dicom").series
    segmentation = np.zeros((6, 10, 8), np.uint8)
    segmentation[1:5, 2:8, 2:6] = 1  # whole tumour but not core
    segmentation[2:4, 4:6, 3:5] = 2  # core (inside whole)
    labels = {"background": 0, "whole": 1, "core": 2}
    path = write_seg(segmentation, series, labels, tmp_path / "seg.dcm", algorithm=Algorithm("regions", "0", None),
                     regions=[Region("whole", [1, 2]), Region("core", [2])])
    seg = highdicom.seg.segread(path)
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.files]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=False, assert_missing_frames_are_empty=True)
    assert [seg.get_segment_description(n).SegmentLabel for n in (1, 2)] == ["whole", "core"]
    assert np.array_equal(pixels[..., 0] > 0, segmentation > 0)  # "whole" holds its core too
    assert np.array_equal(pixels[..., 1] > 0, segmentation == 2)

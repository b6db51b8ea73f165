"""What DICOM costs: one 512x512x300 CT-like scan predicted from a DICOM series into a DICOM SEG, next to the same
scan predicted from NIfTI into NIfTI, in one invocation, on the same model.

    .venv/bin/python benchmarks/bench_dicom.py [--work /tmp/autoseg-bench-dicom] [--ct-cache /tmp/autoseg-bench-data]

The scan and the model are bench_predict's CT part (synthetic_ct.write_ct_predict_dataset: five 128x128x64
training cases, one iteration of training: this is about the input/output path, not accuracy). The scan is
written as 300 single-frame CT files (uncompressed, 16-bit) and as NIfTI with the same voxels. Measured:
  - end to end, each in its own process: `autoseg predict` wall time and peak RSS (process tree), NIfTI in ->
    NIfTI out, and DICOM in -> SEG out (--output-type dicom-seg), TTA off;
  - in this process: finding and checking the series (headers of 300 files), decoding it to a volume, and
    writing the SEG from the predicted label map, against reading the NIfTI;
  - that the SEG holds exactly the NIfTI path's label map.
Nothing else should run beside it.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured  # noqa: E402
from synthetic_ct import PREDICT_TEST_CASE, write_ct_predict_dataset  # noqa: E402


def model_package(data: Path, work: Path) -> Path:
    package = work / "ct.autoseg"
    if package.is_file():
        return package
    out = work / "trained"
    shutil.rmtree(out, ignore_errors=True)
    autoseg = [sys.executable, "-m", "autoseg"]
    subprocess.run([*autoseg, "plan", data, "-o", out, "--configs", "3d_fullres", "--preprocess", "-q"], check=True)
    subprocess.run([*autoseg, "train", out, "--fold", "0", "--epochs", "1", "--iterations-per-epoch", "1",
                    "--no-validation", "--device", "cpu", "-q"], check=True)
    subprocess.run([*autoseg, "export", out, "-o", package], check=True)
    return package


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/autoseg-bench-dicom"))
    parser.add_argument("--ct-cache", type=Path, default=Path("/tmp/autoseg-bench-data"))
    args = parser.parse_args()
    import SimpleITK as sitk

    from autoseg.dataset.geometry import Geometry
    from autoseg.dataset.image_io import read_image
    from autoseg.dicom.seg import Algorithm, read_seg_labels, write_seg
    from autoseg.dicom.series import find_series, read_series
    from autoseg.dicom.series_writer import SeriesDescription, representable, write_series

    args.work.mkdir(parents=True, exist_ok=True)
    data, test = write_ct_predict_dataset(args.ct_cache)
    package = model_package(data, args.work)
    nifti_in, dicom_in = args.work / "nifti_in", args.work / "dicom_in"
    if not (dicom_in / "done").is_file():
        shutil.rmtree(nifti_in, ignore_errors=True)
        shutil.rmtree(dicom_in, ignore_errors=True)
        nifti_in.mkdir()
        image = sitk.ReadImage(str(test / f"{PREDICT_TEST_CASE}_0000.nii.gz"))
        voxels = representable(sitk.GetArrayFromImage(image))
        geometry = Geometry(image.GetSpacing()[::-1], image.GetOrigin(), image.GetDirection())
        write_series(voxels, geometry, dicom_in, SeriesDescription(modality="CT", patient_id="BENCH"))
        same = sitk.GetImageFromArray(voxels)
        same.CopyInformation(image)
        sitk.WriteImage(same, str(nifti_in / "BENCH_20260101_1_0000.nii.gz"))
        (dicom_in / "done").write_text("")
    predict = [sys.executable, "-m", "autoseg", "predict", "-m", str(package), "--no-tta", "--device", "cpu", "-q"]
    subprocess.run([sys.executable, "-c", "import torch, highdicom, autoseg.inference.predict"], check=True)  # warm
    runs = {}
    for name, extra in (("nifti", ["-i", str(nifti_in)]), ("dicom", ["-i", str(dicom_in), "--output-type",
                                                                      "dicom-seg"])):
        out = args.work / f"out_{name}"
        shutil.rmtree(out, ignore_errors=True)
        m = run_measured([*predict, *extra, "-o", str(out)])
        report = json.loads(next(out.glob("*_report.json")).read_text())
        runs[name] = {"wall_s": m.wall_s, "peak_mb": m.peak_mb, "timings_s": report["timings_s"]}
        print(f"{name:6} predict: {m.wall_s:7.1f} s, peak {m.peak_mb:6.0f} MB; stages "
              + ", ".join(f"{k} {v:.1f}" for k, v in report["timings_s"].items()), flush=True)

    # the DICOM-only work, in this process
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    scan, find_s = timed(find_series, dicom_in)
    [series] = scan.series
    volume, decode_s = timed(read_series, series)
    (nifti_voxels, _), nifti_read_s = timed(read_image, nifti_in / "BENCH_20260101_1_0000.nii.gz")
    assert np.array_equal(volume, nifti_voxels), "the series and the NIfTI hold different voxels"
    labels_nifti, _ = read_image(args.work / "out_nifti" / "BENCH_20260101_1.nii.gz")
    plan_labels = {"background": 0, "liver": 1, "tumor": 2}
    _, seg_write_s = timed(write_seg, labels_nifti.astype(np.uint8), series, plan_labels, args.work / "timed.seg.dcm",
                           algorithm=Algorithm("ct.autoseg", "bench", None))
    seg_back = read_seg_labels(args.work / "out_dicom" / "BENCH_20260101_1.seg.dcm", series, plan_labels)
    identical = bool(np.array_equal(seg_back, labels_nifti))
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    network_s = runs["nifti"]["timings_s"]["network_s"]
    overhead_s = (find_s + decode_s - nifti_read_s) + seg_write_s
    counts = {v: int((labels_nifti == v).sum()) for v in (1, 2)}
    print(f"\none {series.columns}x{series.rows}x{len(series.slices)} CT scan; label map voxels {counts}; "
          f"SEG {(args.work / 'out_dicom' / 'BENCH_20260101_1.seg.dcm').stat().st_size / 1e6:.1f} MB")
    print(f"find + check series {find_s:.2f} s, decode {decode_s:.2f} s; NIfTI read {nifti_read_s:.2f} s; "
          f"SEG write {seg_write_s:.2f} s (this process peak {peak_before:.0f} -> {peak_after:.0f} MB)")
    print(f"DICOM overhead {overhead_s:.2f} s = {overhead_s / network_s:.3f} of the network's {network_s:.1f} s")
    print(f"end to end: DICOM/NIfTI wall {runs['dicom']['wall_s'] / runs['nifti']['wall_s']:.3f}, "
          f"peak {runs['dicom']['peak_mb'] / runs['nifti']['peak_mb']:.3f}")
    print(f"SEG label map identical to the NIfTI path's: {identical}")
    result = {"runs": runs, "find_s": find_s, "decode_s": decode_s, "nifti_read_s": nifti_read_s,
              "seg_write_s": seg_write_s, "overhead_s": overhead_s, "overhead_of_network": overhead_s / network_s,
              "identical": identical, "label_voxels": counts}
    (args.work / "results-dicom.json").write_text(json.dumps(result, indent=1))
    if not identical:
        sys.exit("the SEG's label map differs from the NIfTI path's")


if __name__ == "__main__":
    main()

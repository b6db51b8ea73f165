"""Readers that verify what they read: damaged, mis-sized, mis-typed and mis-placed scans in every
supported format are refused by `read_image` with one line naming the file, and through `autoseg plan`
and `autoseg predict` that line is the only problem shown; a fuzz test damages compressed scans at
random and checks that none is used wrongly.

Corpus (CORPUS_CLASSES, ids "<class>/<case>"): each case starts from a good scan, breaks it, and asserts
the one-line refusal; the plan and predict cases also assert the exit code and that nothing is written.
"""
import gzip
import json
import random
import re
import shutil
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.dataset.image_io import nifti_header_bytes, read_image
from autoseg.errors import AutosegError

from conftest import run_autoseg, train_tiny, write_nnunet_dataset

CORPUS_STAGE = "plan"
CORPUS_CLASSES = {
    "corrupt-compressed": "A compressed scan (.nii.gz, gzip NRRD, zlib MetaImage) with a damaged payload, a "
                          "failing checksum (CRC32, length, Adler-32), cut short, empty, not compressed or with junk "
                          "after its end is refused with one line naming it; the stream is always decompressed to "
                          "its end before a voxel is used.",
    "size-mismatch": "Voxel data shorter or longer than the header says (in the file, after decompression, or in a "
                     "detached data file) is refused with one line giving both byte counts.",
    "missing-data-file": "A .nhdr or .mhd whose data file is missing is refused with one line naming the header "
                         "and the data file.",
    "pixel-type": "RGB, RGBA, complex, 1-bit, 128-bit float and unknown pixel types are refused with one line "
                  "saying what to store instead (vector pixels of NRRD/MetaImage stay channels).",
    "bad-spacing": "A zero, negative or non-finite voxel spacing, as the header states it or as the reader "
                   "computes it, is refused with one line.",
    "bad-direction": "A sheared, non-orthogonal, scaled, singular or non-finite direction (beyond |cos| 1e-3, "
                     "about 0.06 degrees) or a non-finite origin is refused with one line naming the file.",
}

SHAPE = (6, 7, 8)  # (z, y, x)
COMPRESSED = (".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
ALL = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
ITK = (".nrrd", ".nhdr", ".mha", ".mhd")


# --- writing and locating the bytes of a scan -------------------------------------------------------

def _volume(seed=0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)


def _good(path: Path, array=None, spacing=(2.0, 1.0, 1.0)) -> Path:
    """A good scan at `path`, compressed where the format allows (ITK decides for .nii: never)."""
    image = sitk.GetImageFromArray(_volume() if array is None else array)
    image.SetSpacing([float(s) for s in spacing[::-1]])
    image.SetOrigin((10.0, -5.0, 3.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def _recompress(path: Path, compress=True) -> Path:
    """Rewrite a scan (as ITK reads it) compressed or not, same voxels and geometry."""
    image = sitk.ReadImage(str(path))
    if path.name.endswith((".nii", ".nii.gz")):
        image = nib.load(str(path))
        image = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header)
        nib.save(image, str(path))  # nibabel decides compression by the ending
        return path
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def _header_text(path: Path) -> str:
    data = path.read_bytes()
    if path.name.endswith(".nrrd"):
        return data[:data.index(b"\n\n") + 1].decode()
    if path.name.endswith(".mha"):
        return data[:data.index(b"ElementDataFile = LOCAL\n")].decode()
    return data.decode()


def _data_file(path: Path) -> Path:
    """The detached data file of a .nhdr/.mhd header."""
    match = re.search(r"^(?:data file|ElementDataFile)\s*[:=]\s*(.+)$", path.read_text(), re.M)
    return path.parent / match.group(1).strip()


def payload(path: Path) -> tuple[Path, int]:
    """(file holding the voxel data, byte where it starts)."""
    if path.name.endswith((".nhdr", ".mhd")):
        return _data_file(path), 0
    if path.name.endswith(".nii.gz"):
        return path, 0
    if path.name.endswith(".nii"):
        return path, int(nib.load(str(path)).header.get_data_offset())
    data = path.read_bytes()
    marker = b"\n\n" if path.name.endswith(".nrrd") else b"ElementDataFile = LOCAL\n"
    return path, data.index(marker) + len(marker)


def _edit_payload(path: Path, change) -> None:
    """Replace the payload bytes (from its start to the end of its file) with change(bytes)."""
    file, start = payload(path)
    data = file.read_bytes()
    file.write_bytes(data[:start] + change(data[start:]))


def _edit_header(path: Path, old: str, new: str) -> None:
    """Text replacement in a NRRD or MetaImage header (attached or detached)."""
    if path.name.endswith((".nrrd", ".mha")):
        file, start = payload(path)
        data = file.read_bytes()
        head = data[:start].decode()
        assert old in head, (old, head)
        file.write_bytes(head.replace(old, new, 1).encode() + data[start:])
    else:
        text = path.read_text()
        assert old in text, (old, text)
        path.write_text(text.replace(old, new, 1))


def _nifti_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def _patch_nifti(path: Path, **fields) -> None:
    """Set NIfTI-1 header fields as stored, bypassing nibabel's checks and fixes."""
    data = _nifti_bytes(path)
    header = nib.Nifti1Header(data[:348], check=False)
    for name, value in fields.items():
        if name.startswith("pixdim"):
            key, index = name.rstrip("0123456789"), int(name[-1])
            array = header[key].copy()
            array[index] = value
            header[key] = array
        else:
            header[name] = value
    data = header.binaryblock + data[348:]
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def _set_sform(path: Path, linear: np.ndarray, origin=(0.0, 0.0, 0.0)) -> None:
    """A NIfTI whose sform (code 1) is `linear` (3x3) + origin; nibabel's affine is then exactly that."""
    rows = np.hstack([np.asarray(linear, float), np.asarray(origin, float)[:, None]])
    _patch_nifti(path, sform_code=1, srow_x=rows[0], srow_y=rows[1], srow_z=rows[2])


def _nifti_like(path: Path, array: np.ndarray) -> None:
    """Replace a NIfTI scan by `array` (x, y, z order) with the same affine."""
    affine = nib.load(str(path)).affine
    nib.save(nib.Nifti1Image(array, affine), str(path))


# --- corpus makers: each breaks the good scan at `path` in place ------------------------------------

def flip_middle(path):
    def change(data):
        data = bytearray(data)
        data[len(data) // 2] ^= 0x10
        return bytes(data)
    _recompress(path)
    _edit_payload(path, change)


def truncate_half(path):
    _recompress(path)
    _edit_payload(path, lambda data: data[:len(data) // 2])


def flip_checksum(path):
    """A bit of the CRC32 (gzip) or Adler-32 (zlib) trailer: the voxels decode fine, only the check fails."""
    gzip_trailer = path.name.endswith((".nii.gz", ".nrrd", ".nhdr"))

    def change(data):
        data = bytearray(data)
        data[-8 if gzip_trailer else -4] ^= 0x01
        return bytes(data)
    _recompress(path)
    _edit_payload(path, change)


def flip_length(path):
    """A bit of gzip's ISIZE (length mod 2**32) field."""
    _recompress(path)
    _edit_payload(path, lambda data: data[:-4] + bytes([data[-4] ^ 0x02]) + data[-3:])


def junk_after_end(path):
    _recompress(path)
    _edit_payload(path, lambda data: data + b"junk")


def shorter(path, by=16):
    """Voxel data `by` bytes short, re-compressed validly where it was compressed."""
    _edit_payload(path, lambda data: _recode(path, data, lambda raw: raw[:-by]))


def longer(path, by=16):
    _edit_payload(path, lambda data: _recode(path, data, lambda raw: raw + b"\0" * by))


def _recode(path: Path, data: bytes, change) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.compress(change(gzip.decompress(data)))
    if path.name.endswith((".mha", ".mhd")) and "CompressedData = True" in _header_text(path):
        return zlib.compress(change(zlib.decompress(data)))
    return change(data)


def shorter_compressed(path):
    _recompress(path)
    shorter(path)


def longer_compressed(path):
    _recompress(path)
    longer(path)


def shorter_raw(path):
    _recompress(path, compress=False)
    shorter(path)


def longer_raw(path):
    _recompress(path, compress=False)
    longer(path)


def delete_data_file(path):
    _data_file(path).unlink()


def rgb(path):
    data = np.asanyarray(nib.load(str(path)).dataobj)
    pixels = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    pixels["R"] = np.clip(data, 0, 255)
    _nifti_like(path, pixels)


def rgba(path):
    data = np.asanyarray(nib.load(str(path)).dataobj)
    pixels = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")])
    pixels["G"] = np.clip(data, 0, 255)
    _nifti_like(path, pixels)


def complex_nifti(path):
    _nifti_like(path, np.asanyarray(nib.load(str(path)).dataobj).astype(np.complex64))


def complex_itk(path):
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.complex64) * (1 + 1j)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path), useCompression=True)


def _datatype(code, bitpix):
    def make(path):
        _nifti_like(path, np.asanyarray(nib.load(str(path)).dataobj).astype(np.uint8))
        _patch_nifti(path, datatype=code, bitpix=bitpix)
    return make


binary_pixels = _datatype(1, 1)
float128_pixels = _datatype(1536, 128)
unknown_pixels = _datatype(777, 8)


def _pixdim(index, value):
    def make(path):
        _patch_nifti(path, sform_code=0, **{f"pixdim{index}": value})  # the qform (and pixdim) is used
    return make


def _sform(linear, origin=(0.0, 0.0, 0.0)):
    def make(path):
        _set_sform(path, np.array(linear, float), origin)
    return make


def _header(old, new, compress=True):
    def make(path):
        _recompress(path, compress)
        _edit_header(path, old, new)
    return make


NRRD_DIRECTIONS = "space directions: (1,0,0) (0,1,0) (0,0,2)"
META_SPACING = "ElementSpacing = 1 1 2"
META_MATRIX = "TransformMatrix = 1 0 0 0 1 0 0 0 1"


def _nrrd_directions(value):
    return _header(NRRD_DIRECTIONS, f"space directions: {value}")


def _meta(old, value):
    return _header(old, old.split("=")[0] + "= " + value)


def _cases(cls, name, make, words, endings):
    return [pytest.param(ending, make, words, id=f"{cls}/{name}{ending}") for ending in endings]


CORPUS = [
    *_cases("corrupt-compressed", "bit-flip-mid-stream", flip_middle, "", COMPRESSED),
    *_cases("corrupt-compressed", "truncated-stream", truncate_half, "truncated", COMPRESSED),
    *_cases("corrupt-compressed", "checksum-flip", flip_checksum, "check failed", COMPRESSED),
    *_cases("corrupt-compressed", "gzip-length-flip", flip_length, "length check failed",
            (".nii.gz", ".nrrd", ".nhdr")),
    *_cases("corrupt-compressed", "junk-after-end", junk_after_end, "", COMPRESSED),
    *_cases("corrupt-compressed", "not-gzip", lambda p: p.write_bytes(_nifti_bytes(p)), "not gzip-compressed",
            (".nii.gz",)),
    *_cases("corrupt-compressed", "empty-file", lambda p: p.write_bytes(b""), "empty file", (".nii.gz",)),
    *_cases("size-mismatch", "shorter-raw", shorter_raw, "unreadable or truncated file (",
            (".nii", ".nrrd", ".nhdr", ".mha", ".mhd")),
    *_cases("size-mismatch", "longer-raw", longer_raw, "more than", (".nii", ".nrrd", ".nhdr", ".mha", ".mhd")),
    *_cases("size-mismatch", "shorter-decompressed", shorter_compressed, "unreadable or truncated file (",
            COMPRESSED),
    *_cases("size-mismatch", "longer-decompressed", longer_compressed, "more than", COMPRESSED),
    *_cases("missing-data-file", "deleted", delete_data_file, "data file", (".nhdr", ".mhd")),
    *_cases("pixel-type", "rgb", rgb, "RGB pixels are not supported", (".nii.gz", ".nii")),
    *_cases("pixel-type", "rgba", rgba, "RGBA pixels are not supported", (".nii.gz", ".nii")),
    *_cases("pixel-type", "complex", complex_nifti, "complex pixels", (".nii.gz", ".nii")),
    *_cases("pixel-type", "complex", complex_itk, "complex pixels", (".nrrd", ".nhdr")),
    *_cases("pixel-type", "one-bit", binary_pixels, "1-bit", (".nii.gz",)),
    *_cases("pixel-type", "float128", float128_pixels, "128-bit float", (".nii",)),
    *_cases("pixel-type", "unknown-code", unknown_pixels, "unknown NIfTI data type code 777", (".nii.gz",)),
    *_cases("bad-spacing", "pixdim-zero", _pixdim(1, 0.0), "spacing (pixdim)", (".nii.gz", ".nii")),
    *_cases("bad-spacing", "pixdim-negative", _pixdim(2, -1.5), "spacing (pixdim)", (".nii.gz", ".nii")),
    *_cases("bad-spacing", "pixdim-nan", _pixdim(3, np.nan), "spacing (pixdim)", (".nii.gz",)),
    *_cases("bad-spacing", "sform-zero-column", _sform(np.diag([2.0, 0.0, 1.0])), "zero, negative or not finite",
            (".nii.gz", ".nii")),
    *_cases("bad-spacing", "sform-nan", _sform(np.diag([2.0, np.nan, 1.0])), "zero, negative or not finite",
            (".nii.gz",)),
    *_cases("bad-spacing", "zero-direction-vector", _nrrd_directions("(1,0,0) (0,0,0) (0,0,2)"),
            "zero, negative or not finite", (".nrrd", ".nhdr")),
    *_cases("bad-spacing", "nan-direction-vector", _nrrd_directions("(1,0,0) (0,nan,0) (0,0,2)"),
            "zero, negative or not finite", (".nrrd",)),
    *_cases("bad-spacing", "negative-spacings", _header(NRRD_DIRECTIONS, "spacings: 1 -1 2"),
            "spacing (spacings)", (".nrrd", ".nhdr")),
    *_cases("bad-spacing", "element-spacing-zero", _meta(META_SPACING, "1 0 2"), "zero, negative or not finite",
            (".mha", ".mhd")),
    *_cases("bad-spacing", "element-spacing-negative", _meta(META_SPACING, "-1 1 2"), "zero, negative or not finite",
            (".mha", ".mhd")),
    *_cases("bad-spacing", "element-spacing-inf", _meta(META_SPACING, "1 inf 2"), "zero, negative or not finite",
            (".mha",)),
    *_cases("bad-spacing", "element-spacing-nan", _meta(META_SPACING, "nan 1 2"), "zero, negative or not finite",
            (".mhd",)),
    *_cases("bad-direction", "sheared-sform", _sform([[2.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
            "sheared", (".nii.gz", ".nii")),
    *_cases("bad-direction", "slightly-sheared-sform", _sform([[1.0, 0.01, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
            "sheared", (".nii.gz",)),
    *_cases("bad-direction", "nan-origin", _sform(np.eye(3), (0.0, np.nan, 0.0)), "origin", (".nii.gz",)),
    *_cases("bad-direction", "sheared-space-directions", _nrrd_directions("(1,0,0) (0.5,1,0) (0,0,2)"), "sheared",
            (".nrrd", ".nhdr")),
    *_cases("bad-direction", "parallel-space-directions", _nrrd_directions("(1,0,0) (1,0,0) (0,0,2)"), "sheared",
            (".nrrd",)),
    *_cases("bad-direction", "sheared-matrix", _meta(META_MATRIX, "1 0 0 0.5 1 0 0 0 1"), "sheared",
            (".mha", ".mhd")),
    *_cases("bad-direction", "scaled-matrix", _meta(META_MATRIX, "2 0 0 0 1 0 0 0 1"), "length 2", (".mha", ".mhd")),
    *_cases("bad-direction", "singular-matrix", _meta(META_MATRIX, "1 0 0 1 0 0 0 0 1"), "sheared", (".mha",)),
    *_cases("bad-direction", "nan-offset", _meta("Offset = 10 -5 3", "10 nan 3"), "origin", (".mha",)),
]


def _assert_one_line_naming(message: str, path: Path, words: str) -> None:
    assert "\n" not in message and message.startswith(f"{path}: "), message
    assert words in message, message


@pytest.mark.parametrize("ending, make, words", CORPUS)
def test_read_image_refuses_with_one_line(tmp_path, ending, make, words):
    path = _good(tmp_path / f"scan{ending}")
    make(path)
    with pytest.raises(AutosegError) as info:
        read_image(path)
    _assert_one_line_naming(str(info.value), path, words)


# --- what must still be accepted -------------------------------------------------------------------

@pytest.mark.parametrize("ending", ALL)
@pytest.mark.parametrize("compress", [True, False])
def test_good_scans_read_as_before(tmp_path, ending, compress):
    """Every format, compressed or not, gives ITK's voxels and geometry (NIfTI: nibabel's, equal to ITK's)."""
    path = _recompress(_good(tmp_path / f"scan{ending}"), compress)
    array, geometry = read_image(path)
    reference = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(array, sitk.GetArrayFromImage(reference))
    assert geometry.spacing == pytest.approx(reference.GetSpacing()[::-1])
    assert geometry.origin == pytest.approx(reference.GetOrigin())
    if ending.startswith(".nii"):
        assert nifti_header_bytes(path) == nib.load(str(path)).header.binaryblock


def test_vector_pixels_are_channels_and_flips_and_rotations_pass(tmp_path):
    from scipy.spatial.transform import Rotation

    vector = sitk.GetImageFromArray(np.stack([_volume(1), _volume(2)], -1), isVector=True)
    rotation = Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix() @ np.diag([-1.0, 1.0, 1.0])
    vector.SetDirection(rotation.ravel())
    for ending in (".nrrd", ".mha"):
        sitk.WriteImage(vector, str(tmp_path / f"v{ending}"), useCompression=True)
        array, geometry = read_image(tmp_path / f"v{ending}")
        assert array.shape == (2, *SHAPE)
        np.testing.assert_allclose(geometry.direction, rotation.ravel(), atol=1e-6)


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".nhdr", ".mha"])
def test_gzip_members_and_zero_padding_are_accepted_junk_is_not(tmp_path, ending):
    """The rule: concatenated gzip members are one stream, as gzip(1) reads them, and zeros after the
    end are padding; any other byte after the end is refused (MetaImage's zlib has one stream only)."""
    path = _good(tmp_path / f"a{ending}")
    expected, _ = read_image(path)
    file, start = payload(path)
    good = file.read_bytes()
    stream = good[start:]
    variants = {"padded": stream + b"\0" * 1000}
    if ending != ".mha":
        raw = gzip.decompress(stream)
        variants["members"] = gzip.compress(raw[:500]) + gzip.compress(raw[500:]) + b"\0"
    for name, data in variants.items():
        file.write_bytes(good[:start] + data)
        np.testing.assert_array_equal(read_image(path)[0], expected, err_msg=name)
    file.write_bytes(good + b"\0\0PK\x03\x04")
    with pytest.raises(AutosegError, match="junk after"):
        read_image(path)


def test_nrrd_skips_and_metaimage_header_size_are_honoured(tmp_path):
    """NRRD byte skip counts decompressed bytes (gzip) or file bytes (raw; -1 = data at the end); MetaImage
    HeaderSize skips file bytes. A reader that got these wrong would refuse good files."""
    array = _volume(3)
    voxels = array.tobytes()
    head = ("NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 8 7 6\n"
            "space directions: (1,0,0) (0,1,0) (0,0,2)\nendian: little\n")
    files = {
        "gz.nhdr": (head + "encoding: gzip\nbyte skip: 7\nline skip: 1\ndata file: gz.raw.gz\n",
                    "gz.raw.gz", b"a line\n" + gzip.compress(b"x" * 7 + voxels)),
        "end.nhdr": (head + "encoding: raw\nbyte skip: -1\ndata file: end.raw\n", "end.raw", b"prefix" * 5 + voxels),
        "hs.mhd": ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                   "ElementSpacing = 1 1 2\nDimSize = 8 7 6\nHeaderSize = 11\nElementType = MET_FLOAT\n"
                   "ElementDataFile = hs.raw\n", "hs.raw", b"h" * 11 + voxels),
    }
    for header, (text, data_name, data) in files.items():
        (tmp_path / header).write_text(text)
        (tmp_path / data_name).write_bytes(data)
        got, geometry = read_image(tmp_path / header)
        np.testing.assert_array_equal(got, array)
        assert geometry.spacing == (2.0, 1.0, 1.0)
    (tmp_path / "gz.raw.gz").write_bytes(b"a line\n" + gzip.compress(b"x" * 6 + voxels))
    with pytest.raises(AutosegError, match=r"is 1350 bytes, the header says 1351"):
        read_image(tmp_path / "gz.nhdr")


# --- through the CLI ----------------------------------------------------------------------------------

CLI_CASES = [
    pytest.param(".nii.gz", flip_middle, "corrupt compressed data", id="corrupt-compressed/plan-nii-gz-bit-flip"),
    pytest.param(".mha", flip_middle, "corrupt compressed data", id="corrupt-compressed/plan-mha-bit-flip"),
    pytest.param(".nii", shorter_raw, "truncated", id="size-mismatch/plan-nii-shorter"),
    pytest.param(".nhdr", longer_compressed, "more than", id="size-mismatch/plan-nhdr-longer"),
    pytest.param(".mhd", delete_data_file, "data file", id="missing-data-file/plan-mhd"),
    pytest.param(".nii.gz", rgb, "RGB pixels are not supported", id="pixel-type/plan-rgb"),
    pytest.param(".nrrd", complex_itk, "complex pixels", id="pixel-type/plan-nrrd-complex"),
    pytest.param(".nii.gz", _pixdim(1, 0.0), "spacing", id="bad-spacing/plan-pixdim-zero"),
    pytest.param(".mha", _meta(META_SPACING, "0 1 2"), "spacing", id="bad-spacing/plan-mha-zero"),
    pytest.param(".nii.gz", _sform([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]), "sheared",
                 id="bad-direction/plan-sheared-sform"),
    pytest.param(".nrrd", _nrrd_directions("(1,0,0) (0.5,1,0) (0,0,2)"), "sheared",
                 id="bad-direction/plan-nrrd-sheared"),
]


def _dataset(tmp_path: Path, ending: str) -> tuple[Path, Path]:
    """A 3-case dataset in `ending` (spacing (2, 1, 1) like the makers expect) and its case_001 image."""
    ds = write_nnunet_dataset(tmp_path / "ds", n_cases=3, shape=SHAPE, spacing=(2.0, 1.0, 1.0), ending=ending)
    return ds, ds / "imagesTr" / f"case_001_0000{ending}"


def _problem_lines(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if not line.startswith("autoseg: error:")]


@pytest.mark.parametrize("ending, make, words", CLI_CASES)
def test_plan_names_the_bad_scan_once_and_writes_nothing(tmp_path, capsys, ending, make, words):
    ds, bad = _dataset(tmp_path, ending)
    make(bad)
    code = main(["plan", str(ds), "-q", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 1
    lines = _problem_lines(err)
    assert len(lines) == 1, err
    _assert_one_line_naming(lines[0], bad, words)
    assert err.strip().splitlines()[-1].startswith(f"autoseg: error: {ds}: 1 problem(s)")
    assert not (tmp_path / "ds.autoseg").exists()


def test_plan_in_a_real_process_prints_two_lines_and_no_traceback(tmp_path):
    ds, bad = _dataset(tmp_path, ".nii.gz")
    flip_checksum(bad)
    proc = run_autoseg("plan", ds, "-q", "--workers", "1", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{bad}: corrupt compressed data (gzip CRC32"), proc.stderr
    assert not (tmp_path / "ds.autoseg").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("hostile_readers"), 1, ["0"])


PREDICT_CASES = [
    pytest.param(".nii.gz", flip_middle, "corrupt compressed data", id="corrupt-compressed/predict-nii-gz-bit-flip"),
    pytest.param(".mha", flip_checksum, "Adler-32", id="corrupt-compressed/predict-mha-adler"),
    pytest.param(".nii.gz", shorter_compressed, "truncated", id="size-mismatch/predict-shorter"),
    pytest.param(".nii.gz", rgb, "RGB pixels are not supported", id="pixel-type/predict-rgb"),
    pytest.param(".nii.gz", _pixdim(3, -1.0), "spacing", id="bad-spacing/predict-pixdim-negative"),
    pytest.param(".nii.gz", _sform([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.3, 0.0, 1.0]]), "sheared",
                 id="bad-direction/predict-sheared-sform"),
]


@pytest.mark.parametrize("ending, make, words", PREDICT_CASES)
def test_predict_names_the_bad_scan_and_predicts_the_others(trained, tmp_path, capsys, ending, make, words):
    source = Path(json.loads((trained / "fingerprint.json").read_text())["dataset_dir"]) / "imagesTr"
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(source / "case_000_0000.nii.gz", inputs / "good_0000.nii.gz")
    bad = inputs / f"bad_0000{ending}"
    sitk.WriteImage(sitk.ReadImage(str(source / "case_001_0000.nii.gz")), str(bad), useCompression=True)
    make(bad)
    out = tmp_path / "out"
    code = main(["predict", "-i", str(inputs), "-o", str(out), "-m", str(trained / "models"), "-q",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    lines = _problem_lines(err)
    assert len(lines) == 1, err
    _assert_one_line_naming(lines[0], bad, words)
    assert (out / "good.nii.gz").is_file() and not list(out.glob("bad*"))
    assert not list(out.glob(".tmp-*"))


# --- fuzz: random damage to compressed scans ------------------------------------------------------------

FUZZ_SHAPE = (12, 14, 16)
FUZZ_FLIPS = 30  # single-bit flips per format, and as many random byte changes
FUZZ_TRUNCATIONS = 15


def _harmless_positions(path: Path, start: int, end: int) -> set[int]:
    """Bytes of a compressed payload whose change may leave the voxels intact, so reading them back is
    allowed (and must then be bit-identical): gzip's FLG (only its FTEXT hint bit is harmless), MTIME, XFL
    and OS header bytes, and the last byte of the deflate data, whose high bits can be padding."""
    gzip_stream = not path.name.endswith((".mha", ".mhd"))
    positions = {end - (9 if gzip_stream else 5)}
    if gzip_stream:
        positions |= set(range(start + 3, start + 10))
    return positions


def _damage_and_read(path: Path, file: Path, good: bytes, damaged: bytes, reference) -> bool:
    """Write the damage, read; True when refused (one line naming the scan), False when read back
    bit-identical. Anything else fails."""
    file.write_bytes(damaged)
    try:
        array, geometry = read_image(path)
    except AutosegError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e), str(e)
        return True
    finally:
        file.write_bytes(good)
    assert np.array_equal(array, reference[0]) and geometry == reference[1], "damaged scan used as if fine"
    return False


@pytest.mark.parametrize("ending", (".nii.gz", ".nrrd", ".nhdr"))
def test_gzip_header_fields_that_do_not_matter_read_identically(tmp_path, ending):
    """Every bit of gzip's MTIME, XFL and OS bytes and the FTEXT hint can change without changing the
    voxels: such a file must read back bit-identical (the fuzz test's "harmless" branch, exhaustively)."""
    path = _good(tmp_path / f"scan{ending}", _volume(5, FUZZ_SHAPE))
    reference = read_image(path)
    file, start = payload(path)
    good = file.read_bytes()
    changes = [(position, 1 << bit) for position in range(start + 4, start + 10) for bit in range(8)]
    for position, mask in changes + [(start + 3, 0x01)]:
        damaged = bytearray(good)
        damaged[position] ^= mask
        assert not _damage_and_read(path, file, good, bytes(damaged), reference)


@pytest.mark.parametrize("ending", COMPRESSED)
def test_fuzz_damaged_compressed_scans_are_refused_or_identical(tmp_path, ending):
    path = _good(tmp_path / f"fuzz{ending}", np.random.default_rng(7).normal(0, 1, FUZZ_SHAPE).astype(np.float32))
    reference = read_image(path)
    file, start = payload(path)
    good = file.read_bytes()
    end = len(good)
    rng = random.Random(f"fuzz{ending}")
    harmless_allowed = _harmless_positions(path, start, end)
    counts = {"detected": 0, "harmless": 0}
    for trial in range(2 * FUZZ_FLIPS):
        damaged = bytearray(good)
        position = rng.randrange(start, end)
        if trial < FUZZ_FLIPS:
            damaged[position] ^= 1 << rng.randrange(8)
        else:
            damaged[position] = (damaged[position] + rng.randrange(1, 256)) % 256
        refused = _damage_and_read(path, file, good, bytes(damaged), reference)
        counts["detected" if refused else "harmless"] += 1
        assert refused or position in harmless_allowed, f"change at byte {position - start} left the data intact"
    for _ in range(FUZZ_TRUNCATIONS):
        cut = rng.randrange(start, end)
        assert _damage_and_read(path, file, good, good[:cut], reference), f"truncation at {cut} not refused"
    print(f"fuzz {ending}: {counts['detected']} of {2 * FUZZ_FLIPS} changes detected, {counts['harmless']} "
          f"harmless, {FUZZ_TRUNCATIONS} of {FUZZ_TRUNCATIONS} truncations detected")
    assert counts["detected"] >= 2 * FUZZ_FLIPS - 3

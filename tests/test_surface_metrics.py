"""Surface metrics in both conventions: hand-computed cases, DeepMind's surface-distance (the reference of
Nikolov et al. 2021, a test-only dependency), an independent brute-force enumeration of surface elements,
the float32-spacing tolerance, and 2D label maps through `autoseg evaluate`."""
import itertools
import json
import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from autoseg.evaluation.metrics import (
    _TRIANGLES_3D, class_metrics, element_sizes, element_surface_distances, neighbourhood_codes,
)

from conftest import run_autoseg, write_image

# surface-distance imports scipy.ndimage's deprecated namespaces
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:surface_distance")

F32_08 = float(np.float32(0.8))  # 0.800000011920929: what a NIfTI header gives for 0.8 mm


def _reference(pred, ref, spacing, tolerance):
    """(NSD, HD95) by surface-distance; skipped where it is not installed."""
    sd = pytest.importorskip("surface_distance")
    distances = sd.compute_surface_distances(ref, pred, list(spacing))
    return sd.compute_surface_dice_at_tolerance(distances, tolerance), sd.compute_robust_hausdorff(distances, 95)


# --- hand-computed --------------------------------------------------------------------------------------

def test_single_voxel_against_itself_and_shifted():
    spacing = (0.7, 1.3, 2.9)
    one = np.zeros((5, 5, 7), bool)
    one[2, 2, 3] = True
    # 8 cells around the voxel, each cutting off one corner: a triangle with area vector (s1s2, s0s2, s0s1)/8
    corner = math.sqrt((1.3 * 2.9) ** 2 + (0.7 * 2.9) ** 2 + (0.7 * 1.3) ** 2) / 8
    d = element_surface_distances(one, one, spacing)
    assert d.pred_weights.size == 8 and np.allclose(d.pred_weights, corner)
    assert (d.pred_to_ref == 0).all()
    m = class_metrics(one, one, spacing)
    assert (m.nsd, m.hd95) == (1.0, 0.0)

    shifted = np.roll(one, 1, axis=2)
    # half of each voxel's cells are shared with the other's, the other half lie one voxel (2.9 mm) away
    d = element_surface_distances(one, shifted, spacing)
    assert sorted(d.pred_to_ref) == pytest.approx([0.0] * 4 + [2.9] * 4)
    m = class_metrics(one, shifted, spacing, tolerance_mm=2.0)
    assert m.nsd == pytest.approx(0.5) and m.hd95 == pytest.approx(2.9)  # 95% of the area is reached at 2.9
    assert class_metrics(one, shifted, spacing, tolerance_mm=2.9).nsd == 1.0
    # the voxel convention: one border voxel each, 2.9 mm apart
    v = class_metrics(one, shifted, spacing, tolerance_mm=2.0, surface_convention="voxels")
    assert (v.nsd, v.hd95) == (0.0, pytest.approx(2.9))


def test_element_sizes_by_hand():
    s0, s1, s2 = 0.5, 2.0, 3.0
    sizes = element_sizes((s0, s1, s2))
    assert sizes[0] == sizes[255] == 0.0
    # a face of 4 corners inside (i = 0): a unit square across axis 0, area s1*s2
    assert sizes[0b00001111] == pytest.approx(s1 * s2)
    # two corners along axis 2 inside: a rectangle s2 long, as wide as the line between two edge midpoints
    assert sizes[0b00000011] == pytest.approx(s2 * math.hypot(s0, s1) / 2)
    assert sizes[0b11111100] == sizes[0b00000011]  # complementary configurations have one surface
    lengths = element_sizes((s0, s1))
    diagonal = math.hypot(s0, s1) / 2
    assert lengths[0b0001] == lengths[0b1110] == pytest.approx(diagonal)
    assert lengths[0b0011] == s1 and lengths[0b0101] == s0 and lengths[0b1001] == pytest.approx(2 * diagonal)
    assert lengths[0] == lengths[15] == 0.0


@pytest.mark.parametrize("convention", ["elements", "voxels"])
def test_empty_masks_in_2d(convention):
    empty = np.zeros((6, 9), bool)
    some = empty.copy()
    some[2:4, 3:6] = True
    both = class_metrics(empty, empty, (0.5, 2.0), surface_convention=convention)
    assert all(math.isnan(v) for v in (both.dice, both.iou, both.hd95, both.nsd))
    for pred, ref in ((empty, some), (some, empty)):
        m = class_metrics(pred, ref, (0.5, 2.0), surface_convention=convention)
        assert (m.dice, m.nsd) == (0.0, 0.0) and m.hd95 == pytest.approx(math.hypot(5 * 0.5, 8 * 2.0))


@pytest.mark.parametrize("convention", ["elements", "voxels"])
def test_a_plate_one_voxel_off_at_float32_spacing_is_within_a_one_voxel_tolerance(convention):
    spacing = (F32_08, F32_08, F32_08)
    plate = np.zeros((8, 10, 10), bool)
    plate[3, 2:8, 2:8] = True
    shifted = np.roll(plate, 1, axis=0)  # exactly one voxel: 0.800000011920929 mm
    m = class_metrics(plate, shifted, spacing, tolerance_mm=0.8, surface_convention=convention)
    assert m.nsd == 1.0
    # 1e-5 below a voxel is a real miss
    assert class_metrics(plate, shifted, spacing, tolerance_mm=0.8 * (1 - 1e-5), surface_convention=convention).nsd < 1


def test_the_reference_library_flips_the_float32_plate():
    """What the relative tolerance fixes: surface-distance compares d <= τ exactly."""
    plate = np.zeros((8, 10, 10), bool)
    plate[3, 2:8, 2:8] = True
    nsd, _ = _reference(plate, np.roll(plate, 1, axis=0), (F32_08,) * 3, 0.8)
    assert nsd < 1.0


# --- against surface-distance ---------------------------------------------------------------------------

def _grid_points(shape, spacing, rotation):
    """Physical coordinates of the voxel centres on a grid rotated by `rotation` (3x3 or 2x2)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return (index * np.asarray(spacing)) @ rotation.T


def _rotation(rng, ndim):
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    return q * np.sign(np.diag(r))


def _shapes(kind, rng, shape, spacing, rotation):
    """A prediction and a reference: two spheres (balls) or two plates of different centres and sizes."""
    points = _grid_points(shape, spacing, rotation)
    centre = points[tuple(n // 2 for n in shape)]
    extent = min(n * s for n, s in zip(shape, spacing))
    masks = []
    for k in range(2):
        c = centre + rng.uniform(-0.05, 0.05, len(shape)) * extent
        if kind == "sphere":
            masks.append(np.linalg.norm(points - c, axis=-1) <= extent * (0.25 + 0.04 * k))
        else:
            normal = np.eye(len(shape))[0] + rng.normal(scale=0.3, size=len(shape))
            normal /= np.linalg.norm(normal)
            offset = (points - c) @ normal
            inside = np.linalg.norm(points - c, axis=-1) <= extent * 0.35
            masks.append(inside & (np.abs(offset) <= extent * (0.08 + 0.02 * k)))
    return masks


CASES = [  # (kind, shape, spacing, rotated)
    ("sphere", (24, 26, 22), (1.0, 1.0, 1.0), False),
    ("sphere", (14, 30, 28), (2.5, 0.8, 0.9), False),
    ("sphere", (14, 30, 28), (2.5, 0.8, 0.9), True),
    ("sphere", (30, 20, 16), (0.6, 1.1, 1.7), True),
    ("plate", (16, 30, 30), (3.0, 0.7, 0.7), False),
    ("plate", (16, 30, 30), (3.0, 0.7, 0.7), True),
    ("plate", (26, 24, 20), (F32_08, F32_08, 1.5), True),
    ("sphere", (40, 36), (0.7, 1.9), True),
    ("plate", (40, 36), (1.2, 0.5), True),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("tolerance", [1.0, 2.5])
def test_elements_equal_surface_distance(case, tolerance):
    kind, shape, spacing, rotated = CASES[case]
    rng = np.random.default_rng(case)
    rotation = _rotation(rng, len(shape)) if rotated else np.eye(len(shape))
    pred, ref = _shapes(kind, rng, shape, spacing, rotation)
    assert pred.any() and ref.any() and (pred != ref).any()
    nsd, hd95 = _reference(pred, ref, spacing, tolerance)
    m = class_metrics(pred, ref, spacing, tolerance_mm=tolerance)
    assert abs(m.nsd - nsd) <= 1e-6 and abs(m.hd95 - hd95) <= 1e-6
    assert 0.0 < m.nsd < 1.0 or tolerance > 2  # the cases are not trivial


def test_element_table_equals_surface_distance_at_any_spacing():
    sd_tables = pytest.importorskip("surface_distance.lookup_tables")
    kernel = sd_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL
    rng = np.random.default_rng(3)
    for spacing in [(1.0, 1.0, 1.0), *rng.uniform(0.2, 6.0, size=(4, 3))]:
        theirs = sd_tables.create_table_neighbour_code_to_surface_area(spacing)
        ours = element_sizes(spacing)
        for code in range(256):
            their_code = sum(int(kernel[i, j, k]) for i, j, k in itertools.product(range(2), repeat=3)
                             if code >> (4 * i + 2 * j + k) & 1)
            assert ours[code] == pytest.approx(theirs[their_code], rel=1e-12, abs=1e-15)


# --- independent of surface-distance ----------------------------------------------------------------------

def _marching_cubes_triangles(code):
    """Area vectors of scikit-image's Lorensen triangles for a code, complement for more than 4 corners."""
    from skimage import measure
    minority = code if bin(code).count("1") <= 4 else 255 - code
    corners = np.zeros((2, 2, 2))
    for i, j, k in itertools.product(range(2), repeat=3):
        corners[i, j, k] = minority >> (4 * i + 2 * j + k) & 1
    vertices, faces, _, _ = measure.marching_cubes(corners, 0.5, method="lorensen", allow_degenerate=True)
    v = vertices.astype(float)
    return 0.5 * np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])


def test_embedded_triangle_table_regenerates_from_marching_cubes():
    pytest.importorskip("skimage")
    entries = "".join(_TRIANGLES_3D).split("|")
    assert len(entries) == 256
    for code in range(256):
        if code == 0 or bin(code).count("1") > 4:
            assert entries[code] == ""
            continue
        expected = sorted("".join(str(int(round(8 * abs(c)))) for c in t) for t in _marching_cubes_triangles(code))
        assert entries[code].split() == expected, code


def _brute_force(pred, ref, spacing, tolerance):
    """Every 2x2x2 cell enumerated explicitly, its area from its own marching-cubes triangles, nearest
    distances by a KD-tree over cell centres, the percentile by walking the sorted areas."""
    spacing = np.asarray(spacing, float)
    scale = np.array([spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1]])
    area_of = {}
    surfaces = []
    for mask in (pred, ref):
        padded = np.pad(mask, 1)
        centres, areas = [], []
        for cell in itertools.product(*[range(n + 1) for n in mask.shape]):
            block = padded[cell[0]:cell[0] + 2, cell[1]:cell[1] + 2, cell[2]:cell[2] + 2]
            code = sum(int(block[i, j, k]) << (4 * i + 2 * j + k) for i, j, k in itertools.product(range(2), repeat=3))
            if code in (0, 255):
                continue
            if code not in area_of:
                area_of[code] = float(np.linalg.norm(_marching_cubes_triangles(code) * scale, axis=1).sum())
            centres.append(np.asarray(cell) * spacing)
            areas.append(area_of[code])
        surfaces.append((np.array(centres), np.array(areas)))
    within = total = 0.0
    hd = 0.0
    for (own, own_areas), (other, _) in ((surfaces[0], surfaces[1]), (surfaces[1], surfaces[0])):
        distance = cKDTree(other).query(own)[0]
        within += own_areas[distance <= tolerance].sum()
        total += own_areas.sum()
        cumulative = 0.0
        for d, a in sorted(zip(distance, own_areas)):
            cumulative += a
            if cumulative >= 0.95 * own_areas.sum() - 1e-12:
                hd = max(hd, d)
                break
    return within / total, hd


@pytest.mark.parametrize("case", [0, 2, 5])
def test_elements_equal_a_brute_force_enumeration(case):
    pytest.importorskip("skimage")
    kind, shape, spacing, rotated = CASES[case]
    shape = tuple(n // 2 for n in shape)
    rng = np.random.default_rng(case)
    rotation = _rotation(rng, 3) if rotated else np.eye(3)
    pred, ref = _shapes(kind, rng, shape, spacing, rotation)
    nsd, hd95 = _brute_force(pred, ref, spacing, 1.5)
    m = class_metrics(pred, ref, spacing, tolerance_mm=1.5)
    assert abs(m.nsd - nsd) <= 1e-6 and abs(m.hd95 - hd95) <= 1e-6


def test_neighbourhood_codes_name_their_corners():
    mask = np.zeros((2, 3), bool)
    mask[0, 1] = True
    codes = neighbourhood_codes(mask)
    assert codes.shape == (3, 4)
    # the voxel is corner (1, 1) of cell (0, 1), (1, 0) of cell (0, 2), (0, 1) of cell (1, 1), (0, 0) of cell (1, 2)
    assert (codes[0, 1], codes[0, 2], codes[1, 1], codes[1, 2]) == (0b1000, 0b0100, 0b0010, 0b0001)
    assert codes.sum() == 0b1111


# --- 2D label maps through the CLI -------------------------------------------------------------------------

@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
def test_evaluate_scores_2d_label_maps(tmp_path, ending):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    spacing = (0.5, 1.25)  # array axes (y, x)
    ref = np.zeros((20, 16), np.uint8)
    ref[4:12, 3:10] = 1
    ref[13:17, 8:14] = 2
    pred = ref.copy()
    pred[4:12, 10] = 1  # one column too wide
    pred[13, 8:14] = 0
    for k in range(2):
        write_image(ref_dir / f"case{k}{ending}", ref, spacing)
        write_image(pred_dir / f"case{k}{ending}", pred, spacing)
    for convention in ("elements", "voxels"):
        proc = run_autoseg("evaluate", pred_dir, ref_dir, "-q", "--workers", "1", "--surface", convention,
                           "--tolerance", "1.0", check=False)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        summary = json.loads((pred_dir / "summary.json").read_text())
        assert summary["surface_convention"] == convention and summary["labels"] == [1, 2]
        for label in (1, 2):
            expected = class_metrics(pred == label, ref == label, spacing, 1.0, surface_convention=convention)
            got = summary["mean"][str(label)]
            assert got["dice"] == pytest.approx(expected.dice) and got["nsd"] == pytest.approx(expected.nsd)
            assert got["hd95"] == pytest.approx(expected.hd95)
            assert got["ref_volume_mm3"] == pytest.approx((ref == label).sum() * 0.5 * 1.25)
        # one column of 1.25 mm too wide: within a 1.25 mm tolerance nothing is off, within 1 mm something is
        assert 0.5 < summary["mean"]["1"]["nsd"] < 1.0 and summary["mean"]["1"]["hd95"] == pytest.approx(1.25)

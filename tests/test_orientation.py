"""Orientation safety: every scan is moved into the plan's voxel orientation (permutations and flips only)
before anything else, in training and prediction, and moved back exactly."""
import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoseg.dataset.image_io import Geometry
from autoseg.dataset.orientation import (Reorientation, dataset_orientation, orientation_code, reorient,
                                         reorientation, reoriented_bbox, reoriented_geometry, undo_reorientation)
from autoseg.errors import AutosegError
from autoseg.fingerprint import compute_fingerprint
from autoseg.jsonio import to_dict

from conftest import run_autoseg, synthetic_case, train_tiny, write_nifti


def _all_moves():
    for permutation in itertools.permutations(range(3)):
        for flips in itertools.product((False, True), repeat=3):
            yield Reorientation(permutation, flips)


def _world(geometry: Geometry, index_zyx) -> np.ndarray:
    direction = np.asarray(geometry.direction).reshape(3, 3)
    return np.asarray(geometry.origin) + direction @ (np.asarray(index_zyx, float)[::-1] * np.asarray(geometry.spacing)[::-1])


def test_every_move_keeps_each_voxel_at_its_world_position_and_undoes_exactly():
    rng = np.random.default_rng(0)
    shape = (4, 5, 6)
    volume = rng.random(shape)
    oblique = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    geometry = Geometry((1.5, 0.7, 2.0), (3.0, -4.0, 5.0), tuple(oblique.ravel()))
    for move in _all_moves():
        moved = reorient(volume, move)
        moved_geometry = reoriented_geometry(geometry, shape, move)
        assert np.array_equal(undo_reorientation(moved, move), volume)
        for index in [(0, 0, 0), (1, 2, 3), tuple(s - 1 for s in moved.shape)]:
            old = [0, 0, 0]
            for new_axis, old_axis in enumerate(move.permutation):
                old[old_axis] = moved.shape[new_axis] - 1 - index[new_axis] if move.flips[new_axis] else index[new_axis]
            assert moved[index] == volume[tuple(old)]
            assert np.allclose(_world(moved_geometry, index), _world(geometry, old))
        # and the move that brings it back is found from its direction alone
        back = reorientation(moved_geometry.direction, orientation_code(geometry.direction))
        assert np.array_equal(reorient(moved, back), volume)


def test_bbox_follows_the_move():
    mask = np.zeros((6, 7, 8), bool)
    mask[1:3, 2:6, 3:4] = True
    for move in _all_moves():
        moved = reorient(mask, move)
        hits = np.argwhere(moved)
        expected = [[int(hits[:, a].min()), int(hits[:, a].max()) + 1] for a in range(3)]
        assert reoriented_bbox([[1, 3], [2, 6], [3, 4]], mask.shape, move) == expected


def test_dataset_orientation_is_the_most_common_with_a_stable_tie_break():
    assert dataset_orientation(["LPS", "RAS", "RAS"]) == "RAS"
    assert dataset_orientation(["RAS", "LPS"]) == "LPS"
    with pytest.raises(AutosegError, match="not an orientation code"):
        reorientation(np.eye(3).ravel(), "RAX")


# --- scans written in all 48 signed axis orders -------------------------------------------------------


def signed_axis_orders(data_xyz: np.ndarray, affine: np.ndarray):
    """(name, array, affine) for every permutation and flip of the file's axes, every voxel at its world place."""
    for p in itertools.permutations(range(3)):
        for flips in itertools.product((False, True), repeat=3):
            array = np.transpose(data_xyz, p)
            index_map = np.zeros((4, 4))
            index_map[3, 3] = 1
            for new_axis, (old_axis, flip) in enumerate(zip(p, flips)):
                if flip:
                    array = np.flip(array, new_axis)
                index_map[old_axis, new_axis] = -1 if flip else 1
                index_map[old_axis, 3] = array.shape[new_axis] - 1 if flip else 0
            name = "p" + "".join(map(str, p)) + "f" + "".join(str(int(f)) for f in flips)
            yield name, np.ascontiguousarray(array), affine @ index_map


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("orientation"), 1, ["0"])


def test_one_scan_in_48_axis_orders_gives_the_same_labels_in_world_space(trained, tmp_path):
    source = Path(json.loads((trained / "fingerprint.json").read_text())["dataset_dir"]) / "imagesTr"
    scan = nib.load(str(source / "case_000_0000.nii.gz"))
    data = np.asanyarray(scan.dataobj).astype(np.float32)
    # an anisotropic grid, so a wrong axis order would also resample wrongly
    affine = scan.affine @ np.diag([1.0, 1.0, 2.0, 1.0])
    inputs = tmp_path / "in"
    for name, array, moved_affine in signed_axis_orders(data, affine):
        write_nifti(inputs / f"{name}_0000.nii.gz", array, moved_affine, sform_code=1)
    out = tmp_path / "out"
    # without mirroring: every order reaches the network as the same array, so equality must hold without it
    run_autoseg("predict", "-i", inputs, "-o", out, "-m", trained / "models", "-q", "--device", "cpu",
                "--precision", "fp32", "--no-tta")
    reference = None
    for path in sorted(out.glob("p*.nii.gz")):
        written = nib.load(str(path))
        source_image = nib.load(str(inputs / path.name.replace(".nii.gz", "_0000.nii.gz")))
        assert np.array_equal(written.affine, source_image.affine) and written.shape == source_image.shape
        in_world_order = nib.as_closest_canonical(written)
        labels = np.asanyarray(in_world_order.dataobj)
        if reference is None:
            reference, reference_affine = labels, in_world_order.affine
            assert labels.any() and (labels == 0).any(), "a trivial label map would prove nothing"
        assert np.array_equal(in_world_order.affine, reference_affine)
        assert np.array_equal(labels, reference), f"{path.name} differs in world space"
    assert len(list(out.glob("p*.nii.gz"))) == 48


STORED_OTHERWISE = {1: "p201f101", 2: "p120f010"}


def test_mixed_orientation_dataset_trains_on_consistently_oriented_arrays(tmp_path):
    """Half the cases stored with their axes in another order: the fingerprint, plan and preprocessed
    arrays are exactly those of the same dataset stored consistently."""
    from autoseg.preprocessing.storage import load_case

    rng = np.random.default_rng(3)
    cases = [synthetic_case(rng, (10, 14, 12)) for _ in range(4)]
    affine = np.diag([1.0, 1.5, 2.5, 1.0])  # RAS, anisotropic: a permuted case has permuted spacings
    moves = list(signed_axis_orders(np.zeros((2, 3, 4)), affine))

    def write(root: Path, mixed: bool) -> Path:
        for i, (images, label) in enumerate(cases):
            image_xyz, label_xyz = images[0].transpose(2, 1, 0), label.transpose(2, 1, 0)
            if mixed and i in STORED_OTHERWISE:
                image_xyz, image_affine = _move(image_xyz, affine, STORED_OTHERWISE[i])
                label_xyz, _ = _move(label_xyz, affine, STORED_OTHERWISE[i])
            else:
                image_affine = affine
            write_nifti(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz", image_xyz, image_affine)
            write_nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", label_xyz.astype(np.uint8), image_affine)
        (root / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 4,
            "file_ending": ".nii.gz", "name": "Mixed"}))
        return root

    consistent, mixed = write(tmp_path / "consistent", False), write(tmp_path / "mixed", True)
    fp_consistent, fp_mixed = (compute_fingerprint(d, workers=1, progress=False) for d in (consistent, mixed))
    assert fp_mixed.orientation == fp_consistent.orientation == "RAS"
    assert [c.orientation for c in fp_mixed.cases] == \
        ["RAS", orientation_code(_lps(moves, "p201f101")), orientation_code(_lps(moves, "p120f010")), "RAS"]
    assert len({c.orientation for c in fp_mixed.cases}) == 3
    for a, b in zip(fp_consistent.cases, fp_mixed.cases):
        assert (a.spacing, a.shape_before_crop, a.shape_after_crop, a.nonzero_bbox) == \
            (b.spacing, b.shape_before_crop, b.shape_after_crop, b.nonzero_bbox)
    outputs = {}
    for name, root in (("consistent", consistent), ("mixed", mixed)):
        outputs[name] = tmp_path / f"{name}.autoseg"
        run_autoseg("plan", root, "-o", outputs[name], "--configs", "3d_fullres", "--preprocess", "-q",
                    "--workers", "1")
    plans = {k: json.loads((v / "plan.json").read_text()) for k, v in outputs.items()}
    for plan in plans.values():
        plan.pop("dataset_name"), plan.pop("fingerprint_file")
    assert plans["consistent"] == plans["mixed"]
    folder = next((outputs["consistent"] / "preprocessed").iterdir()).name
    for i in range(4):
        a = load_case(outputs["consistent"] / "preprocessed" / folder, f"case_{i:03d}")
        b = load_case(outputs["mixed"] / "preprocessed" / folder, f"case_{i:03d}")
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), f"case_{i:03d} differs"
        assert to_dict(a[2])["class_locations"] == to_dict(b[2])["class_locations"]


def _move(array_xyz, affine, name):
    for candidate, moved, moved_affine in signed_axis_orders(array_xyz, affine):
        if candidate == name:
            return moved, moved_affine
    raise AssertionError(name)


def _lps(moves, name):
    """The ITK (LPS) direction of the move's affine."""
    affine = next(a for n, _, a in moves if n == name)
    linear = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return (np.diag([-1.0, -1.0, 1.0]) @ linear).ravel()


def test_plans_from_before_orientation_are_refused_with_a_clear_message(trained, tmp_path):
    plan = json.loads((trained / "plan.json").read_text())
    plan["version"] = 1
    plan.pop("orientation")
    old = tmp_path / "old"
    old.mkdir()
    (old / "plan.json").write_text(json.dumps(plan))
    proc = run_autoseg("preprocess", old, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "written by an older autoseg" in proc.stderr and "rerun autoseg plan" in proc.stderr

"""The resampler equals nnU-Net 2.8.1's: skimage resize(order=3, mode="edge", anti_aliasing=False, clip=True)
for images, i.e. scipy's prefiltered cubic B-spline in mode "nearest" at pixel-centre aligned positions,
clamped to the input's range (per slice in the separate-z path); batchgenerators' resize_segmentation
(order 1, ties to the nearest-neighbour label) for labels; nnU-Net's rule for the separate axis."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from autoseg.preprocessing import resample
from autoseg.preprocessing.resample import (axis_kernels, resample_argmax, resample_label, resample_volume,
                                            sample_positions, separate_coarse_axis)

SHAPES = [((7, 9, 11), (13, 5, 20)), ((30, 12, 9), (11, 25, 9)), ((4, 6, 5), (4, 12, 2)), ((1, 8, 6), (3, 8, 6))]


def _grid(shape, new_shape):
    return np.stack(np.meshgrid(*[sample_positions(n, m) for n, m in zip(shape, new_shape)], indexing="ij"))


def _volume(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("shape,new_shape", SHAPES)
def test_cubic_equals_scipy_prefiltered_spline(shape, new_shape):
    volume = _volume(shape)
    got = resample_volume(volume, new_shape, ["cubic"] * 3, clip=False)
    zoomed = ndimage.zoom(volume.astype(np.float64), np.divide(new_shape, shape), order=3, mode="nearest",
                          grid_mode=True)
    mapped = ndimage.map_coordinates(volume.astype(np.float64), _grid(shape, new_shape), order=3, mode="nearest",
                                     prefilter=True)
    assert zoomed.shape == got.shape
    assert np.abs(got - zoomed).max() < 1e-5
    assert np.abs(got - mapped).max() < 1e-5


def test_the_spline_is_not_keys_cubic_convolution():
    """A resampler without the prefilter (cubic convolution, or the B-spline on raw samples) misses by far
    more than the tolerance above, so the comparison can fail."""
    volume = _volume((12, 12, 12), seed=3)
    unfiltered = ndimage.map_coordinates(volume.astype(np.float64), _grid(volume.shape, (17, 17, 17)), order=3,
                                         mode="nearest", prefilter=False)
    got = resample_volume(volume, (17, 17, 17), ["cubic"] * 3, clip=False)
    assert np.abs(got - unfiltered).max() > 0.1


@pytest.mark.parametrize("shape,new_shape", SHAPES)
def test_cubic_equals_skimage_resize(shape, new_shape):
    transform = pytest.importorskip("skimage.transform")
    volume = _volume(shape, seed=1) * 100
    expected = transform.resize(volume.astype(np.float64), new_shape, 3, mode="edge", anti_aliasing=False, clip=True)
    assert np.abs(resample_volume(volume, new_shape, ["cubic"] * 3) - expected).max() < 1e-3  # 1e-5 relative


def test_clamped_to_the_input_range():
    step = np.zeros((6, 6, 6), np.float32)
    step[:, :, 3:] = 10.0
    free = resample_volume(step, (6, 6, 17), ["cubic"] * 3, clip=False)
    assert free.max() > 10.2 and free.min() < -0.2  # the spline overshoots at the step...
    clamped = resample_volume(step, (6, 6, 17), ["cubic"] * 3)
    assert clamped.min() == 0.0 and clamped.max() == 10.0  # ...and nnU-Net cuts it at the input's range
    assert np.array_equal(clamped, np.clip(free, 0, 10))


def _separate_z_reference(volume, new_shape, axis):
    """nnU-Net's separate-z path written out: each slice along `axis` resized in 2D (cubic, clamped to the
    slice's own range), then nearest neighbour along `axis` (map_coordinates order 0, mode nearest)."""
    moved = np.moveaxis(volume.astype(np.float64), axis, 0)
    plane = [s for a, s in enumerate(new_shape) if a != axis]
    slices = []
    for s in moved:
        out = ndimage.zoom(s, np.divide(plane, s.shape), order=3, mode="nearest", grid_mode=True)
        slices.append(np.clip(out, s.min(), s.max()))
    stack = np.moveaxis(np.stack(slices), 0, axis)
    return ndimage.map_coordinates(stack, _grid(stack.shape, new_shape), order=0, mode="nearest")


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_separate_z_is_nearest_along_the_coarse_axis_and_clamped_per_slice(axis):
    shape = [9, 10, 11]
    shape[axis] = 4
    volume = _volume(shape, seed=2)
    # slices of very different range: a clamp to the whole volume's range would leave the small ones' overshoot
    index = [slice(None)] * 3
    index[axis] = 0
    volume[tuple(index)] = np.where(volume[tuple(index)] > 0, 0.1, 0.0)
    new_shape = [13, 7, 16]
    new_shape[axis] = 10
    kernels = axis_kernels("cubic", axis, "nearest")
    got = resample_volume(volume, new_shape, kernels)
    expected = _separate_z_reference(volume, new_shape, axis)
    assert np.abs(got - expected).max() < 1e-5
    whole_range = np.clip(resample_volume(volume, new_shape, kernels, clip=False), volume.min(), volume.max())
    assert np.abs(whole_range - expected).max() > 1e-3


def test_separate_axis_rule():
    assert separate_coarse_axis((5.0, 0.8, 0.8), (1.0, 1.0, 1.0), 3.0) == 0
    assert separate_coarse_axis((0.7, 0.7, 4.0), (0.9, 0.9, 3.1), 3.0) == 2
    assert separate_coarse_axis((1.0, 1.0, 1.0), (1.0, 4.5, 1.0), 3.0) == 1  # the target grid decides
    assert separate_coarse_axis((1.0, 1.0, 1.2), (0.9, 0.9, 0.8), 3.0) is None
    # two equally coarse axes: nothing is resampled separately (not one of them picked by argmax) ...
    assert separate_coarse_axis((5.0, 5.0, 1.0), (2.0, 2.0, 1.0), 3.0) is None
    # ... and the source grid's verdict stands even when the target would name an axis
    assert separate_coarse_axis((5.0, 5.0, 1.0), (1.0, 1.0, 4.0), 3.0) is None
    assert axis_kernels("cubic", None, "nearest") == ["cubic"] * 3


def test_equal_coarse_axes_resample_every_axis_with_the_spline():
    volume = _volume((4, 4, 12), seed=4)
    spacing, target = (5.0, 5.0, 1.0), (2.0, 2.0, 1.0)
    kernels = axis_kernels("cubic", separate_coarse_axis(spacing, target, 3.0), "nearest")
    expected = ndimage.zoom(volume.astype(np.float64), (2.5, 2.5, 1.0), order=3, mode="nearest", grid_mode=True)
    expected = np.clip(expected, volume.min(), volume.max())
    assert np.abs(resample_volume(volume, (10, 10, 12), kernels) - expected).max() < 1e-5


@pytest.mark.parametrize("values,expected", [((0, 1), 1), ((1, 0), 0), ((1, 2), 2), ((2, 1), 1)])
def test_label_ties_go_to_the_nearest_neighbour(values, expected):
    """2 -> 3 samples puts the middle one exactly halfway (0.5/0.5); its nearest neighbour (floor(x + 0.5))
    is the second input voxel. Neither the lowest nor the highest label wins every row of this table."""
    label = np.array(values, np.int8).reshape(2, 1, 1)
    out = resample_label(label, (3, 1, 1), ["linear"] * 3)
    assert out.ravel().tolist() == [values[0], expected, values[1]]


def test_labels_equal_batchgenerators_resize_segmentation():
    utils = pytest.importorskip("batchgenerators.augmentations.utils")
    rng = np.random.default_rng(5)
    for _ in range(80):  # up to six labels: voxels where three or four meet are exact ties only in real numbers
        label = rng.integers(-1, 5, size=tuple(rng.integers(2, 8, size=3))).astype(np.int8)
        new_shape = tuple(int(s) for s in rng.integers(2, 14, size=3))
        expected = utils.resize_segmentation(label, new_shape, order=1)
        assert np.array_equal(resample_label(label, new_shape, ["linear"] * 3), expected)


def test_separate_z_labels_are_2d_per_slice_then_nearest():
    utils = pytest.importorskip("batchgenerators.augmentations.utils")
    label = np.random.default_rng(6).integers(0, 3, size=(3, 6, 7)).astype(np.int8)
    new_shape = (8, 11, 5)
    planes = np.stack([utils.resize_segmentation(s, new_shape[1:], order=1) for s in label]).astype(np.float64)
    expected = ndimage.map_coordinates(planes, _grid(planes.shape, new_shape), order=0, mode="nearest")
    got = resample_label(label, new_shape, axis_kernels("linear", 0, "nearest"))
    assert np.array_equal(got, expected.astype(np.int8))


def test_streaming_equals_one_shot(monkeypatch):
    volume = _volume((40, 9, 8), seed=7)
    volumes = np.stack([volume, _volume((40, 9, 8), seed=8), _volume((40, 9, 8), seed=9)])
    label = np.random.default_rng(10).integers(0, 3, size=(40, 9, 8)).astype(np.uint8)
    cases = [((23, 10, 8), ["cubic"] * 3), ((97, 6, 11), ["cubic"] * 3), ((97, 6, 11), axis_kernels("cubic", 0, "nearest")),
             ((31, 12, 8), axis_kernels("cubic", 2, "nearest"))]
    one_shot = [(resample_volume(volume, s, k), resample_label(label, s, [x.replace("cubic", "linear") for x in k]),
                 resample_argmax(volumes, s, k)) for s, k in cases]
    monkeypatch.setattr(resample, "BLOCK_VOXELS", 50)  # one or two output rows per block
    monkeypatch.setattr(resample, "LABEL_BLOCK_VOXELS", 50)
    for (shape, kernels), (image, labels, best) in zip(cases, one_shot):
        assert np.abs(resample_volume(volume, shape, kernels) - image).max() < 1e-6
        assert np.array_equal(resample_label(label, shape, [x.replace("cubic", "linear") for x in kernels]), labels)
        assert np.array_equal(resample_argmax(volumes, shape, kernels), best)


def test_unchanged_axes_are_copied_and_only_changed_ones_interpolated():
    volume = _volume((5, 7, 9), seed=11)
    assert np.array_equal(resample_volume(volume, (5, 7, 9), ["cubic"] * 3), volume)
    out = resample_volume(volume, (5, 7, 13), ["cubic"] * 3)
    expected = np.stack([np.stack([resample.resample_axis(volume[i, j][None, None], 2, 13, "cubic")[0, 0]
                                   for j in range(7)]) for i in range(5)])
    assert np.abs(out - np.clip(expected, volume.min(), volume.max())).max() < 1e-6

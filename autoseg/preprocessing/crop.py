"""Cropping to the region where any channel is nonzero."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_fill_holes

from autoseg.fingerprint import bbox_of

OUTSIDE = -1  # label value of voxels outside the nonzero region: the loss ignores them


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels nonzero in any channel, holes filled (dark tissue inside the body stays inside)."""
    return binary_fill_holes(np.any(image != 0, axis=0))


def crop_to_nonzero(image: np.ndarray, label: np.ndarray | None):
    """Returns (image, label, mask, bbox) cropped to the nonzero bounding box.

    Background label voxels outside the mask become OUTSIDE.
    """
    mask = nonzero_mask(image)
    bbox = bbox_of(mask)
    region = tuple(slice(a, b) for a, b in bbox)
    mask = mask[region]
    image = image[(slice(None),) + region]
    if label is not None:
        label = label[region].astype(np.int8 if label.max(initial=0) < 128 else np.int16)
        label[(label == 0) & ~mask] = OUTSIDE
    return image, label, mask, bbox

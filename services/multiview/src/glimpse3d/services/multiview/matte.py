"""Matte helpers shared by the ``render`` and ``zero123`` backends: an object's hull in a view and
the photo's background colour."""

from __future__ import annotations

import math
from typing import cast

import cv2
import numpy as np


def photo_background(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """[3] median colour of the photo ([H, W, 3] in [0, 1]) outside its matte [H, W]; white if unknown."""
    if mask is None:
        return np.ones(3, np.float32)
    outside = mask < 0.05
    if int(outside.sum()) < 16:
        return np.ones(3, np.float32)
    return np.median(image[outside], axis=0).astype(np.float32)


def _fill_enclosed(binary: np.ndarray) -> np.ndarray:
    """``binary`` [H, W] uint8 {0, 1} with every region not connected to the border set to 1."""
    h, w = binary.shape
    padded = np.pad(binary, 1)  # a free border ring connects all outside regions
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    return (padded | (1 - flood))[1:-1, 1:-1]


def object_hull(alpha: np.ndarray, solid_alpha: float, close_fraction: float) -> np.ndarray:
    """bool [H, W]: solid pixels, closed with a small disc, enclosed holes filled."""
    solid = (alpha >= solid_alpha).astype(np.uint8)
    if not solid.any():
        return solid.astype(bool)
    k = max(3, 2 * math.ceil(close_fraction * min(alpha.shape) / 2) + 1)  # odd diameter
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    pad = k  # closing must not be clipped by the image border
    # uint8 like its input (OpenCV's stubs: any int or float Mat)
    closed = cast(np.ndarray, cv2.morphologyEx(np.pad(solid, pad), cv2.MORPH_CLOSE, kernel))[pad:-pad, pad:-pad]
    return _fill_enclosed(closed | solid).astype(bool)

"""TripoSR's input preparation: foreground crop, grey background, resize to the conditioning size.

TripoSR was trained on object renders centred on a 50 % grey background, the object's bounding
square filling ``foreground_ratio`` (0.85 in the reference scripts) of the frame. The photo is
prepared the same way, with the request's matte as the alpha channel:

1. the bounding box of the pixels with alpha > 0 (alpha as 8-bit, i.e. mask >= 1/510);
2. a square of side ``max(h, w)`` centred on it, then a square of side ``int(side / ratio)``
   centred on that: the *crop*, in photo pixels (it may extend past the photo's border);
3. ``rgb * alpha + 0.5 * (1 - alpha)``, with grey wherever the crop leaves the photo;
4. a bilinear, anti-aliased resize of the crop to ``cond_image_size`` (512).

The crop is kept: it is the virtual camera TripoSR "sees" the object through, and
:func:`~glimpse3d.services.reconstruction.backends.triposr.convert.placement_for_crop` uses it to put the
reconstruction back where the object was in the photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from glimpse3d.core.errors import InvalidInput

FOREGROUND_RATIO = 0.85
BACKGROUND_GREY = 0.5
_ALPHA_EPS = 0.5 / 255.0  # alpha > 0 after 8-bit quantisation


@dataclass(frozen=True)
class Crop:
    """A square of the photo in pixel indices: rows top..top+size-1, columns left..left+size-1."""

    top: int
    left: int
    size: int

    @property
    def center_uv(self) -> tuple[float, float]:
        """The crop centre in image coordinates (u right, v down; pixel (i, j) spans [j, j+1) x [i, i+1))."""
        return self.left + 0.5 * self.size, self.top + 0.5 * self.size


def foreground_crop(mask: np.ndarray, ratio: float = FOREGROUND_RATIO) -> Crop:
    """The crop of ``mask`` [H, W] (values in [0, 1]) whose centred square foreground fills ``ratio``."""
    if not 0.0 < ratio <= 1.0:
        raise InvalidInput(f"foreground_ratio must be in (0, 1], got {ratio}", field="foreground_ratio")
    rows = np.flatnonzero((mask > _ALPHA_EPS).any(axis=1))
    cols = np.flatnonzero((mask > _ALPHA_EPS).any(axis=0))
    if rows.size == 0:
        raise InvalidInput("mask is empty: no pixel with alpha > 0", field="mask")
    h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    side = max(h, w)
    size = max(side, int(side / ratio))
    top = int(rows[0]) - (side - h) // 2 - (size - side) // 2
    left = int(cols[0]) - (side - w) // 2 - (size - side) // 2
    return Crop(top, left, size)


def conditioning_image(image: np.ndarray, mask: np.ndarray, crop: Crop, size: int) -> np.ndarray:
    """image [H, W, 3] and mask [H, W] in [0, 1] -> the grey-composited crop, float32 [size, size, 3]."""
    h, w = mask.shape
    alpha = mask[..., None].astype(np.float32)
    composite = image.astype(np.float32) * alpha + BACKGROUND_GREY * (1.0 - alpha)
    out = np.full((crop.size, crop.size, 3), BACKGROUND_GREY, np.float32)
    r0, c0 = max(crop.top, 0), max(crop.left, 0)
    r1, c1 = min(crop.top + crop.size, h), min(crop.left + crop.size, w)
    if r1 > r0 and c1 > c0:
        out[r0 - crop.top:r1 - crop.top, c0 - crop.left:c1 - crop.left] = composite[r0:r1, c0:c1]
    if crop.size == size:
        return out
    tensor = torch.from_numpy(out).permute(2, 0, 1)[None]
    resized = functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized[0].permute(1, 2, 0).clamp(0.0, 1.0).numpy().astype(np.float32)

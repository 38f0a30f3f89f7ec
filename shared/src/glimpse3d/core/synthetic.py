"""Synthetic objects with known answers, for tests, benchmarks and the demo sample photo.

:func:`textured_object` builds a closed ellipsoid (semi-axes about 0.8 at the origin) out of small
flat surface Gaussians coloured by a checker of hue patches, so that every viewpoint sees a
different, easily recognised pattern. :func:`render_image` renders it (or any splat) to an 8-bit
image through the project's rasterizer, and :func:`default_input_camera` is the camera the sample
photo is taken with: on the orbit at azimuth 0, elevation 0, distance 2.7, 40 degree field of view.

Rendering needs torch; building the splat needs only numpy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.splat import Splat

logger = logging.getLogger(__name__)

DEFAULT_DISTANCE = 2.7
DEFAULT_FOV_Y_DEG = 40.0
# Semi-axes (x, y, z) of the synthetic ellipsoid, world units.
SEMI_AXES = (0.8, 0.72, 0.66)
DEFAULT_NUM_GAUSSIANS = 6000
# Texture layout: hue sectors around the vertical axis and latitude bands, in a checker.
_SECTORS = 8
_BANDS = 5
_OPACITY = 0.97


def _fibonacci_directions(n: int) -> np.ndarray:
    """[n, 3] nearly uniform unit vectors (Fibonacci lattice; deterministic)."""
    k = np.arange(n, dtype=np.float64) + 0.5
    y = 1.0 - 2.0 * k / n  # [n] from +1 to -1
    r = np.sqrt(np.clip(1.0 - y * y, 0.0, None))
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.sin(phi), y, r * np.cos(phi)], axis=1)


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all inputs [N] in [0, 1]; returns [N, 3]."""
    i = np.floor(h * 6.0).astype(int) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([
        np.stack([v, t, p], 1), np.stack([q, v, p], 1), np.stack([p, v, t], 1),
        np.stack([p, q, v], 1), np.stack([t, p, v], 1), np.stack([v, p, q], 1),
    ])  # [6, N, 3]
    return table[i, np.arange(h.shape[0])]


def checker_colors(directions: np.ndarray) -> np.ndarray:
    """Texture of the synthetic object: [N, 3] colours in [0, 1] for unit directions [N, 3].

    Hue follows the azimuth sector (8 sectors), brightness alternates in a checker with 5 latitude
    bands, so that the front, sides and back of the object all look different.
    """
    azimuth = np.arctan2(directions[:, 0], directions[:, 2])  # [N] in (-pi, pi], 0 towards +z
    sector = np.floor((azimuth + math.pi) / (2 * math.pi) * _SECTORS).astype(int) % _SECTORS
    latitude = np.arcsin(np.clip(directions[:, 1], -1.0, 1.0))  # [N]
    band = np.clip(np.floor((latitude + math.pi / 2) / math.pi * _BANDS).astype(int), 0, _BANDS - 1)
    parity = (sector + band) % 2
    hue = (sector / _SECTORS + 0.37 * parity) % 1.0
    sat = np.where(parity == 0, 0.75, 0.45)
    val = np.where(parity == 0, 0.92, 0.45)
    return hsv_to_rgb(hue, sat, val).astype(np.float32)


def _frame_quats(normals: np.ndarray) -> np.ndarray:
    """[N, 4] (w, x, y, z) quaternions rotating +z onto each unit normal [N, 3]."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, normals)  # [N, 3]
    w = 1.0 + normals @ z  # [N]; quaternion (1 + cos, sin * axis) before normalising
    quats = np.concatenate([w[:, None], axis], axis=1)
    flipped = w < 1e-8  # normal == -z: rotate 180 degrees about x
    quats[flipped] = [0.0, 1.0, 0.0, 0.0]
    return (quats / np.linalg.norm(quats, axis=1, keepdims=True)).astype(np.float32)


def textured_object(
    seed: int = 0,
    n: int = DEFAULT_NUM_GAUSSIANS,
    semi_axes: Sequence[float] = SEMI_AXES,
) -> Splat:
    """A closed, opaque, checker-textured ellipsoid of ``n`` flat surface Gaussians at the origin.

    ``seed`` jitters the sample positions slightly (the texture and shape stay the same), so that
    different seeds give different but equivalent splats; the same seed gives identical arrays.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 16 <= n <= 1_000_000:
        raise InvalidInput(f"n must be an integer in 16..1000000, got {n!r}", field="n")
    axes = np.asarray(semi_axes, dtype=np.float64)
    if axes.shape != (3,) or not np.isfinite(axes).all() or (axes <= 0).any():
        raise InvalidInput(f"semi_axes must be 3 positive numbers, got {semi_axes!r}", field="semi_axes")
    rng = np.random.default_rng(seed)
    dirs = _fibonacci_directions(n)  # [n, 3]
    dirs = dirs + rng.normal(scale=0.15 / math.sqrt(n), size=dirs.shape)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    means = dirs * axes  # [n, 3] on the ellipsoid
    normals = means / axes**2  # [n, 3] gradient of the implicit function
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    # Mean surface spacing from the ellipsoid's area (Knud Thomsen's approximation).
    p = 1.6075
    a, b, c = axes
    area = 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    spacing = math.sqrt(area / n)
    scales = np.tile([0.75 * spacing, 0.75 * spacing, 0.08 * spacing], (n, 1))  # [n, 3] flat discs
    splat = Splat.from_colors(
        means=means.astype(np.float32),
        colors=checker_colors(dirs),
        scales=scales,
        opacities=np.full(n, _OPACITY, np.float32),
        quats=_frame_quats(normals),
    )
    logger.debug("synthetic textured object: %d Gaussians, spacing %.4f", n, spacing)
    return splat


def default_input_camera(size: int = 256) -> Camera:
    """The sample photo's camera: orbit azimuth 0, elevation 0, distance 2.7, fov 40, square ``size``."""
    return orbit_camera(0.0, 0.0, DEFAULT_DISTANCE, width=size, height=size, fov_y_deg=DEFAULT_FOV_Y_DEG)


def render_image(
    splat: Splat,
    camera: Camera,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    rgba: bool = False,
) -> np.ndarray:
    """Render ``splat`` to uint8 [H, W, 3] over ``background`` (or [H, W, 4] with the render's alpha).

    With ``rgba`` the colour channels are still composited over ``background`` (dropping the alpha
    channel gives exactly the RGB image) and the fourth channel is the accumulated opacity.
    """
    import torch

    from glimpse3d.core.render import rasterize

    with torch.no_grad():
        out = rasterize(splat, camera, background=tuple(float(v) for v in background))
    rgb = out.rgb.clamp(0.0, 1.0).cpu().numpy()  # [H, W, 3]
    channels = [rgb]
    if rgba:
        channels.append(out.alpha.clamp(0.0, 1.0).cpu().numpy()[..., None])  # [H, W, 1]
    image = np.concatenate(channels, axis=-1)
    return np.round(image * 255.0).astype(np.uint8)


def render_depth_alpha(splat: Splat, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Expected camera-z depth [H, W] (0 where empty) and alpha [H, W] of ``splat``, float32."""
    import torch

    from glimpse3d.core.render import rasterize

    with torch.no_grad():
        out = rasterize(splat, camera)
    return out.depth.cpu().numpy().astype(np.float32), out.alpha.cpu().numpy().astype(np.float32)

"""``.splat`` files, the compact format of the antimatter15/splat web viewer.

No header; 32 bytes per Gaussian (float32 position and linear scale, uint8 RGBA and quantised
rotation). Lossy: only SH band 0 survives, colour, opacity and rotation are quantised. The writer
orders Gaussians by volume times opacity (``sort=False`` keeps input order); the reader rejects
malformed records with :class:`~glimpse3d.core.errors.InvalidInput`. The layout: docs/formats.md.
"""

from __future__ import annotations

import numpy as np

from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.formats._io import Dest, Source, open_dest, open_source, read_bounded, remaining_size
from glimpse3d.core.formats.registry import SplatFormat, register_format
from glimpse3d.core.splat import MAX_GAUSSIANS, SH_C0, Splat

RECORD_SIZE = 32
SPLAT_DTYPE = np.dtype([("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rot", "u1", (4,))])


def _bad(message: str, field: str = "splat") -> InvalidInput:
    return InvalidInput(message, field=field)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))


def _sort_order(splat: Splat) -> np.ndarray:
    """Indices by descending volume * opacity, via log(volume * opacity) = sum(log_scales) - softplus(-logit)."""
    key = splat.log_scales.astype(np.float64).sum(axis=1) - np.logaddexp(0.0, -splat.opacity_logits.astype(np.float64))
    return np.argsort(-key, kind="stable")


def _linear_scales(log_scales: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", under="ignore"):
        scales = np.exp(log_scales.astype(np.float64)).astype(np.float32)
    bad = ~(np.isfinite(scales) & (scales > 0)).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise _bad(
            f"log_scales {log_scales[i].tolist()} of Gaussian {i} do not fit a positive float32 scale in .splat",
            field="log_scales",
        )
    return scales


def splat_to_splat_bytes(splat: Splat, sort: bool = True) -> bytes:
    """Encode ``splat`` as a ``.splat`` file (see the module docstring for the layout and sort order)."""
    records = np.empty(splat.num_gaussians, dtype=SPLAT_DTYPE)
    records["position"] = splat.means
    records["scale"] = _linear_scales(splat.log_scales)
    rgb = np.clip(0.5 + SH_C0 * splat.sh[:, 0, :].astype(np.float64), 0.0, 1.0)
    records["rgba"][:, :3] = np.rint(rgb * 255.0)
    records["rgba"][:, 3] = np.rint(_sigmoid(splat.opacity_logits) * 255.0)
    records["rot"] = np.clip(np.rint(splat.unit_quats.astype(np.float64) * 128.0 + 128.0), 0, 255)
    return (records[_sort_order(splat)] if sort else records).tobytes()


def write_splat(splat: Splat, dest: Dest, *, sort: bool = True) -> None:
    """Write ``splat`` as a ``.splat`` file to a path or a writable binary stream."""
    data = splat_to_splat_bytes(splat, sort=sort)
    with open_dest(dest) as f:
        f.write(data)


def _check_size(size: int, max_gaussians: int) -> None:
    if size % RECORD_SIZE:
        raise _bad(f".splat data is {size} bytes, not a multiple of the {RECORD_SIZE}-byte record (truncated?)")
    if size // RECORD_SIZE > max_gaussians:
        raise _bad(f".splat file holds {size // RECORD_SIZE} Gaussians, more than the limit of {max_gaussians}")


def _first(mask: np.ndarray | np.bool_) -> int | None:  # numpy types a 2-D .all(axis=1) as either
    return int(np.argmax(mask)) if mask.any() else None


def _decode(data: memoryview, max_gaussians: int) -> Splat:
    _check_size(len(data), max_gaussians)
    records = np.frombuffer(data, dtype=SPLAT_DTYPE)
    scales = records["scale"]
    bad = _first(~(np.isfinite(scales) & (scales > 0)).all(axis=1))
    if bad is not None:
        raise _bad(f".splat record {bad} has scale {scales[bad].tolist()}; scales must be positive and finite")
    quats = (records["rot"].astype(np.float32) - 128.0) / 128.0
    bad = _first(~quats.any(axis=1))
    if bad is not None:
        raise _bad(f".splat record {bad} has a zero rotation quaternion")
    rgba = records["rgba"].astype(np.float64)
    alpha = np.clip(rgba[:, 3], 0.5, 254.5) / 255.0
    return Splat(
        means=records["position"],
        quats=quats / np.linalg.norm(quats, axis=1, keepdims=True),
        log_scales=np.log(scales),
        opacity_logits=(np.log(alpha) - np.log1p(-alpha)).astype(np.float32),
        sh=((rgba[:, None, :3] / 255.0 - 0.5) / SH_C0).astype(np.float32),
    )


def read_splat(src: Source, *, max_gaussians: int = MAX_GAUSSIANS) -> Splat:
    """Read a ``.splat`` file from a path, bytes, or a readable binary stream (SH degree 0).

    Raises :class:`InvalidInput` for a malformed, oversized or non-finite file; errors opening or
    reading a path or stream (``OSError``) propagate unchanged.
    """
    if isinstance(src, bytes | bytearray | memoryview):
        return _decode(memoryview(src).cast("B"), max_gaussians)
    with open_source(src) as f:
        size = remaining_size(f)
        if size is not None:
            _check_size(size, max_gaussians)  # fail fast, before reading anything
        data = read_bounded(f, (max_gaussians + 1) * RECORD_SIZE if size is None else size)
    return _decode(memoryview(data), max_gaussians)


SPLAT = register_format(SplatFormat(
    name="splat", media_type="application/x-glimpse3d-splat", extension=".splat", writer=splat_to_splat_bytes,
    reader=read_splat, proto_enum="SPLAT", sh_degree=0,
    description="web .splat, 32 bytes a Gaussian, lossy (SH band 0 only)"))

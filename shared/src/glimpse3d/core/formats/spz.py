"""``.spz`` files, Niantic's compressed splat format (github.com/nianticlabs/spz).

Writes version 3, the gzip-compressed single-stream layout every spz reader understands (the
reference library, Spark, PlayCanvas splat-transform): a 16-byte header, then per attribute all
Gaussians in a row (positions as 24-bit fixed point, alphas, colours, log scales, rotations as
"smallest three", SH bands 1..3), about 1/13 of a ``.ply``. Reads versions 2 and 3; version 4
(zstd streams) is refused with a clear error since the standard library has no zstd.

Coordinates are stored unchanged: spz keeps Right-Up-Back (three.js's frame), which is Glimpse3D's
world frame, and Spark and splat-transform decode it without conversion. The layout and the
quantisation steps: docs/formats.md.
"""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np

from glimpse3d.core.errors import FailedPrecondition, InvalidInput
from glimpse3d.core.formats._io import READ_CHUNK, Source, open_source, read_bounded
from glimpse3d.core.formats.registry import SplatFormat, register_format
from glimpse3d.core.splat import MAX_GAUSSIANS, MAX_SH_DEGREE, Splat

MAGIC = 0x5053474E  # "NGSP" little-endian
VERSION = 3
HEADER = struct.Struct("<IIIBBBB")  # magic, version, numPoints, shDegree, fractionalBits, flags, reserved
FRACTIONAL_BITS = 12  # the reference's choice: 1/4096 of a unit (~0.25 mm for metres)
COLOR_SCALE = 0.15  # spz stores the band-0 coefficient as byte = sh0 * 0.15 * 255 + 127.5
SH1_BITS, SH_REST_BITS = 5, 4  # the reference's default SH quantisation (bits kept of 8)
FLAG_ANTIALIASED, FLAG_EXTENSIONS = 0x1, 0x2
EXTENSIONS_LIMIT = 1 << 20  # bytes of (skipped) extension records accepted after the attributes
SQRT1_2 = 0.7071067811865476
_SH_REST = {0: 0, 1: 3, 2: 8, 3: 15}  # coefficients per channel beyond band 0, by degree


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, field="spz")


def _fractional_bits(means: np.ndarray) -> int:
    """The most fractional bits (at most 12) for which every coordinate fits a signed 24-bit integer."""
    extent = float(np.abs(means).max()) if means.size else 0.0
    for bits in range(FRACTIONAL_BITS, -1, -1):
        if round(extent * (1 << bits)) < (1 << 23):
            return bits
    raise FailedPrecondition(f"means reach {extent:g}; .spz positions must stay within +-{(1 << 23) - 1}")


def _pack_quats(unit_wxyz: np.ndarray) -> np.ndarray:
    """Smallest-three: 2 bits for the largest component's index (x, y, z, w order), then for each
    other component in order a sign bit and a 9-bit magnitude scaled by 1/sqrt(2), after negating
    the quaternion so that the largest component is positive. [N, 4] uint8 (little-endian uint32)."""
    q = unit_wxyz.astype(np.float64)[:, [1, 2, 3, 0]]
    largest = np.argmax(np.abs(q), axis=1)
    rows = np.arange(len(q))
    q = q * np.where(q[rows, largest] < 0, -1.0, 1.0)[:, None]
    comp = largest.astype(np.uint32)
    for i in range(4):
        value = q[:, i]
        mag = np.minimum(np.floor(511.0 * np.abs(value) / SQRT1_2 + 0.5), 511).astype(np.uint32)
        field = ((value < 0).astype(np.uint32) << 9) | mag
        comp = np.where(largest == i, comp, (comp << 10) | field)
    return comp.astype("<u4").view(np.uint8).reshape(-1, 4)


def _quantize_sh(x: np.ndarray, bits: int) -> np.ndarray:
    bucket = 1 << (8 - bits)
    q = np.rint(x.astype(np.float64) * 128.0) + 128.0
    q = np.floor((q + bucket // 2) / bucket) * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def splat_to_spz_bytes(splat: Splat) -> bytes:
    """Encode ``splat`` as a version-3 ``.spz`` file (see the module docstring)."""
    n, degree = splat.num_gaussians, splat.sh_degree
    bits = _fractional_bits(splat.means)
    fixed = np.rint(splat.means.astype(np.float64) * (1 << bits)).astype("<i4")
    positions = fixed.view(np.uint8).reshape(n, 3, 4)[:, :, :3]  # low three bytes, little-endian
    alphas = _u8(splat.opacities.astype(np.float64) * 255.0)
    colors = _u8(splat.sh[:, 0, :].astype(np.float64) * (COLOR_SCALE * 255.0) + 127.5)
    scales = _u8((splat.log_scales.astype(np.float64) + 10.0) * 16.0)
    rotations = _pack_quats(splat.unit_quats)
    rest = splat.sh[:, 1:, :]  # [N, K-1, 3]: coefficient-major, channels interleaved, as spz stores it
    sh = np.concatenate([_quantize_sh(rest[:, :3], SH1_BITS), _quantize_sh(rest[:, 3:], SH_REST_BITS)], axis=1)
    header = HEADER.pack(MAGIC, VERSION, n, degree, bits, 0, 0)
    body = b"".join(a.tobytes() for a in (positions, alphas, colors, scales, rotations, sh))
    return gzip.compress(header + body, compresslevel=9, mtime=0)


def _attribute_sizes(n: int, degree: int, version: int) -> list[int]:
    return [9 * n, n, 3 * n, 3 * n, (4 if version >= 3 else 3) * n, 3 * _SH_REST[degree] * n]


def _inflate(data: bytes, limit: int) -> bytes:
    """Gunzip at most ``limit`` bytes (more is an error), never allocating past it."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = bytearray()
    try:
        pending = data
        while pending and not inflater.eof:
            out += inflater.decompress(pending, limit + 1 - len(out))
            if len(out) > limit:
                raise _bad(f"the .spz data inflates to more than the {limit} bytes its header allows")
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise _bad(f"the .spz gzip stream is corrupt: {exc}") from None
    if not inflater.eof:
        raise _bad("the .spz gzip stream is truncated")
    return bytes(out)


def _unpack_quats(raw: np.ndarray, version: int) -> np.ndarray:
    """[N, 4] (w, x, y, z) from the packed rotations (v2: xyz bytes, w >= 0; v3: smallest three)."""
    if version < 3:
        xyz = raw.astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - (xyz**2).sum(axis=1)))
        return np.column_stack([w, xyz])
    comp = raw.copy().view("<u4")[:, 0].astype(np.uint64)
    largest = (comp >> np.uint64(30)).astype(np.int64)
    q = np.zeros((len(raw), 4))
    for i in range(3, -1, -1):
        skip = largest == i
        mag = (comp & np.uint64(511)).astype(np.float64) * (SQRT1_2 / 511.0)
        sign = np.where((comp >> np.uint64(9)) & np.uint64(1), -1.0, 1.0)
        q[:, i] = np.where(skip, 0.0, sign * mag)
        comp = np.where(skip, comp, comp >> np.uint64(10))
    rows = np.arange(len(raw))
    q[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - (q**2).sum(axis=1)))
    return q[:, [3, 0, 1, 2]]


def _decode(data: bytes, max_gaussians: int) -> Splat:
    if data[:2] != b"\x1f\x8b":
        if data[:4] == struct.pack("<I", MAGIC):
            version = struct.unpack_from("<I", data, 4)[0] if len(data) >= 8 else 0
            raise _bad(f".spz version {version} (zstd streams) is not supported; versions 2 and 3 (gzip) are")
        raise _bad("data is not a .spz file (no gzip stream)")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        head = inflater.decompress(data, HEADER.size)
    except zlib.error as exc:
        raise _bad(f"the .spz gzip stream is corrupt: {exc}") from None
    if len(head) < HEADER.size:
        raise _bad(f"the .spz header is truncated: {len(head)} of {HEADER.size} bytes")
    magic, version, n, degree, bits, flags, _ = HEADER.unpack(head)
    if magic != MAGIC:
        raise _bad(f"the .spz magic is {magic:#010x}, not {MAGIC:#010x}")
    if version not in (2, 3):
        raise _bad(f".spz version {version} is not supported; versions 2 and 3 are")
    if n > max_gaussians:
        raise _bad(f".spz header declares {n} Gaussians, more than the limit of {max_gaussians}")
    if degree > MAX_SH_DEGREE:
        raise _bad(f".spz SH degree {degree} is not supported (at most {MAX_SH_DEGREE})")
    if bits > 23:
        raise _bad(f".spz fractionalBits {bits} leaves no integer bit in a 24-bit position")
    sizes = _attribute_sizes(n, degree, version)
    expected = HEADER.size + sum(sizes)
    body = _inflate(data, expected + (EXTENSIONS_LIMIT if flags & FLAG_EXTENSIONS else 0))
    if len(body) < expected:
        raise _bad(f".spz data is {len(body)} bytes, {expected} expected for {n} Gaussians (truncated?)")
    if len(body) > expected and not flags & FLAG_EXTENSIONS:
        raise _bad(f".spz data has {len(body) - expected} bytes past its {n} Gaussians")
    parts: list[np.ndarray] = []
    offset = HEADER.size
    for size in sizes:
        parts.append(np.frombuffer(body, np.uint8, size, offset))
        offset += size
    pos, alphas, colors, scales, rots, sh = parts
    raw = pos.reshape(n, 3, 3).astype(np.int32)
    fixed = raw[..., 0] | (raw[..., 1] << 8) | (raw[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    alpha = np.clip(alphas.astype(np.float64), 0.5, 254.5) / 255.0
    rest = (sh.reshape(n, _SH_REST[degree], 3).astype(np.float32) - 128.0) / 128.0
    dc = (colors.reshape(n, 1, 3).astype(np.float32) / 255.0 - 0.5) / COLOR_SCALE
    return Splat(
        means=(fixed.astype(np.float64) / (1 << bits)).astype(np.float32),
        quats=_unpack_quats(rots.reshape(n, -1), version).astype(np.float32),
        log_scales=(scales.reshape(n, 3).astype(np.float32) / 16.0 - 10.0),
        opacity_logits=(np.log(alpha) - np.log1p(-alpha)).astype(np.float32),
        sh=np.concatenate([dc, rest], axis=1),
    )


def read_spz(src: Source, *, max_gaussians: int = MAX_GAUSSIANS) -> Splat:
    """Read a ``.spz`` file (versions 2 and 3) from a path, bytes or a readable binary stream.

    Raises :class:`InvalidInput` (field ``spz``) for a malformed, truncated, oversized or
    unsupported file; the decompressed size is bounded by the header's point count, so a
    decompression bomb is refused before it is inflated. Errors opening a path propagate.
    """
    if isinstance(src, bytes | bytearray | memoryview):
        return _decode(bytes(src), max_gaussians)
    with open_source(src) as f:
        # a gzip stream holds at most ~1032 bytes per compressed byte; cap what is read accordingly
        data = read_bounded(f, max(READ_CHUNK, 64 * (max_gaussians + 1) * 9))
    return _decode(data, max_gaussians)


SPZ = register_format(SplatFormat(
    name="spz", media_type="application/x-spz", extension=".spz", writer=splat_to_spz_bytes, reader=read_spz,
    proto_enum="SPZ", description="Niantic .spz v3, gzip-compressed and quantised (~13x smaller than .ply)"))

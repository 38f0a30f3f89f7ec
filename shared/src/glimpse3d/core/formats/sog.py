"""SOG ("Spatially Ordered Gaussians"), PlayCanvas's compressed splat format, as a ``.sog`` bundle.

A ``.sog`` is a zip of ``meta.json`` (version 2) and lossless WebP images whose texel i holds
Gaussian i, in Morton order of the means so neighbouring texels hold neighbouring Gaussians (which
is what makes the images compress): ``means_l``/``means_u`` (16-bit log-transformed positions, low
and high bytes), ``quats`` (smallest three, 8 bits each), ``scales`` and ``sh0`` (indices into
256-entry codebooks of log scales and band-0 coefficients; ``sh0``'s alpha is the opacity) and, for
SH degree >= 1, ``shN_labels``/``shN_centroids`` (a k-means palette of the higher bands, whose
values index a third 256-entry codebook). The layout follows PlayCanvas splat-transform's writer
and reader (github.com/playcanvas/splat-transform); values are in the frame of the ``.ply``, as
there. Pillow writes and decodes the WebP images; the codebooks and the palette are computed here
with numpy (1-D and vector k-means). The layout and the losses: docs/formats.md.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from typing import Any

import numpy as np

from glimpse3d.core.errors import FailedPrecondition, InvalidInput
from glimpse3d.core.formats._io import Source, open_source, read_bounded
from glimpse3d.core.formats.registry import SplatFormat, register_format
from glimpse3d.core.splat import MAX_GAUSSIANS, Splat

MEDIA_TYPE = "application/x-sog"
SH_COEFFS = {1: 3, 2: 8, 3: 15}  # coefficients per channel beyond band 0, by degree
MAX_TEXTURE_SIDE = 16383  # WebP's limit
MAX_PALETTE = 65536  # labels are 16-bit
PALETTE_LIMIT = 1024  # the writer's palette size cap: k-means cost grows with rows * palette
KMEANS_SAMPLE = 16384  # rows the palette is fitted on (all rows are then assigned to it)
KMEANS_ITERATIONS = 8
SQRT2 = math.sqrt(2.0)
_FILES = {"means": 2, "scales": 1, "quats": 1, "sh0": 1}
_MAX_ENTRY = 1 << 30  # bytes of any one zip member, decompressed
_MAX_META = 1 << 24


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, field="sog")


# ---------------------------------------------------------------- writing


def _texture_shape(n: int) -> tuple[int, int]:
    width = math.ceil(math.sqrt(n) / 4) * 4
    return width, math.ceil(n / width / 4) * 4


def _morton_order(means: np.ndarray) -> np.ndarray:
    """Indices sorting the means along a 10-bit-per-axis Z-order curve over their bounding box."""
    lo, hi = means.min(axis=0), means.max(axis=0)
    extent = np.where(hi > lo, hi - lo, 1.0)
    cells = np.clip(((means - lo) / extent * 1024.0).astype(np.int64), 0, 1023)
    code = np.zeros(len(means), np.int64)
    for bit in range(10):
        for axis in range(3):
            code |= ((cells[:, axis] >> bit) & 1) << (3 * bit + axis)
    return np.argsort(code, kind="stable")


def _kmeans_1d(values: np.ndarray, k: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A ``k``-entry codebook of the values and each value's index into it (Lloyd's algorithm in 1-D:
    with sorted centroids, the nearest one is found by bisecting the midpoints)."""
    v = values.astype(np.float64).ravel()
    unique = np.unique(v)
    if len(unique) <= k:
        codebook = np.concatenate([unique, np.full(k - len(unique), unique[-1] if len(unique) else 0.0)])
        return codebook, np.searchsorted(unique, v).astype(np.uint8)
    centroids = np.quantile(v, (np.arange(k) + 0.5) / k)
    for _ in range(KMEANS_ITERATIONS * 2):
        centroids = np.unique(centroids)
        labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, v)
        sums = np.bincount(labels, v, len(centroids))
        counts = np.bincount(labels, minlength=len(centroids))
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    centroids = np.sort(centroids)
    labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, v)
    codebook = np.concatenate([centroids, np.full(k - len(centroids), centroids[-1])])
    return codebook, labels.astype(np.uint8)


def _nearest(x: np.ndarray, centroids: np.ndarray, chunk: int = 8192) -> np.ndarray:
    c = centroids.astype(np.float32)
    c2 = (c * c).sum(axis=1)
    out = np.empty(len(x), np.int64)
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk].astype(np.float32)
        out[start : start + chunk] = np.argmin(c2[None, :] - 2.0 * block @ c.T, axis=1)
    return out


def _kmeans(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``k``-vector palette of the rows of ``x`` and each row's index: Lloyd's algorithm on an
    evenly spaced sample of at most KMEANS_SAMPLE (Morton-ordered) rows, seeded with every
    (sample / k)-th of them, then every row assigned to its nearest palette entry."""
    if len(x) <= k:
        return x.astype(np.float64), np.arange(len(x))
    sample = x[np.linspace(0, len(x) - 1, min(len(x), KMEANS_SAMPLE)).astype(np.int64)]
    centroids = sample[np.linspace(0, len(sample) - 1, k).astype(np.int64)].astype(np.float64)
    for _ in range(KMEANS_ITERATIONS):
        labels = _nearest(sample, centroids)
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, sample)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids, _nearest(x, centroids)


def _webp(rgba: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    # exact: keep the RGB of texels whose alpha is 0 (sh0's alpha is the opacity)
    Image.fromarray(rgba, "RGBA").save(out, "WEBP", lossless=True, quality=25, method=2, exact=True)
    return out.getvalue()


def _texture(texels: np.ndarray, shape: tuple[int, int]) -> bytes:
    width, height = shape
    image = np.zeros((width * height, 4), np.uint8)
    image[: len(texels)] = texels
    return _webp(image.reshape(height, width, 4))


def _log_transform(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _pack_quats(unit_wxyz: np.ndarray) -> np.ndarray:
    q = unit_wxyz.astype(np.float64)
    rows = np.arange(len(q))
    largest = np.argmax(np.abs(q), axis=1)
    q = q * (np.where(q[rows, largest] < 0, -1.0, 1.0) * SQRT2)[:, None]
    keep = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    texels = np.empty((len(q), 4), np.uint8)
    texels[:, :3] = np.clip(np.rint(255.0 * (q[rows[:, None], keep] * 0.5 + 0.5)), 0, 255)
    texels[:, 3] = 252 + largest
    return texels


def splat_to_sog_bytes(splat: Splat) -> bytes:
    """Encode ``splat`` as a ``.sog`` bundle (see the module docstring)."""
    n = splat.num_gaussians
    if n == 0:
        raise FailedPrecondition("the splat has no Gaussians; SOG images need at least one texel")
    shape = _texture_shape(n)
    if max(shape) > MAX_TEXTURE_SIDE:
        raise FailedPrecondition(f"the splat has {n} Gaussians, more than a {MAX_TEXTURE_SIDE}-texel WebP holds")
    s = splat.subset(_morton_order(splat.means))
    files: dict[str, bytes] = {}

    logm = _log_transform(s.means.astype(np.float64))
    mins, maxs = logm.min(axis=0), logm.max(axis=0)
    span = np.where(maxs > mins, maxs - mins, 1.0)
    q16 = np.rint(65535.0 * (logm - mins) / span).astype(np.uint16)
    alpha = np.full((n, 1), 255, np.uint8)
    files["means_l.webp"] = _texture(np.hstack([(q16 & 0xFF).astype(np.uint8), alpha]), shape)
    files["means_u.webp"] = _texture(np.hstack([(q16 >> 8).astype(np.uint8), alpha]), shape)
    files["quats.webp"] = _texture(_pack_quats(s.unit_quats), shape)
    scale_book, scale_labels = _kmeans_1d(s.log_scales)
    files["scales.webp"] = _texture(np.hstack([scale_labels.reshape(n, 3), alpha]), shape)
    color_book, color_labels = _kmeans_1d(s.sh[:, 0, :])
    opacity = np.clip(np.rint(s.opacities.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)[:, None]
    files["sh0.webp"] = _texture(np.hstack([color_labels.reshape(n, 3), opacity]), shape)
    meta: dict[str, Any] = {
        "version": 2,
        "asset": {"generator": "glimpse3d"},
        "count": n,
        "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": ["means_l.webp", "means_u.webp"]},
        "scales": {"codebook": scale_book.tolist(), "files": ["scales.webp"]},
        "quats": {"files": ["quats.webp"]},
        "sh0": {"codebook": color_book.tolist(), "files": ["sh0.webp"]},
    }
    degree = s.sh_degree
    if degree > 0:
        coeffs = SH_COEFFS[degree]
        rest = s.sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * coeffs)  # channel-major, as f_rest
        palette, labels = _kmeans(rest, min(n, PALETTE_LIMIT))
        sh_book, palette_labels = _kmeans_1d(palette)
        k = len(palette)
        cells = palette_labels.reshape(k, 3, coeffs).transpose(0, 2, 1)  # [k, coeff, channel]
        centroids = np.zeros((math.ceil(k / 64) * 64, coeffs, 4), np.uint8)
        centroids[:k, :, :3] = cells
        centroids[:, :, 3] = 255
        files["shN_centroids.webp"] = _webp(centroids.reshape(-1, 64 * coeffs, 4))
        label_texels = np.zeros((n, 4), np.uint8)
        label_texels[:, 0], label_texels[:, 1], label_texels[:, 3] = labels & 0xFF, labels >> 8, 255
        files["shN_labels.webp"] = _texture(label_texels, shape)
        meta["shN"] = {"count": k, "bands": degree, "codebook": sh_book.tolist(),
                       "files": ["shN_centroids.webp", "shN_labels.webp"]}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:  # WebP is compressed already
        zf.writestr(zipfile.ZipInfo("meta.json", (1980, 1, 1, 0, 0, 0)), json.dumps(meta))
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


# ---------------------------------------------------------------- reading


def _member(zf: zipfile.ZipFile, name: object, limit: int = _MAX_ENTRY) -> bytes:
    if not isinstance(name, str):
        raise _bad(f"a file name in meta.json is {name!r}, not a string")
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise _bad(f"the .sog bundle has no {name!r}") from None
    if info.file_size > limit:
        raise _bad(f"{name} is {info.file_size} bytes, more than the limit of {limit}")
    try:
        with zf.open(info) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError, ValueError) as exc:
        raise _bad(f"{name} cannot be read from the .sog bundle: {exc}") from None
    if len(data) > limit:
        raise _bad(f"{name} inflates to more than {limit} bytes")
    return data


def _image(zf: zipfile.ZipFile, name: object, min_texels: int, max_texels: int) -> np.ndarray:
    """The RGBA texels of a WebP member, [height, width, 4] uint8, its size checked before decoding."""
    from PIL import Image, UnidentifiedImageError

    data = _member(zf, name)
    try:
        with Image.open(io.BytesIO(data), formats=["WEBP"]) as im:
            width, height = im.size
            if not (0 < width <= MAX_TEXTURE_SIDE and 0 < height <= MAX_TEXTURE_SIDE) or width * height > max_texels:
                raise _bad(f"{name} is {width}x{height} texels, outside what the bundle can need")
            if width * height < min_texels:
                raise _bad(f"{name} has {width * height} texels, fewer than the {min_texels} needed")
            rgba = np.asarray(im.convert("RGBA"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _bad(f"{name} is not a readable WebP image: {exc}") from None
    return rgba


def _obj(meta: dict[str, Any], key: str) -> dict[str, Any]:
    value = meta.get(key)
    if not isinstance(value, dict):
        raise _bad(f"meta.json {key} must be an object, got {value!r:.80}")
    return value


def _numbers(value: object, length: int, where: str) -> np.ndarray:
    if not isinstance(value, list) or len(value) != length:
        raise _bad(f"meta.json {where} must be a list of {length} numbers")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise _bad(f"meta.json {where} must hold only numbers")
    arr = np.array(value, np.float64)
    if not np.isfinite(arr).all():
        raise _bad(f"meta.json {where} has a non-finite value")
    return arr


def _files(obj: dict[str, Any], count: int, where: str) -> list[object]:
    files = obj.get("files")
    if not isinstance(files, list) or len(files) != count:
        raise _bad(f"meta.json {where}.files must list {count} file(s)")
    return files


def _count(meta: dict[str, Any], max_gaussians: int) -> int:
    n = meta.get("count")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_gaussians:
        raise _bad(f"meta.json count must be an integer in 1..{max_gaussians}, got {n!r:.80}")
    return n


def _texels(image: np.ndarray, n: int) -> np.ndarray:
    return image.reshape(-1, 4)[:n]


def _decode(zf: zipfile.ZipFile, max_gaussians: int) -> Splat:
    try:
        meta = json.loads(_member(zf, "meta.json", _MAX_META).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"meta.json is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise _bad("meta.json is not a JSON object")
    if meta.get("version") != 2:
        raise _bad(f"meta.json version {meta.get('version')!r:.40} is not supported; version 2 is")
    n = _count(meta, max_gaussians)
    max_texels = 4 * n + 64 * 1024  # padding to multiples of 4 stays far below this

    def image(key: str, index: int) -> np.ndarray:
        obj = _obj(meta, key)
        files = _files(obj, _FILES[key], key)
        return _texels(_image(zf, files[index], n, max_texels), n)

    means = _obj(meta, "means")
    mins, maxs = _numbers(means.get("mins"), 3, "means.mins"), _numbers(means.get("maxs"), 3, "means.maxs")
    lo, hi = image("means", 0), image("means", 1)
    q16 = lo[:, :3].astype(np.float64) + 256.0 * hi[:, :3]
    logm = mins + (np.where(maxs > mins, maxs - mins, 1.0)) * q16 / 65535.0
    with np.errstate(over="ignore"):
        positions = np.sign(logm) * np.expm1(np.abs(logm))
    if not (np.abs(positions) <= np.finfo(np.float32).max).all():
        raise _bad("meta.json means.mins/maxs decode to positions beyond float32")

    quats = image("quats", 0)
    tags = quats[:, 3].astype(np.int64)
    bad = np.flatnonzero((tags < 252) | (tags > 255))
    if len(bad):
        raise _bad(f"quats texel {int(bad[0])} has tag {int(tags[bad[0]])}, not 252..255")
    largest = tags - 252
    abc = (quats[:, :3].astype(np.float64) / 255.0 * 2.0 - 1.0) / SQRT2
    keep = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    rows = np.arange(n)
    q = np.zeros((n, 4))
    q[rows[:, None], keep] = abc
    q[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - (abc**2).sum(axis=1)))

    scales = _obj(meta, "scales")
    scale_book = _numbers(scales.get("codebook"), 256, "scales.codebook")
    log_scales = scale_book[image("scales", 0)[:, :3]]
    sh0 = _obj(meta, "sh0")
    color_book = _numbers(sh0.get("codebook"), 256, "sh0.codebook")
    colors = image("sh0", 0)
    alpha = np.clip(colors[:, 3].astype(np.float64), 0.5, 254.5) / 255.0
    sh = color_book[colors[:, None, :3]]
    if meta.get("shN") is not None:
        sh = np.concatenate([sh, _decode_shn(zf, _obj(meta, "shN"), n, max_texels)], axis=1)
    return Splat(
        means=positions.astype(np.float32),
        quats=q.astype(np.float32),
        log_scales=log_scales.astype(np.float32),
        opacity_logits=(np.log(alpha) - np.log1p(-alpha)).astype(np.float32),
        sh=sh.astype(np.float32),
    )


def _decode_shn(zf: zipfile.ZipFile, shn: dict[str, Any], n: int, max_texels: int) -> np.ndarray:
    """[N, K-1, 3] higher-band coefficients from the palette, its codebook and the labels."""
    bands, k = shn.get("bands"), shn.get("count")
    if isinstance(bands, bool) or bands not in SH_COEFFS:
        raise _bad(f"meta.json shN.bands must be 1, 2 or 3, got {bands!r:.40}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_PALETTE:
        raise _bad(f"meta.json shN.count must be an integer in 1..{MAX_PALETTE}, got {k!r:.40}")
    coeffs = SH_COEFFS[bands]
    book = _numbers(shn.get("codebook"), 256, "shN.codebook")
    files = _files(shn, 2, "shN")
    rows = math.ceil(k / 64)
    centroids = _image(zf, files[0], 64 * coeffs * rows, 64 * coeffs * rows)
    if centroids.shape[1] != 64 * coeffs:
        raise _bad(f"{files[0]} is {centroids.shape[1]} texels wide, not {64 * coeffs} for {bands} SH band(s)")
    labels_tex = _texels(_image(zf, files[1], n, max_texels), n)
    labels = labels_tex[:, 0].astype(np.int64) | (labels_tex[:, 1].astype(np.int64) << 8)
    bad = np.flatnonzero(labels >= k)
    if len(bad):
        raise _bad(f"shN label {int(labels[bad[0]])} of Gaussian {int(bad[0])} is past the palette of {k}")
    palette = centroids.reshape(-1, coeffs, 4)[:k, :, :3]  # [k, coeff, channel] codebook indices
    return book[palette[labels]]


def read_sog(src: Source, *, max_gaussians: int = MAX_GAUSSIANS) -> Splat:
    """Read a ``.sog`` bundle (meta.json version 2) from a path, bytes or a readable binary stream.

    Raises :class:`InvalidInput` (field ``sog``) for a malformed, truncated, oversized or
    non-finite bundle: every meta.json value, member size, image size and palette index is checked
    before use. Errors opening a path propagate.
    """
    if isinstance(src, bytes | bytearray | memoryview):
        data = bytes(src)
    else:
        with open_source(src) as f:
            data = read_bounded(f, 64 * (max_gaussians + 1) * 16)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            if len(zf.infolist()) > 64:
                raise _bad(f"the .sog bundle has {len(zf.infolist())} members; a SOG has at most 7")
            return _decode(zf, max_gaussians)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        raise _bad(f"data is not a readable .sog (zip) bundle: {exc}") from None


SOG = register_format(SplatFormat(
    name="sog", media_type=MEDIA_TYPE, extension=".sog", writer=splat_to_sog_bytes, reader=read_sog,
    proto_enum="SOG",
    description="PlayCanvas SOG: zip of lossless WebP images and k-means codebooks (~13x smaller than .ply)"))

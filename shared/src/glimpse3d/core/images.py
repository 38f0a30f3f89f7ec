"""Image and array (de)serialisation with strict validation, plus small pixel helpers.

Used by the gateway as well as the services, so it depends on numpy and Pillow only (no torch, no
OpenCV).

- :func:`decode_image` turns untrusted PNG/JPEG bytes into a uint8 ``[H, W, 3]`` or ``[H, W, 4]``
  array. The size is read from the file header and checked *before* any pixel is decoded, the
  whole file is decoded (a truncated file is an error, never a half-grey picture), EXIF
  orientation is applied, and every failure is an :class:`~glimpse3d.core.errors.InvalidInput`
  whose ``field`` is the request field the bytes came from. The decode itself runs inside a
  reservation of the process's pixel budget (:mod:`glimpse3d.core.decodegate`), so concurrent
  decodes of huge images are bounded in memory (RESOURCE_EXHAUSTED beyond it).
- :func:`encode_png` / :func:`encode_npy` / :func:`decode_npy` are the wire formats of images and
  of float32 maps (depth, masks, alpha) in the artifact store.
- :func:`resize_longest`, :func:`to_float`, :func:`to_uint8` are the conversions every stage needs.

Decoding relies on Pillow's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``; it is a process-wide
switch that nothing in Glimpse3D sets, and :func:`decode_image` refuses to run (an INTERNAL error,
not the caller's fault) if something did. A PNG must also end its data with an IEND chunk: Pillow
alone accepts a PNG cut after its last pixel row.
"""

from __future__ import annotations

import io
import logging
import struct
import tokenize
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from glimpse3d.core.decodegate import DecodeGate, process_gate
from glimpse3d.core.errors import Glimpse3DError, InvalidInput

log = logging.getLogger(__name__)

MAX_IMAGE_SIDE = 8192
MAX_IMAGE_BYTES = 32 * 1024 * 1024
# One full-size float plane (8192 x 8192); callers with multi-channel arrays pass their own limit.
MAX_NPY_ELEMENTS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE
NPY_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.uint8), np.dtype(np.bool_))

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # chunk type + its (constant) CRC
_JPEG_MAGIC = b"\xff\xd8\xff"
# Other formats we recognise only to say what they are in the error message.
_OTHER_MAGIC = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\x93NUMPY", "NPY array"),
)
# SOFn markers carry the frame size; C4 (DHT), C8 (JPG extension) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


# --------------------------------------------------------------------------------------------- #
# Decoding
# --------------------------------------------------------------------------------------------- #


def _sniff_format(data: bytes, field: str) -> str:
    """'PNG' or 'JPEG' from the magic bytes; anything else is rejected with a helpful message."""
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    riff_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    named = "WebP" if riff_webp else next((name for magic, name in _OTHER_MAGIC if data.startswith(magic)), None)
    if named is not None:
        raise InvalidInput(f"{field} is a {named} file; only PNG and JPEG images are accepted", field=field)
    raise InvalidInput(f"{field} is not a PNG or JPEG image", field=field)


def _png_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the IHDR chunk, which the PNG spec requires to come first."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOFn segment, walking the marker segments before the scan."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def _check_size(width: int, height: int, max_side: int, field: str) -> None:
    if width < 1 or height < 1:
        raise InvalidInput(f"{field} has an empty size {width}x{height}", field=field)
    if width > max_side or height > max_side:
        raise InvalidInput(f"{field} is {width}x{height} pixels; the limit is {max_side} a side", field=field)


def _open_header(data: bytes, fmt: str, field: str, max_side: int) -> Image.Image:
    """Open the image reading only its header (Pillow is lazy) and check the size; no pixel is decoded."""
    header = _png_header_size(data) if fmt == "PNG" else _jpeg_header_size(data)
    if header is not None:  # before Pillow sees it: its own bomb check would fire first otherwise
        _check_size(*header, max_side, field)
    if fmt == "PNG" and data.rfind(_PNG_IEND) < 0:
        raise InvalidInput(f"{field} is a truncated or corrupt PNG image (no IEND chunk)", field=field)
    with _decode_errors(fmt, field):
        img = Image.open(io.BytesIO(data), formats=[fmt])
    try:
        _check_size(img.width, img.height, max_side, field)
    except InvalidInput:
        img.close()
        raise
    return img


def _load_pixels(img: Image.Image, fmt: str, field: str) -> None:
    """Force the full decode of the pixels (a truncated file is an error)."""
    with _decode_errors(fmt, field):
        img.load()


@contextmanager
def _decode_errors(fmt: str, field: str) -> Iterator[None]:
    """Pillow's many failure types -> InvalidInput naming ``field``."""
    try:
        yield
    except Image.DecompressionBombError as err:  # only reachable with max_side above ~9400
        raise InvalidInput(f"{field} is too large to decode: {err}", field=field) from err
    except UnidentifiedImageError as err:
        raise InvalidInput(f"{field} is not a valid {fmt} image", field=field) from err
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, MemoryError) as err:
        raise InvalidInput(f"{field} is a truncated or corrupt {fmt} image: {err}", field=field) from err


def _apply_orientation(img: Image.Image, field: str) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says. A broken EXIF block is ignored, not fatal."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as err:  # Pillow's EXIF parser raises many types on malformed blocks
        log.warning("ignoring unreadable EXIF orientation", extra={"field": field, "error": str(err)})
        return img


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _high_bit_depth_to_array(img: Image.Image) -> np.ndarray:
    """16/32-bit greyscale ('I;16*', 'I') -> uint8 [H, W, 3|4], scaling 0..65535 to 0..255."""
    raw = np.asarray(img).astype(np.int64)  # [H, W]
    grey = np.clip(np.rint(raw / 257.0), 0, 255).astype(np.uint8)
    channels = [grey, grey, grey]
    trns = img.info.get("transparency")
    if isinstance(trns, int):
        channels.append(np.where(raw == trns, 0, 255).astype(np.uint8))
    return np.stack(channels, axis=-1)


def _to_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 [H, W, 3] or, when the image has transparency, [H, W, 4]."""
    if img.mode.startswith("I"):
        return _high_bit_depth_to_array(img)
    target = "RGBA" if _has_alpha(img) else "RGB"
    if img.mode != target:
        img = img.convert(target)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def decode_image(
    data: bytes,
    *,
    field: str = "image",
    max_side: int = MAX_IMAGE_SIDE,
    max_bytes: int = MAX_IMAGE_BYTES,
    gate: DecodeGate | None = None,
) -> np.ndarray:
    """PNG or JPEG bytes -> uint8 ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA, when the file has alpha).

    Palette, greyscale, greyscale+alpha, 16-bit, CMYK and YCbCr files are converted; palette or
    greyscale transparency (tRNS) becomes an alpha channel. The EXIF orientation is applied, so
    the array is upright as a viewer shows it. Raises only :class:`InvalidInput` (``field`` set)
    for bad input (and :class:`Glimpse3DError` if the process disabled Pillow's truncation check).

    The pixels are decoded inside a reservation of ``width x height`` pixels from ``gate`` (default:
    the process's :func:`~glimpse3d.core.decodegate.process_gate`), made from the header alone:
    :class:`~glimpse3d.core.errors.Overloaded` when the process is already decoding as much as it
    may and no room frees up in time.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInput(f"{field} must be bytes, got {type(data).__name__}", field=field)
    data = bytes(data)
    if not data:
        raise InvalidInput(f"{field} is empty", field=field)
    if len(data) > max_bytes:
        raise InvalidInput(f"{field} is {len(data)} bytes; the limit is {max_bytes}", field=field)
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # pragma: no cover - a process misconfiguration (INTERNAL)
        raise Glimpse3DError(
            f"cannot validate {field}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES was switched on in this process",
            field=field,
        )
    fmt = _sniff_format(data, field)
    img = _open_header(data, fmt, field, max_side)
    try:
        with (gate or process_gate()).reserve(img.width * img.height, field=field):
            _load_pixels(img, fmt, field)
            try:
                arr = _to_array(_apply_orientation(img, field))
            except (OSError, ValueError, SyntaxError, MemoryError) as err:
                raise InvalidInput(f"{field} could not be converted to RGB: {err}", field=field) from err
            img.close()  # before the reservation ends, so that the freed memory can be trimmed
    finally:
        img.close()
    log.debug("decoded image", extra={"field": field, "format": fmt, "shape": list(arr.shape)})
    return arr  # [H, W, 3|4] uint8


# --------------------------------------------------------------------------------------------- #
# Encoding and pixel helpers
# --------------------------------------------------------------------------------------------- #


def to_float(img: np.ndarray) -> np.ndarray:
    """uint8 (0..255), bool or float -> float32 (uint8 scaled to [0, 1]; floats kept as they are)."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    raise InvalidInput(f"image must be uint8, bool or floating point, got {arr.dtype}", field="image")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """uint8 kept; float in [0, 1] (clipped, NaN -> 0) or bool -> uint8 0..255 with rounding."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(arr.dtype, np.floating):
        scaled = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise InvalidInput(f"image must be uint8, bool or floating point, got {arr.dtype}", field="image")


def encode_png(arr: np.ndarray, *, field: str = "image", compress_level: int = 6) -> bytes:
    """uint8 or float ([0, 1], clipped) ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` -> PNG."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise InvalidInput(f"{field} must have shape [H, W], [H, W, 3] or [H, W, 4], got {list(a.shape)}", field=field)
    if max(a.shape[:2]) > MAX_IMAGE_SIDE:
        raise InvalidInput(f"{field} is {a.shape[1]}x{a.shape[0]}; the limit is {MAX_IMAGE_SIDE} a side", field=field)
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise InvalidInput(f"{field} has a non-finite value", field=field)
    try:
        a = to_uint8(a)
    except InvalidInput as err:
        raise InvalidInput(err.message.replace("image", field, 1), field=field) from err
    buf = io.BytesIO()  # fromarray picks L / RGB / RGBA from the shape
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def resize_longest(img: np.ndarray, side: int) -> np.ndarray:
    """Resize so that the longer side is ``side`` pixels, keeping the aspect ratio.

    uint8 ``[H, W]``/``[H, W, 3|4]`` (RGBA is resampled premultiplied, so no dark fringes) or float
    ``[H, W]``/``[H, W, C]`` (per channel). Shrinking uses box-area averaging (no aliasing),
    enlarging uses Lanczos. Returns the same dtype and channel count.
    """
    if int(side) != side or side < 1 or side > MAX_IMAGE_SIDE:
        raise InvalidInput(f"side must be an integer in 1..{MAX_IMAGE_SIDE}, got {side}", field="side")
    a = np.asarray(img)
    if a.ndim not in (2, 3) or 0 in a.shape[:2]:
        raise InvalidInput(f"image must have shape [H, W] or [H, W, C], got {list(a.shape)}", field="image")
    h, w = a.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # Pillow wants (width, height)
    if size == (w, h):
        return a.copy()
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.LANCZOS
    if a.dtype == np.uint8 and (a.ndim == 2 or a.shape[2] in (3, 4)):
        return np.asarray(Image.fromarray(a).resize(size, resample))
    planes = a[:, :, None] if a.ndim == 2 else a
    out = [
        np.asarray(Image.fromarray(np.ascontiguousarray(planes[:, :, c], dtype=np.float32)).resize(size, resample))
        for c in range(planes.shape[2])
    ]
    res = np.stack(out, axis=-1)  # [h', w', C] float32
    if a.dtype == np.uint8:
        res = np.clip(np.rint(res), 0, 255)
    res = res.astype(a.dtype if a.dtype != np.bool_ else np.float32)
    return res[:, :, 0] if a.ndim == 2 else res


# --------------------------------------------------------------------------------------------- #
# .npy
# --------------------------------------------------------------------------------------------- #


def encode_npy(arr: np.ndarray, *, field: str = "array") -> bytes:
    """numpy array (float32/float64/uint8/bool) -> .npy bytes (no pickles)."""
    a = np.asarray(arr)
    if a.dtype.newbyteorder("=") not in NPY_DTYPES:
        raise InvalidInput(f"{field} must be float32, float64, uint8 or bool, got {a.dtype}", field=field)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _read_npy_header(data: bytes, field: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, offset of the data) from the .npy header, without reading data."""
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise InvalidInput(f"{field}: .npy format version {version[0]}.{version[1]} is not supported", field=field)
    except InvalidInput:
        raise
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, tokenize.TokenError) as err:
        # numpy parses the header dict with the tokenizer: an unbalanced bracket is a TokenError.
        raise InvalidInput(f"{field} is not a valid .npy array: {err}", field=field) from err
    return tuple(shape), bool(fortran), np.dtype(dtype), fp.tell()


def decode_npy(
    data: bytes,
    *,
    field: str,
    expect_ndim: int | None = None,
    max_elements: int = MAX_NPY_ELEMENTS,
    require_finite: bool = True,
) -> np.ndarray:
    """.npy bytes -> array (native byte order, writable, C-contiguous).

    The header is validated before any data is read: dtype float32/float64/uint8/bool, the number
    of dimensions when ``expect_ndim`` is given, at most ``max_elements`` elements, and exactly as
    many data bytes as the header promises. Pickled objects are never loaded. Floating arrays must
    be finite unless ``require_finite`` is False. Raises only :class:`InvalidInput`.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInput(f"{field} must be bytes, got {type(data).__name__}", field=field)
    data = bytes(data)
    if not data:
        raise InvalidInput(f"{field} is empty", field=field)
    shape, fortran, dtype, offset = _read_npy_header(data, field)
    if dtype.newbyteorder("=") not in NPY_DTYPES:
        raise InvalidInput(f"{field} must be float32, float64, uint8 or bool, got {dtype}", field=field)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{field} has a negative dimension in shape {list(shape)}", field=field)
    if expect_ndim is not None and len(shape) != expect_ndim:
        raise InvalidInput(f"{field} must be a {expect_ndim}-D array, got shape {list(shape)}", field=field)
    count = 1
    for d in shape:
        count *= int(d)
    if count > max_elements:
        raise InvalidInput(f"{field} has {count} elements; the limit is {max_elements}", field=field)
    want, got = count * dtype.itemsize, len(data) - offset
    if got != want:
        kind = "truncated" if got < want else "followed by extra bytes"
        raise InvalidInput(f"{field} is {kind}: the header promises {want} data bytes, found {got}", field=field)
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    arr = flat.reshape(shape, order="F" if fortran else "C")
    arr = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("="))
    if not arr.flags.writeable:
        arr = arr.copy()
    if require_finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidInput(f"{field} has a non-finite value", field=field)
    return arr

"""Request bodies: the photo upload of ``POST /api/v1/jobs`` (a bounded multipart read and format
checks) and a small limit on every other body (:class:`BodyLimit`).

The limit is the gateway's image limit (:data:`glimpse3d.core.images.MAX_IMAGE_BYTES`) plus a small
allowance for the form's other fields and the multipart framing. A request that announces a larger
``Content-Length`` is refused with 413 before any of its body is read; a chunked request is counted
as it streams in and refused as soon as it passes the limit, so no upload is ever read whole.

Formats are told by their magic bytes, never by the client's ``Content-Type``: PNG and JPEG go to the
gateway as they are (it validates them fully); WebP, which the pipeline does not read, is decoded
here (size checked from its header first) and stored as a lossless PNG; anything else is 415.

Every other request body (the JSON of an enhance, at most a few kilobytes) is limited to
:data:`MAX_JSON_BODY_BYTES` the same way, so that no endpoint reads an unbounded body.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Request
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Receive, Scope, Send

from glimpse3d.core.decodegate import process_gate
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.images import MAX_IMAGE_BYTES, MAX_IMAGE_SIDE, encode_png
from glimpse3d.gateway.http.errors import PayloadTooLarge, UnsupportedMediaType, error_response

PHOTO_FIELD = "photo"
MASK_FIELD = "mask"  # optional: a matte the user drew (white or opaque = object)
EXTRA_FIELD = "extra_photos"  # optional, repeated: more photos of the object (docs/extra-photos.md)
MAX_EXTRA_FILES = 8  # the gateway's MAX_EXTRA_PHOTOS; together at most MAX_IMAGE_BYTES over HTTP
MAX_MASK_BYTES = 8 * 1024 * 1024
FORM_OVERHEAD_BYTES = 64 * 1024  # the other fields and the multipart boundaries and headers
MAX_FIELD_BYTES = 16 * 1024
MAX_JSON_BODY_BYTES = 1024 * 1024
TEXT_FIELDS = ("display_name", "prompt", "request_id", "matte_points", "extra_hints")
INT_FIELDS = ("novel_views", "seed", "enhance_rounds", "resolution")
FLOAT_FIELDS = ("azimuth_deg", "elevation_deg")  # the hint of an added photo
_MAX_FORM_FIELDS = 2 + MAX_EXTRA_FILES + len(TEXT_FIELDS) + len(INT_FIELDS) + len(FLOAT_FIELDS)

_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")  # the latter cannot carry a file
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


@dataclass
class PhotoForm:
    photo: bytes  # PNG or JPEG
    mask: bytes | None = None  # PNG or JPEG, when sent
    text: dict[str, str] = field(default_factory=dict)
    ints: dict[str, int] = field(default_factory=dict)
    floats: dict[str, float] = field(default_factory=dict)
    extras: list[bytes] = field(default_factory=list)  # PNG or JPEG, in the order sent
    transcoded_from: str | None = None  # "WebP" when the upload was converted to PNG


def body_limit() -> int:
    return 2 * MAX_IMAGE_BYTES + MAX_MASK_BYTES + FORM_OVERHEAD_BYTES


def _too_large(size: int | None = None) -> PayloadTooLarge:
    got = f"{size} bytes" if size is not None else "more than that"
    return PayloadTooLarge(f"{PHOTO_FIELD} is too large: {got}; the limit is {MAX_IMAGE_BYTES} bytes",
                           field=PHOTO_FIELD)


def _counting(receive: Callable[[], Awaitable[Any]], limit: int,
              error: Callable[[], Exception] = _too_large) -> Callable[[], Awaitable[Any]]:
    """``receive`` that raises ``error()`` once the body passes ``limit`` bytes."""
    seen = 0

    async def wrapped() -> Any:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise error()
        return message

    return wrapped


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length" and value.isdigit():
            return int(value)
    return None


class BodyLimit:
    """ASGI middleware: bodies of requests other than ``upload_path`` (or paths matching ``upload_pattern``,
    a regular expression) are at most ``limit`` bytes
    (413 when the announced length is larger; a chunked body fails once past the limit)."""

    def __init__(self, app: ASGIApp, upload_path: str | tuple[str, ...], limit: int = MAX_JSON_BODY_BYTES,
                 upload_pattern: str | None = None) -> None:
        self.app = app
        self.upload_paths = (upload_path,) if isinstance(upload_path, str) else tuple(upload_path)
        self.upload_pattern = None if upload_pattern is None else re.compile(upload_pattern)
        self.limit = limit

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is larger than {self.limit} bytes", field="body")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        uploads = scope["type"] == "http" and (scope["path"] in self.upload_paths or (
            self.upload_pattern is not None and self.upload_pattern.fullmatch(scope["path"]) is not None))
        if scope["type"] != "http" or uploads:
            await self.app(scope, receive, send)
            return
        length = _content_length(scope.get("headers", []))
        if length is not None and length > self.limit:
            await error_response(self._error())(scope, receive, send)
            return
        await self.app(scope, _counting(receive, self.limit, self._error), send)


async def read_photo_form(request: Request) -> PhotoForm:
    """Parse and check the multipart form (see the module docstring); the photo comes back as PNG or
    JPEG bytes of at most MAX_IMAGE_BYTES."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith(_FORM_TYPES):
        raise UnsupportedMediaType(
            f"send multipart/form-data with the image in a file field named {PHOTO_FIELD!r}; got "
            f"{content_type or 'no Content-Type'}", field=PHOTO_FIELD)
    length = request.headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit() and int(length) > body_limit():
        raise _too_large(int(length))
    bounded = Request(request.scope, receive=_counting(request.receive, body_limit()))
    form = await bounded.form(max_files=2 + MAX_EXTRA_FILES, max_fields=_MAX_FORM_FIELDS,
                              max_part_size=MAX_FIELD_BYTES)
    try:
        result = PhotoForm(photo=b"")
        extras: list[bytes] = []
        for key, value in form.multi_items():
            if key in (PHOTO_FIELD, MASK_FIELD):
                continue
            if key == EXTRA_FIELD:
                extras.append(await _extra_file(value, len(extras), sum(map(len, extras))))
                continue
            if key not in TEXT_FIELDS and key not in INT_FIELDS and key not in FLOAT_FIELDS:
                raise InvalidInput(f"unknown form field {key!r}; the fields are {PHOTO_FIELD}, {MASK_FIELD}, "
                                   f"{EXTRA_FIELD}, {', '.join(TEXT_FIELDS + INT_FIELDS + FLOAT_FIELDS)}", field=key)
            if not isinstance(value, str):
                raise InvalidInput(f"{key} must be a plain form field, not a file", field=key)
            if key in TEXT_FIELDS:
                result.text[key] = value
            elif key in INT_FIELDS:
                result.ints[key] = _parse_int(key, value)
            else:
                result.floats[key] = _parse_float(key, value)
        upload = form.get(PHOTO_FIELD)
        if upload is None:
            raise InvalidInput(f"{PHOTO_FIELD} is required: a PNG, JPEG or WebP file field", field=PHOTO_FIELD)
        if not isinstance(upload, UploadFile):
            raise InvalidInput(f"{PHOTO_FIELD} must be a file field, not text", field=PHOTO_FIELD)
        if upload.size is not None and upload.size > MAX_IMAGE_BYTES:
            raise _too_large(upload.size)
        data = await upload.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            raise _too_large()
        mask = form.get(MASK_FIELD)
        if mask == "":  # a file input left blank arrives as an empty text part: no mask
            mask = None
        if mask is not None:
            if not isinstance(mask, UploadFile):
                raise InvalidInput(f"{MASK_FIELD} must be a file field (a PNG), not text", field=MASK_FIELD)
            result.mask = await mask.read(MAX_MASK_BYTES + 1) or None  # an empty file field: no mask
            if result.mask is None:
                pass
            elif len(result.mask) > MAX_MASK_BYTES:
                raise PayloadTooLarge(f"{MASK_FIELD} is too large; the limit is {MAX_MASK_BYTES} bytes",
                                      field=MASK_FIELD)
            elif not (result.mask.startswith(_PNG) or result.mask.startswith(_JPEG)):
                raise UnsupportedMediaType(f"{MASK_FIELD} is not a PNG or JPEG image", field=MASK_FIELD)
    finally:
        await form.close()
    result.photo, result.transcoded_from = await _accepted_image(data)
    for i, extra in enumerate(extras):
        result.extras.append((await _accepted_image(extra, f"{EXTRA_FIELD}[{i}]"))[0])
    return result


async def _extra_file(value: Any, index: int, so_far: int) -> bytes:
    """The bytes of the ``index``-th extra photo file field (all of them together at most MAX_IMAGE_BYTES)."""
    name = f"{EXTRA_FIELD}[{index}]"
    if index >= MAX_EXTRA_FILES:
        raise InvalidInput(f"at most {MAX_EXTRA_FILES} {EXTRA_FIELD}", field=EXTRA_FIELD)
    if not isinstance(value, UploadFile):
        raise InvalidInput(f"{name} must be a file field, not text", field=name)
    data = await value.read(MAX_IMAGE_BYTES - so_far + 1)
    if so_far + len(data) > MAX_IMAGE_BYTES:
        raise PayloadTooLarge(f"{EXTRA_FIELD} are too large together; the limit is {MAX_IMAGE_BYTES} bytes",
                              field=EXTRA_FIELD)
    return data


def parse_extra_hints(text: str, count: int) -> list[tuple[float | None, float | None]]:
    """``extra_hints``: JSON ``[hint, ...]`` for the extra photos in order, each ``null``, ``[azimuth]`` or
    ``[azimuth, elevation]`` in degrees; missing trailing entries are ``null``."""
    if not text.strip():
        return [(None, None)] * count
    try:
        hints = json.loads(text)
    except ValueError:
        raise InvalidInput("extra_hints must be JSON: [[azimuth, elevation] or [azimuth] or null, ...]",
                           field="extra_hints") from None
    if not isinstance(hints, list) or len(hints) > count:
        raise InvalidInput(f"extra_hints must be a JSON list of at most {count} hints (one per extra photo)",
                           field="extra_hints")
    out: list[tuple[float | None, float | None]] = []
    for i, hint in enumerate(hints):
        ok = hint is None or (isinstance(hint, list) and 1 <= len(hint) <= 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in hint))
        if not ok:
            raise InvalidInput(f"extra_hints[{i}] must be null, [azimuth] or [azimuth, elevation] in degrees",
                               field=f"extra_hints[{i}]")
        out.append((None, None) if hint is None else (float(hint[0]), float(hint[1]) if len(hint) == 2 else None))
    return out + [(None, None)] * (count - len(out))


def parse_matte_points(text: str) -> tuple[tuple[float, float, bool], ...]:
    """The ``matte_points`` form field: JSON ``[[x, y, keep], ...]`` (x, y fractions, keep true/false)."""
    import json

    if not text.strip():
        return ()
    try:
        data = json.loads(text)
    except ValueError:
        raise InvalidInput("matte_points must be JSON: [[x, y, keep], ...]", field="matte_points") from None
    if not isinstance(data, list) or not all(
            isinstance(p, list) and len(p) == 3 and isinstance(p[2], bool)
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in p[:2]) for p in data):
        raise InvalidInput("matte_points must be JSON: [[x, y, keep], ...] with numbers x, y and true/false keep",
                           field="matte_points")
    return tuple((float(p[0]), float(p[1]), p[2]) for p in data)


def _parse_float(key: str, value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise InvalidInput(f"{key} must be a number, got {value[:40]!r}", field=key) from None
    if not math.isfinite(number):
        raise InvalidInput(f"{key} must be finite, got {value[:40]!r}", field=key)
    return number


def _parse_int(key: str, value: str) -> int:
    text = value.strip()
    if not text:
        raise InvalidInput(f"{key} must be an integer, got an empty value", field=key)
    try:
        return int(text, 10)
    except ValueError:
        raise InvalidInput(f"{key} must be an integer, got {value[:40]!r}", field=key) from None


async def _accepted_image(data: bytes, name: str = PHOTO_FIELD) -> tuple[bytes, str | None]:
    if not data:
        raise InvalidInput(f"{name} is empty", field=name)
    if data.startswith(_PNG) or data.startswith(_JPEG):
        return data, None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return await asyncio.to_thread(webp_to_png, data), "WebP"
    raise UnsupportedMediaType(f"{name} is not a PNG, JPEG or WebP image", field=name)


def webp_to_png(data: bytes) -> bytes:
    """A WebP file (its first frame, EXIF orientation applied) as lossless PNG bytes."""
    try:
        with Image.open(io.BytesIO(data), formats=["WEBP"]) as img:
            width, height = img.size
            if not (1 <= width <= MAX_IMAGE_SIDE and 1 <= height <= MAX_IMAGE_SIDE):
                raise InvalidInput(f"{PHOTO_FIELD} is {width}x{height} pixels; the limit is {MAX_IMAGE_SIDE} a side",
                                   field=PHOTO_FIELD)
            with process_gate().reserve(width * height, field=PHOTO_FIELD):  # bounded like decode_image
                img.load()
                upright = ImageOps.exif_transpose(img)
                alpha = "A" in upright.getbands()
                pixels = np.asarray(upright.convert("RGBA" if alpha else "RGB"), dtype=np.uint8)
                upright.close()
    except InvalidInput:
        raise
    except UnidentifiedImageError:  # its message names an in-memory object, nothing the client can use
        raise InvalidInput(f"{PHOTO_FIELD} is not a readable WebP image", field=PHOTO_FIELD) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise InvalidInput(f"{PHOTO_FIELD} is not a readable WebP image: {err}", field=PHOTO_FIELD) from None
    png = encode_png(pixels, field=PHOTO_FIELD, compress_level=1)
    if len(png) > MAX_IMAGE_BYTES:
        raise _too_large(len(png))
    return png

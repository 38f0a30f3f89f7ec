"""glimpse3d.core.images: strict decoding of untrusted images and .npy arrays, encoders, helpers."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.images import (
    decode_image,
    decode_npy,
    encode_npy,
    encode_png,
    resize_longest,
    to_float,
    to_uint8,
)


def _noise(h: int = 48, w: int = 64, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG stream (valid CRCs) whose IHDR claims width x height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _reject(data: bytes, *needles: str, **kwargs) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        decode_image(data, **kwargs)
    err = info.value
    assert err.field == kwargs.get("field", "image")
    for needle in needles:
        assert needle in err.message, err.message
    return err


# --------------------------------------------------------------------------------------------- #
# decode_image: rejections
# --------------------------------------------------------------------------------------------- #


def test_decode_rejects_empty_bytes():
    _reject(b"", "image is empty")


def test_decode_rejects_non_image_bytes():
    _reject(b"hello, this is certainly not a picture" * 4, "not a PNG or JPEG image")
    _reject(b"\x00" * 100, "not a PNG or JPEG image")


def test_decode_names_the_request_field():
    _reject(b"", "reference is empty", field="reference")


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
def test_decode_rejects_formats_other_than_png_and_jpeg(fmt):
    data = _save(Image.fromarray(_noise()), fmt)
    _reject(data, "only PNG and JPEG")


def test_decode_rejects_npy_bytes_as_image():
    _reject(encode_npy(np.zeros((4, 4), np.float32)), "only PNG and JPEG")


@pytest.mark.parametrize("drop", ["half", "tenth", "iend", "all-but-40", "all-but-20"])
def test_decode_rejects_truncated_png(drop):
    data = _save(Image.fromarray(_noise()), "PNG")
    n = len(data)
    cut = {"half": n // 2, "tenth": n * 9 // 10, "iend": n - 12, "all-but-40": 40, "all-but-20": 20}[drop]
    _reject(data[:cut], "image")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99, 200, 30])
def test_decode_rejects_truncated_jpeg(keep):
    data = _save(Image.fromarray(_noise()), "JPEG", quality=90)
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    _reject(data[:cut], "image")


def test_decode_rejects_corrupt_png_pixel_data():
    data = bytearray(_save(Image.fromarray(_noise()), "PNG"))
    i = data.find(b"IDAT")
    data[i + 100 : i + 110] = b"\x00" * 10
    _reject(bytes(data), "corrupt PNG")


def test_decode_rejects_png_header_claiming_huge_size():
    data = _png_claiming(20000, 20000)
    assert len(data) < 200  # the bytes are tiny; only the header is huge
    _reject(data, "image is 20000x20000 pixels; the limit is 8192 a side")


def test_decode_rejects_jpeg_header_claiming_huge_size():
    data = bytearray(_save(Image.fromarray(_noise()), "JPEG"))
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 5 : sof + 9] = struct.pack(">HH", 20000, 20000)
    _reject(bytes(data), "20000x20000 pixels; the limit is 8192 a side")


def test_decode_applies_max_side():
    data = _save(Image.fromarray(_noise(48, 64)), "PNG")
    _reject(data, "64x48 pixels; the limit is 32 a side", max_side=32)


def test_decode_rejects_too_many_bytes():
    data = _save(Image.fromarray(_noise()), "PNG")
    _reject(data, f"{len(data)} bytes; the limit is 1000", max_bytes=1000)
    _reject(b"\x89PNG\r\n\x1a\n" + bytes(32 * 1024 * 1024), "the limit is 33554432")


def test_decode_rejects_non_bytes():
    with pytest.raises(InvalidInput) as info:
        decode_image("a string")  # type: ignore[arg-type]
    assert info.value.field == "image"


def test_decode_raises_only_invalid_input_on_mangled_files():
    rng = np.random.default_rng(7)
    originals = [
        _save(Image.fromarray(_noise(24, 32)), "PNG"),
        _save(Image.fromarray(_noise(24, 32, 4)), "PNG"),
        _save(Image.fromarray(_noise(24, 32)), "JPEG"),
    ]
    for data in originals:
        for _ in range(60):
            mangled = bytearray(data)
            for pos in rng.integers(0, len(mangled), size=int(rng.integers(1, 8))):
                mangled[pos] = int(rng.integers(0, 256))
            if rng.random() < 0.3:
                mangled = mangled[: int(rng.integers(1, len(mangled)))]
            try:
                out = decode_image(bytes(mangled))
            except InvalidInput as err:
                assert err.field == "image"
            else:
                assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] in (3, 4)


# --------------------------------------------------------------------------------------------- #
# decode_image: conversions and round trips
# --------------------------------------------------------------------------------------------- #


def test_png_rgb_round_trip_is_exact():
    img = _noise()
    out = decode_image(encode_png(img))
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out, img)


def test_png_rgba_keeps_alpha():
    img = _noise(c=4)
    out = decode_image(encode_png(img))
    assert out.shape == (48, 64, 4)
    np.testing.assert_array_equal(out, img)


def test_jpeg_decodes_close_to_the_original():
    img = np.zeros((32, 48, 3), np.uint8)
    img[:, :24] = (200, 40, 30)
    img[:, 24:] = (20, 90, 220)
    out = decode_image(_save(Image.fromarray(img), "JPEG", quality=95))
    assert out.shape == (32, 48, 3)
    assert np.abs(out.astype(int) - img).mean() < 4


def test_greyscale_and_palette_convert_to_rgb():
    grey = _noise(c=1)[:, :, 0]
    out = decode_image(_save(Image.fromarray(grey), "PNG"))
    assert out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out[:, :, 1], grey)
    pal = Image.fromarray(_noise()).convert("P")
    out = decode_image(_save(pal, "PNG"))
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))


def test_transparency_becomes_alpha():
    la = np.stack([_noise(c=1)[:, :, 0], np.full((48, 64), 77, np.uint8)], axis=-1)
    out = decode_image(_save(Image.fromarray(la), "PNG"))
    assert out.shape == (48, 64, 4)
    assert (out[:, :, 3] == 77).all()
    pal = Image.fromarray(np.zeros((8, 8, 3), np.uint8)).convert("P")
    out = decode_image(_save(pal, "PNG", transparency=0))
    assert out.shape == (8, 8, 4) and (out[:, :, 3] == 0).all()


def test_sixteen_bit_png_is_scaled_to_eight_bits():
    raw = (np.arange(120).reshape(12, 10) * 546).astype(np.uint16)  # up to 64974
    out = decode_image(_save(Image.fromarray(raw), "PNG"))
    assert out.shape == (12, 10, 3)
    np.testing.assert_array_equal(out[:, :, 0], np.rint(raw / 257.0).astype(np.uint8))


def test_exif_orientation_is_applied():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(_save(Image.fromarray(img), "JPEG", quality=95, exif=exif))
    assert out.shape == (40, 20, 3)  # upright: portrait
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # the white half is now on top


# --------------------------------------------------------------------------------------------- #
# encode_png and pixel helpers
# --------------------------------------------------------------------------------------------- #


def test_encode_png_clips_floats():
    img = np.array([[[-0.5, 0.5, 1.5]]], np.float32)
    out = decode_image(encode_png(img))
    np.testing.assert_array_equal(out[0, 0], [0, 128, 255])


def test_encode_png_rejects_bad_arrays():
    for bad in (np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4, 3), np.uint8), np.zeros(5, np.uint8)):
        with pytest.raises(InvalidInput) as info:
            encode_png(bad, field="view")
        assert info.value.field == "view"
    with pytest.raises(InvalidInput, match="non-finite"):
        encode_png(np.full((2, 2, 3), np.nan, np.float32))


def test_to_float_and_to_uint8_round_trip():
    img = _noise()
    f = to_float(img)
    assert f.dtype == np.float32 and 0.0 <= f.min() and f.max() <= 1.0
    np.testing.assert_array_equal(to_uint8(f), img)
    assert to_uint8(np.array([np.nan, -1.0, 2.0], np.float32)).tolist() == [0, 0, 255]


def test_resize_longest_keeps_aspect_and_dtype():
    img = _noise(48, 64)
    small = resize_longest(img, 32)
    assert small.shape == (24, 32, 3) and small.dtype == np.uint8
    big = resize_longest(img, 128)
    assert big.shape == (96, 128, 3)
    depth = np.random.default_rng(1).random((48, 64)).astype(np.float32)
    d = resize_longest(depth, 16)
    assert d.shape == (12, 16) and d.dtype == np.float32
    assert abs(float(d.mean()) - float(depth.mean())) < 0.02  # area averaging keeps the mean
    flat = np.full((10, 20, 4), 0.25, np.float32)
    np.testing.assert_allclose(resize_longest(flat, 40), 0.25, atol=1e-5)


# --------------------------------------------------------------------------------------------- #
# .npy
# --------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.bool_])
def test_npy_round_trip(dtype):
    arr = (np.random.default_rng(2).random((5, 7)) * 3).astype(dtype)
    out = decode_npy(encode_npy(arr), field="depth", expect_ndim=2)
    assert out.dtype == arr.dtype and out.flags.writeable and out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr)


def test_npy_big_endian_and_fortran_order_are_normalised():
    arr = np.asfortranarray(np.arange(12, dtype=">f4").reshape(3, 4))
    buf = io.BytesIO()
    np.save(buf, arr)
    out = decode_npy(buf.getvalue(), field="depth")
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, np.arange(12, dtype=np.float32).reshape(3, 4))


def _npy_reject(data: bytes, needle: str, **kwargs) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_npy(data, field="mask", **kwargs)
    assert info.value.field == "mask"
    assert needle in info.value.message, info.value.message


def test_npy_rejects_pickles_and_other_dtypes():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _npy_reject(buf.getvalue(), "float32, float64, uint8 or bool")
    _npy_reject(encode_npy(np.zeros(3, np.float32)).replace(b"<f4", b"<i8"), "float32, float64, uint8 or bool")
    with pytest.raises(InvalidInput):
        encode_npy(np.zeros(3, np.int64))


def test_npy_rejects_wrong_ndim():
    _npy_reject(encode_npy(np.zeros((2, 3, 4), np.float32)), "must be a 2-D array", expect_ndim=2)


def test_npy_checks_element_count_before_reading_data():
    header = encode_npy(np.zeros((1, 1), np.float32))
    huge = header.replace(b"(1, 1)", b"(100000, 100000)")  # the header's padding absorbs the longer shape
    _npy_reject(huge, "10000000000 elements")
    _npy_reject(encode_npy(np.zeros((10, 10), np.float32)), "the limit is 50", max_elements=50)


def test_npy_rejects_truncated_and_padded_data():
    data = encode_npy(np.zeros((16, 16), np.float32))
    _npy_reject(data[:-10], "truncated")
    _npy_reject(data + b"\x00" * 4, "extra bytes")
    _npy_reject(data[:20], "not a valid .npy")
    _npy_reject(b"", "empty")
    _npy_reject(b"not an array at all", "not a valid .npy")


def test_npy_rejects_non_finite_floats_unless_allowed():
    data = encode_npy(np.array([[1.0, np.nan]], np.float32))
    _npy_reject(data, "non-finite")
    assert np.isnan(decode_npy(data, field="mask", require_finite=False)).sum() == 1

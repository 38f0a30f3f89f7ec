"""Property-based fuzzing of every parser and validator that sees untrusted input.

The property everywhere: an input either parses into a well-formed result or raises the project's
own error (:class:`InvalidInput`, a :class:`Glimpse3DError`), never an IndexError, ValueError,
struct.error, UnicodeDecodeError or MemoryError from inside, and never hangs (the profile's deadline
fails a slow example). Inputs: random bytes, valid files written by the project's own encoders and
exporters then mutated (byte flips, truncation, insertion, boundary integers over length fields),
headers with arbitrary sizes, and protobuf messages drawn from their descriptors.

Example counts are the ``ci`` profile's; ``GLIMPSE3D_FUZZ=long`` (``make fuzz``) runs 20 times as many.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from fuzzing import TEXT, fuzz, messages, mutated
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.convert import artifact_from_proto, camera_from_proto, view_from_proto
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.formats import (
    format_for_proto,
    formats,
    get_format,
    read_glb,
    read_ply,
    read_sog,
    read_splat,
    read_spz,
    splat_to_glb_bytes,
    splat_to_ply_bytes,
    splat_to_sog_bytes,
    splat_to_splat_bytes,
    splat_to_spz_bytes,
)
from glimpse3d.core.images import MAX_IMAGE_SIDE, decode_image, decode_npy, encode_npy
from glimpse3d.core.splat import Splat
from glimpse3d.gateway.convert import options_from_proto
from glimpse3d.gateway.jobs import check_tenant, parse_export_name, parse_job_name
from glimpse3d.services.backprojection.api import RefineOptions, TrustedView
from glimpse3d.services.depth.common import check_image, check_points
from glimpse3d.services.diffusion.api import validate_request
from glimpse3d.services.multiview.api import check_request
from glimpse3d.services.reconstruction.api import check_fit_options, check_render_inputs
from glimpse3d.v1 import backprojection_pb2, common_pb2, glimpse3d_pb2

T = TypeVar("T")


def parses_or_invalid(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args)``'s result, or None when it raised InvalidInput with a message; any other
    exception propagates and fails the example."""
    try:
        return fn(*args, **kwargs)
    except InvalidInput as err:
        assert err.message, "InvalidInput without a message"
        return None


# ---- images -----------------------------------------------------------------------------------------


def _encoded(mode: str, fmt: str, size: tuple[int, int] = (7, 5), **save: Any) -> bytes:
    rng = np.random.default_rng(len(mode) + len(fmt))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def _rotated_jpeg() -> bytes:
    img = Image.fromarray(np.full((6, 4, 3), 200, np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


IMAGE_SEEDS = (
    _encoded("RGB", "PNG"), _encoded("RGBA", "PNG"), _encoded("P", "PNG"), _encoded("L", "PNG"),
    _encoded("LA", "PNG"), _encoded("I;16", "PNG"), _encoded("RGB", "PNG", optimize=True),
    _encoded("RGB", "JPEG"), _encoded("L", "JPEG"), _encoded("CMYK", "JPEG"),
    _encoded("RGB", "JPEG", progressive=True), _rotated_jpeg(), _encoded("RGB", "WEBP"),
)  # fmt: skip


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _check_decoded(data: bytes) -> None:
    arr = parses_or_invalid(decode_image, data, field="photo")
    if arr is not None:
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] in (3, 4)
        assert 1 <= arr.shape[0] <= MAX_IMAGE_SIDE and 1 <= arr.shape[1] <= MAX_IMAGE_SIDE


def test_image_seeds_decode() -> None:
    """The mutation seeds are valid (WebP is refused by design): mutations start from real files."""
    for data in IMAGE_SEEDS:
        if data[8:12] == b"WEBP":
            with pytest.raises(InvalidInput, match="WebP"):
                decode_image(data)
        else:
            assert decode_image(data).shape[:2] in ((5, 7), (4, 6))


@fuzz(300)
@given(st.binary(max_size=512))
def test_decode_image_random_bytes(data: bytes) -> None:
    _check_decoded(data)


@fuzz(800)
@given(mutated(IMAGE_SEEDS))
def test_decode_image_mutated_files(data: bytes) -> None:
    _check_decoded(data)


@fuzz(300)
@given(
    width=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, MAX_IMAGE_SIDE, MAX_IMAGE_SIDE + 1, 2**31])),
    height=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, MAX_IMAGE_SIDE, MAX_IMAGE_SIDE + 1, 2**31])),
    depth=st.sampled_from([1, 2, 4, 8, 16, 3, 0]),
    colour=st.sampled_from([0, 2, 3, 4, 6, 1, 7]),
    interlace=st.sampled_from([0, 1, 2]),
    payload=st.binary(max_size=64),
)
def test_decode_image_png_headers(
    width: int, height: int, depth: int, colour: int, interlace: int, payload: bytes
) -> None:
    """A PNG whose IHDR (with a valid CRC) claims any size, followed by a short compressed stream:
    huge sizes are refused before a pixel buffer is allocated."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(payload))
        + _png_chunk(b"IEND", b"")
    )
    _check_decoded(data)
    if min(width, height) >= 1 and max(width, height) > MAX_IMAGE_SIDE:
        with pytest.raises(InvalidInput, match="the limit is"):
            decode_image(data)


@fuzz(300)
@given(
    width=st.integers(0, 0xFFFF),
    height=st.integers(0, 0xFFFF),
    marker=st.sampled_from([0xC0, 0xC1, 0xC2, 0xCF]),
    components=st.integers(0, 5),
    tail=st.binary(max_size=64),
)
def test_decode_image_jpeg_headers(width: int, height: int, marker: int, components: int, tail: bytes) -> None:
    """A JPEG whose SOF segment claims any size (up to 65535 a side) and any component count."""
    sof = struct.pack(">BHHB", 8, height, width, components) + b"\x11\x00" * components
    data = b"\xff\xd8" + bytes([0xFF, marker]) + struct.pack(">H", len(sof) + 2) + sof + tail + b"\xff\xd9"
    _check_decoded(data)
    if min(width, height) >= 1 and max(width, height) > MAX_IMAGE_SIDE:
        with pytest.raises(InvalidInput, match="the limit is"):
            decode_image(data)


# ---- splat files ------------------------------------------------------------------------------------


def _splat(n: int, degree: int, seed: int) -> Splat:
    rng = np.random.default_rng(seed)
    return Splat.from_colors(
        rng.normal(size=(n, 3)),
        rng.uniform(0.1, 0.9, size=(n, 3)),
        0.05,
        0.7,
        quats=rng.normal(size=(n, 4)),
        sh_degree=degree,
    )


SPLATS = (_splat(3, 0, 0), _splat(2, 1, 1), _splat(1, 3, 2))
PLY_SEEDS = tuple(splat_to_ply_bytes(s) for s in SPLATS)
SPLAT_SEEDS = tuple(splat_to_splat_bytes(s) for s in SPLATS)
GLB_SEEDS = tuple(splat_to_glb_bytes(s) for s in SPLATS)
SPZ_SEEDS = tuple(splat_to_spz_bytes(s) for s in SPLATS)
SOG_SEEDS = tuple(splat_to_sog_bytes(s) for s in SPLATS)


def _check_splat(result: Splat | None) -> None:
    if result is not None:
        assert isinstance(result, Splat)
        assert np.isfinite(result.means).all() and np.isfinite(result.sh).all()


def test_splat_seeds_round_trip() -> None:
    for splat, ply, web, glb in zip(SPLATS, PLY_SEEDS, SPLAT_SEEDS, GLB_SEEDS, strict=True):
        assert np.array_equal(read_ply(ply).means, splat.means)
        assert read_splat(web).num_gaussians == splat.num_gaussians
        assert np.allclose(read_glb(glb).means, splat.means)
    for splat, spz, sog in zip(SPLATS, SPZ_SEEDS, SOG_SEEDS, strict=True):
        assert np.allclose(read_spz(spz).means, splat.means, atol=1e-3)
        assert read_sog(sog).num_gaussians == splat.num_gaussians


_PLY_TYPES = ("float", "double", "float32", "uchar", "int", "short", "list uchar float", "bogus")
_PLY_NAMES = ("x", "y", "z", "nx", "f_dc_0", "f_dc_1", "f_dc_2", "f_rest_0", "f_rest_8", "opacity",
              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3", "x")  # fmt: skip


@st.composite
def ply_headers(draw: st.DrawFn) -> bytes:
    """PLY files from a header grammar: any formats, element counts (boundary values included),
    property types and names, line endings, then a body of random length."""
    nl = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    fmt = draw(st.sampled_from(["binary_little_endian 1.0", "binary_big_endian 1.0", "ascii 1.0", "binary 2.0"]))
    lines = ["ply", f"format {fmt}", *draw(st.lists(st.sampled_from(["comment hi", "obj_info x", ""]), max_size=2))]
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["vertex", "face", "vertex", "extra"]))
        count = draw(
            st.one_of(
                st.integers(0, 5),
                st.sampled_from([2**31 - 1, 2**32, 10**30, 4_000_001]),
                st.sampled_from(["-1", "x", "1e3"]),
            )
        )
        lines.append(f"element {name} {count}")
        props = draw(st.lists(st.tuples(st.sampled_from(_PLY_TYPES), st.sampled_from(_PLY_NAMES)), max_size=18))
        lines += [f"property {t} {n}" for t, n in props]
    lines.append("end_header")
    head = nl.join(lines) + nl
    return head.encode("ascii") + draw(st.binary(max_size=256))


def _read_ply_every_way(data: bytes, tmp_dir: Path) -> None:
    """The bytes path, a stream without a file descriptor and a file on disk (plyfile's memory map)."""
    _check_splat(parses_or_invalid(read_ply, data))
    _check_splat(parses_or_invalid(read_ply, io.BytesIO(data)))
    path = tmp_dir / "fuzz.ply"
    path.write_bytes(data)
    _check_splat(parses_or_invalid(read_ply, path))


@fuzz(600)
@given(mutated(PLY_SEEDS))
def test_read_ply_mutated(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    _read_ply_every_way(data, tmp_path_factory.getbasetemp())


@fuzz(600)
@given(ply_headers())
def test_read_ply_header_grammar(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    _read_ply_every_way(data, tmp_path_factory.getbasetemp())


@fuzz(200)
@given(st.binary(max_size=256))
def test_read_ply_random_bytes(data: bytes) -> None:
    _check_splat(parses_or_invalid(read_ply, b"ply\n" + data))
    _check_splat(parses_or_invalid(read_ply, data))


class _Unseekable(io.RawIOBase):
    """A stream that cannot seek or tell its size (a socket, a pipe)."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return self._buf.readinto(b)


@fuzz(400)
@given(st.one_of(mutated(SPLAT_SEEDS), st.binary(max_size=160)))
def test_read_splat(data: bytes) -> None:
    _check_splat(parses_or_invalid(read_splat, data))
    _check_splat(parses_or_invalid(read_splat, io.BufferedReader(_Unseekable(data))))
    _check_splat(parses_or_invalid(read_splat, data, max_gaussians=1))


@fuzz(600)
@given(mutated(GLB_SEEDS))
def test_read_glb_mutated_bytes(data: bytes) -> None:
    _check_splat(parses_or_invalid(read_glb, data))


def _glb_parts(data: bytes) -> tuple[dict[str, Any], bytes]:
    json_len = struct.unpack_from("<I", data, 12)[0]
    doc = json.loads(data[20 : 20 + json_len])
    bin_at = 20 + json_len
    bin_len = struct.unpack_from("<I", data, bin_at)[0]
    return doc, data[bin_at + 8 : bin_at + 8 + bin_len]


def _glb(doc: Any, blob: bytes) -> bytes:
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    blob += b"\x00" * (-len(blob) % 4)
    body = struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(blob), b"BIN\x00") + blob
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**40), 2**40),
        st.sampled_from([0, 1, -1, 2**31, 5126, 5123]),
        st.floats(allow_nan=False, allow_infinity=False),
        TEXT,
        st.sampled_from(["VEC3", "VEC4", "SCALAR"]),
    ),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(TEXT, children, max_size=3)),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indices) to a value inside a JSON document."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _mutate_json(draw: st.DrawFn, doc: dict) -> None:
    """Replace 1..3 of ``doc``'s values (any depth) by arbitrary JSON, or delete them from their object."""
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)


@st.composite
def glb_json_mutations(draw: st.DrawFn) -> bytes:
    """A valid GLB whose JSON has 1..3 values replaced by arbitrary JSON or deleted: wrong types,
    dangling indices, negative or huge offsets, counts and strides."""
    doc, blob = _glb_parts(draw(st.sampled_from(GLB_SEEDS)))
    _mutate_json(draw, doc)
    return _glb(doc, blob)


@fuzz(600)
@given(glb_json_mutations())
def test_read_glb_mutated_json(data: bytes) -> None:
    _check_splat(parses_or_invalid(read_glb, data))


# .spz: mutations of the gzip stream mostly fail its CRC, so the inflated payload is mutated too and
# compressed again (header fields, truncated or extended attribute arrays, any rotation bits).
SPZ_PAYLOADS = tuple(gzip.decompress(s) for s in SPZ_SEEDS)


@fuzz(400)
@given(st.one_of(mutated(SPZ_SEEDS), mutated(SPZ_PAYLOADS).map(lambda p: gzip.compress(p, mtime=0)),
                 st.binary(max_size=128)))
def test_read_spz(data: bytes) -> None:
    _check_splat(parses_or_invalid(read_spz, data))
    _check_splat(parses_or_invalid(read_spz, io.BufferedReader(_Unseekable(data))))
    _check_splat(parses_or_invalid(read_spz, data, max_gaussians=1))


def _sog_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _sog(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


@st.composite
def sog_mutations(draw: st.DrawFn) -> bytes:
    """A valid .sog whose meta.json has 1..3 values replaced by arbitrary JSON or deleted, or one of
    whose images is mutated, re-zipped so that the zip's CRCs hold."""
    members = _sog_members(draw(st.sampled_from(SOG_SEEDS)))
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(n for n in members if n.endswith(".webp"))))
        members[name] = draw(mutated([members[name]]))
        return _sog(members)
    meta = json.loads(members["meta.json"])
    _mutate_json(draw, meta)
    members["meta.json"] = json.dumps(meta).encode()
    return _sog(members)


@fuzz(300)
@given(st.one_of(sog_mutations(), mutated(SOG_SEEDS), st.binary(max_size=128)))
def test_read_sog(data: bytes) -> None:
    _check_splat(parses_or_invalid(read_sog, data))
    _check_splat(parses_or_invalid(read_sog, data, max_gaussians=1))


def test_glb_json_mutation_catches_dangling_indices() -> None:
    """Known answers for what the JSON mutations aim at (each was an uncaught IndexError, KeyError or
    TypeError before the reader checked them)."""
    doc, blob = _glb_parts(GLB_SEEDS[0])
    cases = {
        "accessors[99] does not exist": lambda d: d["meshes"][0]["primitives"][0]["attributes"].update(POSITION=99),
        "count must be an integer": lambda d: d["accessors"][0].update(count="3"),
        "has no POSITION attribute": lambda d: d["meshes"][0]["primitives"][0]["attributes"].pop("POSITION"),
        "reaches past the end": lambda d: d["bufferViews"][0].update(byteOffset=10**6),
        "byteStride must be an integer >= 12": lambda d: d["bufferViews"][0].update(byteStride=-4),
        "ROTATION attribute has 3 components": lambda d: d["accessors"][2].update(type="VEC3"),
    }
    for needle, change in cases.items():
        broken = json.loads(json.dumps(doc))
        change(broken)
        with pytest.raises(InvalidInput, match=re.escape(needle)):
            read_glb(_glb(broken, blob))
    with pytest.raises(InvalidInput, match="not a JSON object"):
        read_glb(_glb([1, 2], blob))
    with pytest.raises(InvalidInput, match="not valid UTF-8 JSON"):
        read_glb(GLB_SEEDS[0].replace(b'"asset"', b'"\xff\xfeset"'))


@fuzz(200)
@given(
    data=st.one_of(mutated(PLY_SEEDS + SPLAT_SEEDS + GLB_SEEDS + SPZ_SEEDS + SOG_SEEDS), st.binary(max_size=128)),
    name=st.one_of(st.sampled_from([f.name for f in formats()]), TEXT),
)
def test_registry_readers(data: bytes, name: str) -> None:
    """What an import through the registry sees: any name, any bytes, any reader."""
    fmt = parses_or_invalid(get_format, name)
    if fmt is not None:
        _check_splat(parses_or_invalid(fmt.reader, data))


@fuzz(100)
@given(st.integers(-(2**31), 2**31 - 1))
def test_format_for_proto(value: int) -> None:
    fmt = parses_or_invalid(format_for_proto, value)
    assert fmt is None or fmt.proto_value == value


# ---- .npy arrays (depth, masks and alpha between the services) ------------------------------------

NPY_SEEDS = (
    encode_npy(np.zeros((3, 4), np.float32)),
    encode_npy(np.ones(5, np.uint8)),
    encode_npy(np.zeros((2, 2), bool)),
    encode_npy(np.asfortranarray(np.eye(3))),
)


# A header dict with an unbalanced bracket: numpy's header parser raises tokenize.TokenError (found by
# the fuzzer; decode_npy now turns it into InvalidInput).
NPY_UNBALANCED = NPY_SEEDS[0].replace(b"'shape'", b"('shape'")


def test_decode_npy_unbalanced_header() -> None:
    with pytest.raises(InvalidInput, match=r"not a valid \.npy"):
        decode_npy(NPY_UNBALANCED, field="depth")


@fuzz(400)
@given(data=st.one_of(mutated(NPY_SEEDS), st.binary(max_size=128)), ndim=st.sampled_from([None, 1, 2]))
@example(data=NPY_UNBALANCED, ndim=None)
def test_decode_npy(data: bytes, ndim: int | None) -> None:
    arr = parses_or_invalid(decode_npy, data, field="depth", expect_ndim=ndim)
    if arr is not None:
        assert ndim is None or arr.ndim == ndim
        assert arr.flags.c_contiguous and arr.flags.writeable


# ---- protobuf request fields shared by the gateway and the services --------------------------------


@fuzz(300)
@given(messages(common_pb2.Camera), messages(common_pb2.ViewSpec), messages(common_pb2.ArtifactRef))
def test_camera_view_and_artifact_conversions(camera: Any, view: Any, ref: Any) -> None:
    for result in (
        parses_or_invalid(camera_from_proto, camera, "camera"),
        parses_or_invalid(view_from_proto, view, "view"),
    ):
        assert result is None or isinstance(result, Camera)
    parses_or_invalid(artifact_from_proto, ref, "image")


@fuzz(300)
@given(messages(glimpse3d_pb2.JobOptions), TEXT, TEXT)
def test_gateway_request_fields(options: Any, name: str, tenant: str) -> None:
    """The gateway's validators of CreateJob options, job and export names and the tenant header."""
    parses_or_invalid(options_from_proto, options)
    job_id = parses_or_invalid(parse_job_name, name)
    export = parses_or_invalid(parse_export_name, name)
    assert job_id is None or export == (job_id, None)
    assert parses_or_invalid(check_tenant, tenant) in (None, tenant)


# ---- the services' validators -----------------------------------------------------------------------

DTYPES = st.sampled_from([np.uint8, np.float32, np.float64, np.int32, np.bool_, np.complex64])
# Any shape, or the 4 x 4 (x 3 | 4) the cameras below have, so that the value checks are reached too.
ARRAYS = st.one_of(
    hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)),
    hnp.arrays(DTYPES, st.sampled_from([(4, 4), (4, 4, 3), (4, 4, 4), (4, 4, 1)])),
)
CAMERA = orbit_camera(0.0, 0.0, 2.7, width=4, height=4)
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(), TEXT, ARRAYS)


CAMERAS = st.builds(lambda az: orbit_camera(az, 10.0, 2.7, width=4, height=4), st.floats(0, 359))


@fuzz(300)
@given(
    image=st.one_of(ARRAYS, VALUES), points=st.one_of(VALUES, st.lists(st.tuples(VALUES, VALUES, VALUES), max_size=3))
)
def test_depth_validators(image: Any, points: Any) -> None:
    arr = parses_or_invalid(check_image, image)
    assert arr is None or (arr.dtype == np.uint8 and arr.shape[2] in (3, 4))
    parses_or_invalid(check_points, points)


@fuzz(300)
@given(
    view=ARRAYS,
    depth=st.one_of(st.none(), ARRAYS),
    alpha=st.one_of(st.none(), ARRAYS),
    prompt=VALUES,
    strength=VALUES,
    steps=VALUES,
    guidance=VALUES,
    seed=VALUES,
)
def test_diffusion_validator(
    view: Any, depth: Any, alpha: Any, prompt: Any, strength: Any, steps: Any, guidance: Any, seed: Any
) -> None:
    parses_or_invalid(
        validate_request,
        view,
        depth=depth,
        alpha=alpha,
        reference=None,
        prompt=prompt,
        strength=strength,
        steps=steps,
        guidance=guidance,
        seed=seed,
    )


@fuzz(300)
@given(
    image=ARRAYS, mask=st.one_of(st.none(), ARRAYS), n_views=st.integers(0, 18), seed=VALUES, steps=VALUES, other=VALUES
)
def test_multiview_validator(image: Any, mask: Any, n_views: int, seed: Any, steps: Any, other: Any) -> None:
    cameras = [orbit_camera(30.0 * i, 0.0, 2.7, width=4, height=4) for i in range(n_views)]
    parses_or_invalid(check_request, image, mask, cameras[0] if cameras else other, cameras, seed, steps)
    parses_or_invalid(check_request, image, mask, other, other, seed, steps)


@fuzz(300)
@given(
    fit_steps=VALUES,
    max_gaussians=VALUES,
    seed=VALUES,
    n_views=st.integers(0, 20),
    cameras=st.lists(st.one_of(VALUES, CAMERAS), max_size=3).flatmap(lambda c: st.sampled_from([c, tuple(c)])),
)
def test_reconstruction_validators(fit_steps: Any, max_gaussians: Any, seed: Any, n_views: int, cameras: Any) -> None:
    parses_or_invalid(check_fit_options, fit_steps, max_gaussians, seed, [None] * n_views)
    parses_or_invalid(check_render_inputs, SPLATS[0], cameras)


@fuzz(300)
@given(options=messages(backprojection_pb2.RefineOptions), image=ARRAYS, mask=ARRAYS, weight=VALUES)
def test_backprojection_validators(options: Any, image: Any, mask: Any, weight: Any) -> None:
    opts = parses_or_invalid(RefineOptions.from_proto, options)
    assert opts is None or (1 <= opts.steps and math.isfinite(opts.learning_rate))
    view = parses_or_invalid(TrustedView, image, CAMERA, mask, weight)
    assert view is None or (view.image.dtype == np.float32 and 0.0 <= view.mask.min() <= view.mask.max() <= 1.0)

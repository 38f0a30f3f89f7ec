"""Splat file formats: 3DGS .ply (exact) and antimatter15 .splat (lossy) round trips, layouts, and rejection
of malformed input (only InvalidInput may escape a reader)."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.recfunctions import append_fields, repack_fields
from plyfile import PlyData, PlyElement

from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.formats import (
    read_ply,
    read_splat,
    splat_to_ply_bytes,
    splat_to_splat_bytes,
    write_ply,
    write_splat,
)
from glimpse3d.core.formats.ply import HEADER_LIMIT, ply_property_names
from glimpse3d.core.formats.splatfile import SPLAT_DTYPE
from glimpse3d.core.splat import Splat

DEGREES = [0, 1, 2, 3]


def random_splat(n: int, degree: int, seed: int = 0) -> Splat:
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2
    return Splat(
        means=rng.normal(size=(n, 3)).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),
        log_scales=rng.uniform(-6, 0, size=(n, 3)).astype(np.float32),
        opacity_logits=rng.normal(scale=3, size=n).astype(np.float32),
        sh=rng.normal(scale=0.8, size=(n, k, 3)).astype(np.float32),
    )


class Pipe(io.RawIOBase):
    """A readable stream that can neither seek nor report a file descriptor (a socket or pipe)."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        return self._buf.readinto(b)


def assert_same(a: Splat, b: Splat) -> None:
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == np.float32, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def reference_vertex(values: dict[str, float | np.ndarray], n_rest: int) -> np.ndarray:
    """A vertex array in the reference 3DGS layout, filled from ``values`` (other fields zero)."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(n_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    n = len(np.atleast_1d(next(iter(values.values()))))
    arr = np.zeros(n, dtype=[(name, "f4") for name in names])
    for name, value in values.items():
        arr[name] = value
    return arr


def ply_bytes(*elements: PlyElement, text: bool = False, byte_order: str = "<") -> bytes:
    buf = io.BytesIO()
    PlyData(list(elements), text=text, byte_order=byte_order).write(buf)
    return buf.getvalue()


def one_gaussian_ply(**overrides: float) -> bytes:
    values = {"x": 1.0, "rot_0": 1.0, "scale_0": -2.0, "scale_1": -2.0, "scale_2": -2.0, **overrides}
    return ply_bytes(PlyElement.describe(reference_vertex(values, 0), "vertex"))


def rejects(data: bytes, match: str, **kwargs: int) -> InvalidInput:
    with pytest.raises(InvalidInput, match=match) as info:
        read_ply(data, **kwargs)
    return info.value


# --------------------------------------------------------------------------------------------- .ply


@pytest.mark.parametrize("degree", DEGREES)
def test_ply_round_trip_is_exact_through_every_source(degree: int, tmp_path: Path) -> None:
    splat = random_splat(57, degree, seed=degree)
    data = splat_to_ply_bytes(splat)
    path = tmp_path / "s.ply"
    write_ply(splat, path)
    assert path.read_bytes() == data
    for src in (data, bytearray(data), memoryview(data), io.BytesIO(data), Pipe(data), path, str(path)):
        back = read_ply(src)
        assert back.sh_degree == degree
        assert_same(back, splat)
    with path.open("rb") as f:
        assert_same(read_ply(f), splat)


def test_ply_round_trip_of_an_empty_splat(tmp_path: Path) -> None:
    empty = random_splat(0, 2)
    write_ply(empty, tmp_path / "empty.ply")
    for src in (splat_to_ply_bytes(empty), tmp_path / "empty.ply"):
        back = read_ply(src)
        assert back.num_gaussians == 0 and back.sh.shape == (0, 9, 3)


@pytest.mark.parametrize("degree", DEGREES)
def test_ply_field_order_names_and_values_match_the_reference_layout(degree: int) -> None:
    n, k = 4, (degree + 1) ** 2
    splat = random_splat(n, degree)
    sh = np.zeros((n, k, 3), np.float32)
    sh[:] = 100 * np.arange(3) + np.arange(k)[:, None]  # sh[:, j, c] = 100 c + j
    splat = Splat(splat.means, splat.quats, splat.log_scales, splat.opacity_logits, sh)
    data = splat_to_ply_bytes(splat)
    assert data.startswith(b"ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\n")
    ply = PlyData.read(io.BytesIO(data))
    assert [e.name for e in ply.elements] == ["vertex"]
    vertex = ply["vertex"].data
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(3 * (k - 1))]
    expected += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert list(vertex.dtype.names) == expected == ply_property_names(degree)
    assert all(vertex.dtype[name] == np.dtype("<f4") for name in expected)
    for c in range(3):
        np.testing.assert_array_equal(vertex[f"f_dc_{c}"], 100 * c)
        for j in range(1, k):  # channel-major: all of R's coefficients, then G's, then B's
            np.testing.assert_array_equal(vertex[f"f_rest_{c * (k - 1) + j - 1}"], 100 * c + j)
    for axis, name in enumerate("xyz"):
        np.testing.assert_array_equal(vertex[name], splat.means[:, axis])
        np.testing.assert_array_equal(vertex[f"n{name}"], 0)
        np.testing.assert_array_equal(vertex[f"scale_{axis}"], splat.log_scales[:, axis])
    np.testing.assert_array_equal(vertex["opacity"], splat.opacity_logits)
    for i in range(4):
        np.testing.assert_array_equal(vertex[f"rot_{i}"], splat.quats[:, i])


def test_read_ply_of_a_hand_built_reference_file() -> None:
    # One degree-1 Gaussian written by plyfile directly, in the layout of the reference save_ply.
    f_rest = np.arange(9, dtype=np.float32) + 1  # R: 1 2 3, G: 4 5 6, B: 7 8 9
    values = {"x": 1.5, "y": -2.0, "z": 3.25, "f_dc_0": 0.1, "f_dc_1": 0.2, "f_dc_2": 0.3, "opacity": -1.5}
    values |= {f"f_rest_{i}": float(v) for i, v in enumerate(f_rest)}
    values |= {
        "scale_0": -3.0,
        "scale_1": -2.0,
        "scale_2": -1.0,
        "rot_0": 0.5,
        "rot_1": 0.5,
        "rot_2": 0.5,
        "rot_3": -0.5,
    }
    splat = read_ply(ply_bytes(PlyElement.describe(reference_vertex(values, 9), "vertex")))
    assert splat.num_gaussians == 1 and splat.sh_degree == 1
    np.testing.assert_array_equal(splat.means[0], np.float32([1.5, -2.0, 3.25]))
    np.testing.assert_array_equal(splat.sh[0, 0], np.float32([0.1, 0.2, 0.3]))
    np.testing.assert_array_equal(splat.sh[0, 1:], np.float32([[1, 4, 7], [2, 5, 8], [3, 6, 9]]))
    np.testing.assert_array_equal(splat.log_scales[0], np.float32([-3, -2, -1]))
    np.testing.assert_array_equal(splat.quats[0], np.float32([0.5, 0.5, 0.5, -0.5]))
    assert splat.opacity_logits[0] == np.float32(-1.5)


def test_read_ply_tolerates_extra_elements_properties_doubles_and_crlf(tmp_path: Path) -> None:
    vertex = reference_vertex({"x": np.float32([1, 2]), "rot_0": 1.0}, 0)
    extra = np.zeros(2, dtype=[("red", "u1"), ("label", "i4")])
    wide = np.zeros(2, dtype=[(name, "f8") if name == "opacity" else (name, "f4") for name in vertex.dtype.names])
    for name in vertex.dtype.names:
        wide[name] = vertex[name]
    wide["opacity"] = 0.25
    wide = append_fields(wide, "extra", np.ones(2, "u2"), usemask=False)
    data = ply_bytes(
        PlyElement.describe(np.zeros(3, [("id", "i4")]), "camera"),
        PlyElement.describe(wide, "vertex"),
        PlyElement.describe(extra, "face_colour"),
    )
    data = data.replace(b"format", b"comment made by hand\nformat", 1)
    for src in (data, Pipe(data)):
        splat = read_ply(src)
        np.testing.assert_array_equal(splat.means[:, 0], [1, 2])
        np.testing.assert_array_equal(splat.opacity_logits, [0.25, 0.25])
    path = tmp_path / "extra.ply"
    path.write_bytes(data)
    np.testing.assert_array_equal(read_ply(path).means[:, 0], [1, 2])
    header, body = data.split(b"end_header\n", 1)
    crlf = header.replace(b"\n", b"\r\n") + b"end_header\r\n" + body
    np.testing.assert_array_equal(read_ply(crlf).means[:, 0], [1, 2])


def test_read_ply_rejects_garbage_and_empty_input() -> None:
    rejects(b"", "does not start with 'ply'")
    rejects(b"\x00\x01garbage" * 50, "does not start with 'ply'")
    rejects(b"plywood", "unexpected characters after 'ply'")
    rejects(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\n", "no 'end_header'")
    rejects(b"ply\n" + b"comment " + b"x" * HEADER_LIMIT + b"\nend_header\n", "longer than the limit")
    rejects(b"ply\nformat binary_little_endian 1.0\nend_header\n", "no 'vertex' element")
    rejects(b"ply\nelement vertex 1\nend_header\n", "expected 'format'")


def test_read_ply_rejects_ascii_and_big_endian_with_a_clear_message() -> None:
    vertex = PlyElement.describe(reference_vertex({"rot_0": 1.0}, 0), "vertex")
    rejects(ply_bytes(vertex, text=True), "ascii PLY is not supported.*binary_little_endian")
    rejects(ply_bytes(vertex, byte_order=">"), "binary_big_endian PLY is not supported")


def test_read_ply_rejects_bad_vertex_properties() -> None:
    base = reference_vertex({"rot_0": 1.0}, 0)
    missing = repack_fields(base[[n for n in base.dtype.names if n not in ("opacity", "rot_3")]])
    err = rejects(ply_bytes(PlyElement.describe(missing, "vertex")), "missing required properties: opacity, rot_3")
    assert err.field == "ply"
    as_int = np.zeros(1, dtype=[(n, "i4" if n == "x" else "f4") for n in base.dtype.names])
    rejects(ply_bytes(PlyElement.describe(as_int, "vertex")), "must be float or double: x")
    five_rest = reference_vertex({"rot_0": 1.0}, 5)
    rejects(ply_bytes(PlyElement.describe(five_rest, "vertex")), "5 f_rest_\\* properties")
    header = b"ply\nformat binary_little_endian 1.0\nelement vertex 1\n"
    rejects(header + b"property list uchar int vertex_indices\nend_header\n", "list property")
    rejects(header + b"property float x\nproperty float x\nend_header\n", "property 'x' twice")
    rejects(header + b"property half x\nend_header\n", "unknown property type 'half'")
    rejects(header.replace(b"vertex 1", b"vertex -1") + b"end_header\n", "expected 'element <name> <count>'")
    rejects(b"ply\nformat binary_little_endian 1.0\ncomment caf\xc3\xa9\nend_header\n", "non-ASCII")


@pytest.mark.parametrize("cut", [1, 7, 64])
def test_read_ply_rejects_truncated_data_from_every_source(cut: int, tmp_path: Path) -> None:
    data = splat_to_ply_bytes(random_splat(10, 3))[:-cut]
    path = tmp_path / "cut.ply"
    path.write_bytes(data)
    for src in (data, Pipe(data), io.BytesIO(data), path):
        with pytest.raises(InvalidInput, match="PLY data is truncated"):
            read_ply(src)


def test_read_ply_rejects_non_finite_values_and_zero_quaternions() -> None:
    rejects(one_gaussian_ply(y=float("nan")), "means has a non-finite value at Gaussian 0")
    rejects(one_gaussian_ply(opacity=float("inf")), "opacity_logits has a non-finite value")
    rejects(one_gaussian_ply(rot_0=0.0), "zero quaternion")


def test_read_ply_enforces_max_gaussians() -> None:
    data = splat_to_ply_bytes(random_splat(6, 0))
    rejects(data, "vertex count 6 exceeds the limit of 5", max_gaussians=5)
    assert read_ply(data, max_gaussians=6).num_gaussians == 6


@pytest.mark.parametrize("count", [10**12, 19_000_000])
def test_absurd_vertex_count_fails_fast_without_allocating(count: int, tmp_path: Path) -> None:
    header = splat_to_ply_bytes(random_splat(1, 3)).split(b"end_header\n")[0] + b"end_header\n"
    data = header.replace(b"element vertex 1\n", f"element vertex {count}\n".encode()) + b"\0" * 1000
    path = tmp_path / "huge.ply"
    path.write_bytes(data)
    # 19M Gaussians of degree 3 would be 4.7 GB; the reader must notice the missing bytes first.
    for src in (data, path, Pipe(data)):
        tracemalloc.start()
        start = time.perf_counter()
        with pytest.raises(InvalidInput, match="exceeds the limit" if count > 10**9 else "truncated"):
            read_ply(src)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 4 << 20, f"peak allocation {peak} bytes"
        assert elapsed < 1.0


def mutate(data: bytes, rng: np.random.Generator, hot: int) -> bytes:
    """Flip, drop, duplicate or truncate a few bytes; half the edits land in the first ``hot`` bytes."""
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        limit = hot if rng.random() < 0.5 else len(buf)
        pos = int(rng.integers(0, max(min(limit, len(buf)), 1)))
        op = rng.integers(0, 5)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = int(rng.integers(0, 256))
        elif op == 1:
            del buf[pos : pos + int(rng.integers(1, 40))]
        elif op == 2:
            buf[pos:pos] = buf[pos : pos + int(rng.integers(1, 40))]
        elif op == 3:
            del buf[int(rng.integers(0, len(buf) + 1)) :]
        elif buf:
            buf[min(pos, len(buf) - 1)] = int(rng.choice([ord(c) for c in "0123456789 \n\r-"]))
    return bytes(buf)


def test_fuzzed_ply_raises_only_invalid_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(1234)
    data = splat_to_ply_bytes(random_splat(12, 1))
    header_size = data.index(b"end_header\n") + 11
    outcomes = {"ok": 0, "invalid": 0}
    path = tmp_path / "fuzz.ply"
    for i in range(300):
        mutated = mutate(data, rng, header_size)
        src: bytes | Path = mutated
        if i % 5 == 0:  # some through the file path, where plyfile reads the data
            path.write_bytes(mutated)
            src = path
        try:
            read_ply(src)
            outcomes["ok"] += 1
        except InvalidInput:
            outcomes["invalid"] += 1
    assert outcomes["invalid"] > 50 and outcomes["ok"] > 10, outcomes


# -------------------------------------------------------------------------------------------- .splat


def splat_record(position=(0, 0, 0), scale=(1, 1, 1), rgba=(0, 0, 0, 255), rot=(255, 128, 128, 128)) -> bytes:
    return struct.pack("<3f3f4B4B", *position, *scale, *rgba, *rot)


def test_splat_dtype_is_the_32_byte_record() -> None:
    assert SPLAT_DTYPE.itemsize == 32


def test_splat_writer_byte_layout() -> None:
    one = Splat.from_colors(
        means=np.float32([[1, 2, 3]]), colors=np.float32([1.0, 0.0, 0.5]), scales=np.float32([0.5, 1, 2]), opacities=0.5
    )
    data = splat_to_splat_bytes(one)
    assert len(data) == 32
    position, scale = struct.unpack("<3f", data[:12]), struct.unpack("<3f", data[12:24])
    rgba, rot = tuple(data[24:28]), tuple(data[28:32])
    assert position == (1.0, 2.0, 3.0)
    np.testing.assert_allclose(scale, [0.5, 1, 2], rtol=1e-6)
    assert rgba == (255, 0, 128, 128)  # 0.5 * 255 = 127.5 rounds to 128
    assert rot == (255, 128, 128, 128)  # identity: w = 1 -> 256, clipped


def test_read_splat_of_hand_built_records() -> None:
    data = splat_record((1, 2, 3), (0.25, 0.5, 4), (255, 0, 51, 0), (128, 255, 128, 128)) + splat_record(
        rgba=(0, 0, 0, 255)
    )
    splat = read_splat(data)
    assert splat.num_gaussians == 2 and splat.sh_degree == 0
    np.testing.assert_array_equal(splat.means[0], [1, 2, 3])
    np.testing.assert_allclose(splat.scales[0], [0.25, 0.5, 4], rtol=1e-6)
    np.testing.assert_allclose(splat.base_colors[0], [1, 0, 0.2], atol=1e-6)
    np.testing.assert_allclose(splat.quats[0], [0, 1, 0, 0], atol=1e-6)
    # alpha 0 and 255 are clamped to 0.5/255 and 254.5/255, so the logits stay finite
    np.testing.assert_allclose(splat.opacities, [0.5 / 255, 254.5 / 255], rtol=1e-5)


@pytest.mark.parametrize("degree", DEGREES)
def test_splat_round_trip_within_quantisation(degree: int, tmp_path: Path) -> None:
    splat = random_splat(300, degree, seed=10 + degree)
    data = splat_to_splat_bytes(splat, sort=False)
    assert len(data) == 32 * 300
    path = tmp_path / "s.splat"
    write_splat(splat, path, sort=False)
    assert path.read_bytes() == data
    for src in (data, io.BytesIO(data), Pipe(data), path, str(path)):
        back = read_splat(src)
        assert back.sh_degree == 0
        np.testing.assert_array_equal(back.means, splat.means)  # float32, exact
        np.testing.assert_allclose(back.log_scales, splat.log_scales, atol=2e-6)
        np.testing.assert_allclose(back.base_colors, splat.base_colors, atol=0.5 / 255 + 1e-6)
        expected_alpha = np.clip(splat.opacities, 0.5 / 255, 254.5 / 255)
        np.testing.assert_allclose(back.opacities, expected_alpha, atol=0.5 / 255 + 1e-6)
        # each component is quantised to 1/128: the rotations agree to well under a degree... of 1/128 rad
        dots = np.abs(np.sum(back.unit_quats * splat.unit_quats, axis=1))
        assert dots.min() > np.cos(0.02)
        np.testing.assert_allclose(np.linalg.norm(back.quats, axis=1), 1, atol=1e-6)


def test_splat_writer_sorts_by_volume_times_opacity() -> None:
    splat = random_splat(200, 1, seed=3)
    back = read_splat(splat_to_splat_bytes(splat))
    key = np.exp(splat.log_scales.astype(np.float64).sum(1)) / (1 + np.exp(-splat.opacity_logits.astype(np.float64)))
    order = np.argsort(-key, kind="stable")
    np.testing.assert_array_equal(back.means, splat.means[order])
    assert splat_to_splat_bytes(splat, sort=True) == splat_to_splat_bytes(splat.subset(order), sort=False)
    buf = io.BytesIO()
    write_splat(splat, buf)
    assert buf.getvalue() == splat_to_splat_bytes(splat)


def test_splat_writer_keeps_ties_in_input_order() -> None:
    tied = Splat.from_colors(np.float32([[0, 0, 0], [1, 0, 0], [2, 0, 0]]), 0.5, 0.1, 0.5)
    np.testing.assert_array_equal(read_splat(splat_to_splat_bytes(tied)).means[:, 0], [0, 1, 2])


def test_splat_writer_rejects_scales_that_do_not_fit_float32() -> None:
    splat = random_splat(3, 0)
    for value in (100.0, -200.0):
        bad = Splat(splat.means, splat.quats, np.full((3, 3), value, np.float32), splat.opacity_logits, splat.sh)
        with pytest.raises(InvalidInput, match="Gaussian 0") as info:
            splat_to_splat_bytes(bad)
        assert info.value.field == "log_scales"


def test_read_splat_of_empty_input_is_an_empty_splat() -> None:
    assert read_splat(b"").num_gaussians == 0


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\0" * 33, "33 bytes, not a multiple of the 32-byte record"),
        (splat_record() * 3 + splat_record()[:20], "not a multiple"),
        (splat_record() + splat_record(position=(0, float("nan"), 0)), "means has a non-finite value at Gaussian 1"),
        (splat_record(scale=(1, 0, 1)), "record 0 has scale .*positive and finite"),
        (splat_record() + splat_record(scale=(1, -1, 1)), "record 1 has scale"),
        (splat_record(scale=(float("inf"), 1, 1)), "record 0 has scale"),
        (splat_record() * 2 + splat_record(rot=(128, 128, 128, 128)), "record 2 has a zero rotation quaternion"),
    ],
)
def test_read_splat_rejects_malformed_records(data: bytes, match: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.splat"
    path.write_bytes(data)
    for src in (data, path, Pipe(data)):
        with pytest.raises(InvalidInput, match=match):
            read_splat(src)


def test_read_splat_enforces_max_gaussians_before_reading(tmp_path: Path) -> None:
    data = splat_record() * 6
    path = tmp_path / "six.splat"
    path.write_bytes(data)
    for src in (data, path, Pipe(data)):
        with pytest.raises(InvalidInput, match="6 Gaussians, more than the limit of 5"):
            read_splat(src, max_gaussians=5)
    assert read_splat(data, max_gaussians=6).num_gaussians == 6


def test_fuzzed_splat_raises_only_invalid_input() -> None:
    rng = np.random.default_rng(99)
    data = splat_to_splat_bytes(random_splat(8, 0))
    outcomes = {"ok": 0, "invalid": 0}
    for i in range(300):
        if i % 2:
            mutated = mutate(data, rng, len(data))
        else:  # same size, so the records themselves get decoded
            array = np.frombuffer(data, np.uint8).copy()
            positions = rng.integers(0, len(data), size=int(rng.integers(1, 12)))
            array[positions] = rng.integers(0, 256, size=len(positions), dtype=np.uint8)
            mutated = array.tobytes()
        try:
            read_splat(mutated)
            outcomes["ok"] += 1
        except InvalidInput:
            outcomes["invalid"] += 1
    assert outcomes["invalid"] > 100 and outcomes["ok"] > 50, outcomes


def test_colours_survive_splat_quantisation_like_the_reference_viewer_expects() -> None:
    colours = np.float32([[0, 0, 0], [1, 1, 1], [0.2, 0.4, 0.6]])
    splat = Splat.from_colors(np.zeros((3, 3), np.float32), colours, 0.1, 0.6)
    rgba = np.frombuffer(splat_to_splat_bytes(splat, sort=False), SPLAT_DTYPE)["rgba"]
    np.testing.assert_array_equal(rgba[:, :3], np.rint(colours * 255))
    np.testing.assert_array_equal(rgba[:, 3], 153)  # 0.6 * 255
    back = read_splat(splat_to_splat_bytes(splat, sort=False))
    np.testing.assert_allclose(back.base_colors, np.rint(colours * 255) / 255, atol=1e-6)

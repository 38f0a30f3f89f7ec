"""Splat exports through the format registry: .ply, .splat and glTF binary with KHR_gaussian_splatting."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pygltflib
import pytest

from glimpse3d.core.errors import FailedPrecondition, InvalidInput
from glimpse3d.core.formats import get_format, read_ply, read_splat
from glimpse3d.core.formats.glb import EXTENSION, gaussians_to_splat, read_glb_gaussians, srgb_to_linear
from glimpse3d.core.splat import Splat

P = f"{EXTENSION}:"


def export_splat(splat: Splat, fmt: str) -> tuple[bytes, str, str]:
    """``(bytes, media type, file extension)`` of ``splat`` in the registry's format ``fmt``."""
    spec = get_format(fmt)
    return spec.writer(splat), spec.media_type, spec.extension


def random_splat(n: int = 50, degree: int = 0, seed: int = 0) -> Splat:
    rng = np.random.default_rng(seed)
    return Splat(
        means=rng.normal(size=(n, 3)).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),  # deliberately not unit length
        log_scales=rng.uniform(-5, -1, size=(n, 3)).astype(np.float32),
        opacity_logits=rng.normal(scale=2.0, size=n).astype(np.float32),
        sh=rng.normal(scale=0.5, size=(n, (degree + 1) ** 2, 3)).astype(np.float32),
    )


def glb_chunks(data: bytes) -> tuple[dict, bytes]:
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2 and length == len(data)
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON" and json_len % 4 == 0
    bin_offset = 20 + json_len
    bin_len, bin_type = struct.unpack_from("<I4s", data, bin_offset)
    assert bin_type == b"BIN\x00" and bin_len % 4 == 0 and (bin_offset + 8) % 4 == 0
    assert bin_offset + 8 + bin_len == len(data)
    return json.loads(data[20:bin_offset]), data[bin_offset + 8:]


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_glb_structure(degree: int) -> None:
    splat = random_splat(37, degree)
    data, media_type, ext = export_splat(splat, "glb")
    assert (media_type, ext) == ("model/gltf-binary", ".glb")
    doc, blob = glb_chunks(data)
    assert doc["asset"]["version"] == "2.0"
    assert doc["extensionsUsed"] == [EXTENSION]
    assert EXTENSION not in doc.get("extensionsRequired", [])  # falls back to a point cloud
    (mesh,) = doc["meshes"]
    (prim,) = mesh["primitives"]
    assert prim["mode"] == 0
    assert prim["extensions"][EXTENSION] == {"kernel": "ellipse", "colorSpace": "srgb_rec709_display"}
    sh_names = [f"{P}SH_DEGREE_{band}_COEF_{n}" for band in range(degree + 1) for n in range(2 * band + 1)]
    expected = {"POSITION": "VEC3", "COLOR_0": "VEC4", f"{P}ROTATION": "VEC4", f"{P}SCALE": "VEC3",
                f"{P}OPACITY": "SCALAR", **dict.fromkeys(sh_names, "VEC3")}
    assert set(prim["attributes"]) == set(expected)
    assert doc["scenes"][doc["scene"]]["nodes"] == [0] and doc["nodes"][0]["mesh"] == 0
    (buffer,) = doc["buffers"]
    assert buffer["byteLength"] == len(blob) and "uri" not in buffer
    for name, index in prim["attributes"].items():
        accessor = doc["accessors"][index]
        assert accessor["type"] == expected[name] and accessor["componentType"] == 5126
        assert accessor["count"] == 37
        view = doc["bufferViews"][accessor["bufferView"]]
        assert view["byteOffset"] % 4 == 0 and accessor.get("byteOffset", 0) % 4 == 0
        width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[accessor["type"]]
        assert view["byteLength"] == 37 * width * 4
        assert view["byteOffset"] + view["byteLength"] <= buffer["byteLength"]
    position = doc["accessors"][prim["attributes"]["POSITION"]]
    assert np.allclose(position["min"], splat.means.min(axis=0))
    assert np.allclose(position["max"], splat.means.max(axis=0))


def test_glb_parses_with_pygltflib() -> None:
    data, _, _ = export_splat(random_splat(5, 1), "glb")
    gltf = pygltflib.GLTF2.load_from_bytes(data)
    prim = gltf.meshes[0].primitives[0]
    assert prim.mode == pygltflib.POINTS and EXTENSION in prim.extensions
    assert getattr(prim.attributes, f"{P}ROTATION") is not None
    assert len(gltf.binary_blob()) == gltf.buffers[0].byteLength


@pytest.mark.parametrize("degree", [0, 3])
def test_glb_round_trip(degree: int) -> None:
    splat = random_splat(64, degree, seed=degree)
    attrs = read_glb_gaussians(export_splat(splat, "glb")[0])
    assert np.array_equal(attrs["POSITION"], splat.means)
    unit = splat.quats / np.linalg.norm(splat.quats, axis=1, keepdims=True)
    assert np.allclose(attrs[f"{P}ROTATION"], unit[:, [1, 2, 3, 0]], atol=1e-6)
    assert np.allclose(np.linalg.norm(attrs[f"{P}ROTATION"], axis=1), 1.0, atol=1e-6)
    assert np.allclose(attrs[f"{P}SCALE"], np.exp(splat.log_scales), rtol=1e-6)
    opacity = 1 / (1 + np.exp(-splat.opacity_logits.astype(np.float64)))
    assert np.allclose(attrs[f"{P}OPACITY"][:, 0], opacity, atol=1e-6)
    assert np.allclose(attrs["COLOR_0"][:, :3], srgb_to_linear(splat.base_colors), atol=1e-6)
    assert np.allclose(attrs["COLOR_0"][:, 3], opacity, atol=1e-6)
    assert np.array_equal(attrs[f"{P}SH_DEGREE_0_COEF_0"], splat.sh[:, 0])
    if degree:
        assert np.array_equal(attrs[f"{P}SH_DEGREE_1_COEF_0"], splat.sh[:, 1])  # m = -1
        assert np.array_equal(attrs[f"{P}SH_DEGREE_3_COEF_6"], splat.sh[:, 15])  # m = +3
    back = gaussians_to_splat(attrs)
    assert back.sh_degree == degree
    assert np.allclose(back.means, splat.means) and np.array_equal(back.sh, splat.sh)
    assert np.allclose(back.quats, unit, atol=1e-6)
    assert np.allclose(back.log_scales, splat.log_scales, atol=1e-5)
    assert np.allclose(back.opacities, splat.opacities, atol=1e-6)


def test_glb_rotation_is_xyzw() -> None:
    half = math.radians(90) / 2  # 90 degrees about +z, stored (w, x, y, z)
    splat = Splat.from_colors(np.zeros((1, 3)), [[1.0, 0.5, 0.0]], 0.1, 0.5,
                              quats=np.array([[math.cos(half), 0, 0, math.sin(half)]], np.float32))
    attrs = read_glb_gaussians(export_splat(splat, "glb")[0])
    assert np.allclose(attrs[f"{P}ROTATION"][0], [0, 0, math.sin(half), math.cos(half)], atol=1e-7)
    assert np.allclose(attrs[f"{P}SCALE"][0], [0.1, 0.1, 0.1])
    # sRGB 0.5 is linear 0.214; pure colours stay pure.
    assert np.allclose(attrs["COLOR_0"][0], [1.0, 0.21404114, 0.0, 0.5], atol=1e-5)


def test_glb_empty_and_bad_input() -> None:
    empty = random_splat(0)
    with pytest.raises(FailedPrecondition, match="no Gaussians"):
        export_splat(empty, "glb")
    with pytest.raises(InvalidInput):
        read_glb_gaussians(b"not a glb file")
    with pytest.raises(InvalidInput):
        export_splat(random_splat(2), "stl")  # a format that is not registered


def test_ply_and_splat_exports() -> None:
    splat = random_splat(40, 2)
    ply, ply_type, ply_ext = export_splat(splat, "ply")
    assert (ply_type, ply_ext) == ("application/x-glimpse3d-splat+ply", ".ply")
    assert read_ply(ply).allclose(splat)
    web, web_type, web_ext = export_splat(splat, "splat")
    assert (web_type, web_ext) == ("application/x-glimpse3d-splat", ".splat")
    assert len(web) == 32 * 40
    back = read_splat(web)
    order = np.lexsort(back.means.T)
    assert np.allclose(back.means[order], splat.means[np.lexsort(splat.means.T)])
    assert export_splat(random_splat(0), "ply")[0].startswith(b"ply\n")

"""The splat format registry (glimpse3d.core.formats.registry): every format round-trips, names,
media types and extensions are unique, the gRPC enum matches it, and the gateway's surfaces read it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import get_args

import numpy as np
import pytest

from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.formats import (
    DEFAULT_FORMAT,
    SplatFormat,
    format_for_proto,
    format_names,
    formats,
    get_format,
    read_ply,
    register_format,
    splat_to_ply_bytes,
    unregister_format,
)
from glimpse3d.core.splat import Splat
from glimpse3d.v1 import glimpse3d_pb2

BUILT_IN = ("ply", "splat", "glb")


def random_splat(n: int = 64, degree: int = 3, seed: int = 0) -> Splat:
    rng = np.random.default_rng(seed)
    return Splat(
        means=rng.normal(size=(n, 3)).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),  # not unit length
        log_scales=rng.uniform(-5, -1, size=(n, 3)).astype(np.float32),
        opacity_logits=rng.normal(scale=2.0, size=n).astype(np.float32),
        sh=rng.normal(scale=0.5, size=(n, (degree + 1) ** 2, 3)).astype(np.float32),
    )


def by_position(splat: Splat) -> np.ndarray:
    """An order that does not depend on how a writer sorted the Gaussians (positions are kept exactly)."""
    return np.lexsort(splat.means.T)


def test_built_in_formats_are_registered_in_order() -> None:
    assert format_names()[:3] == BUILT_IN
    assert [f.name for f in formats()] == list(format_names())
    assert DEFAULT_FORMAT in format_names()
    assert get_format("ply").media_type == "application/x-glimpse3d-splat+ply"
    assert get_format("splat").media_type == "application/x-glimpse3d-splat"
    assert get_format("glb").media_type == "model/gltf-binary"


# Formats that quantise positions, scales and SH (fixed point, 8-bit logs, codebooks): their round trips
# are checked against their own documented tolerances in tests/unit/test_compressed_formats.py.
QUANTISED = ("spz", "sog")


def test_quantised_formats_are_registered() -> None:
    assert set(QUANTISED) <= set(format_names())


@pytest.mark.parametrize("name", [f.name for f in formats() if not f.export_only and f.name not in QUANTISED])
@pytest.mark.parametrize("degree", [0, 3])
def test_every_format_round_trips(name: str, degree: int) -> None:
    fmt = get_format(name)
    splat = random_splat(degree=degree, seed=degree)
    back = fmt.reader(fmt.writer(splat))
    assert isinstance(back, Splat) and back.num_gaussians == splat.num_gaussians
    kept = min(degree, fmt.sh_degree)
    assert back.sh_degree == kept
    a, b = splat.subset(by_position(splat)), back.subset(by_position(back))
    assert np.allclose(b.means, a.means, atol=1e-6)
    assert np.allclose(b.scales, a.scales, rtol=1e-5)
    assert np.all(np.abs(np.sum(b.unit_quats * a.unit_quats, axis=1)) > 1 - 1e-3)  # q and -q are one rotation
    assert np.allclose(b.opacities, a.opacities, atol=1 / 255 + 1e-6)
    assert np.allclose(b.base_colors, a.base_colors, atol=1 / 255 + 1e-6)
    if kept:  # the higher bands a format keeps, it keeps exactly
        assert np.allclose(b.sh[:, 1:], a.sh[:, 1:(kept + 1) ** 2], atol=1e-6)


def test_media_types_and_extensions_are_unique() -> None:
    all_formats = formats()
    for field in ("name", "media_type", "extension"):
        # an export-only format (a mesh) may share a container's media type: glb and mesh-glb
        values = [getattr(f, field) for f in all_formats if field != "media_type" or not f.export_only]
        assert len(set(values)) == len(values), field
    for f in all_formats:
        assert f.extension.startswith(".") and f.description and "/" in f.media_type


@pytest.mark.parametrize("name", [f.name for f in formats() if f.export_only])
def test_export_only_formats_cannot_be_read_as_splats(name: str) -> None:
    fmt = get_format(name)
    for data in (b"", splat_to_ply_bytes(random_splat(4))):
        with pytest.raises(InvalidInput, match="export-only") as err:
            fmt.reader(data)
        assert err.value.field == "format"
    glb = get_format("glb")
    shared = SplatFormat(name="test-mesh", media_type=glb.media_type, extension=".test-mesh", writer=glb.writer,
                         reader=fmt.reader, proto_enum=None, description="a mesh", export_only=True)
    register_format(shared)  # the media type of a splat format: allowed for an export-only one
    unregister_format(shared.name)
    with pytest.raises(ValueError, match="already registered"):
        register_format(SplatFormat(name="test-splat", media_type=get_format("ply").media_type, extension=".tsp",
                                    writer=glb.writer, reader=glb.reader, proto_enum=None, description="dup"))


def test_unknown_name_names_the_valid_ones() -> None:
    with pytest.raises(InvalidInput) as err:
        get_format("stl")
    assert err.value.field == "format"
    assert "stl" in err.value.message
    for name in format_names():
        assert name in err.value.message


def test_proto_enum_matches_the_registry() -> None:
    enum = glimpse3d_pb2.ExportRequest.Format
    members = set(enum.keys()) - {"FORMAT_UNSPECIFIED"}
    assert {f.proto_enum for f in formats()} == members  # each entry has a member, each member an entry
    for f in formats():
        assert f.proto_value == enum.Value(f.proto_enum)
        assert format_for_proto(f.proto_value) is f
    for bad in (glimpse3d_pb2.ExportRequest.FORMAT_UNSPECIFIED, 99):
        with pytest.raises(InvalidInput) as err:
            format_for_proto(bad)
        assert err.value.field == "format" and all(m in err.value.message for m in members)


@pytest.fixture
def throwaway() -> Iterator[SplatFormat]:
    fmt = SplatFormat(name="test-ply", media_type="application/x-test-ply", extension=".testply",
                      writer=splat_to_ply_bytes, reader=read_ply, proto_enum=None, description="a test format")
    register_format(fmt)
    try:
        yield fmt
    finally:
        unregister_format(fmt.name)
    assert fmt.name not in format_names()


def test_a_registered_format_appears(throwaway: SplatFormat) -> None:
    assert format_names()[-1] == "test-ply" and format_names()[:3] == BUILT_IN
    assert get_format("test-ply") is throwaway
    splat = random_splat(8)
    assert throwaway.reader(throwaway.writer(splat)).allclose(splat)
    with pytest.raises(InvalidInput, match="test-ply"):
        get_format("nope")
    with pytest.raises(ValueError, match="no ExportRequest"):
        _ = throwaway.proto_value


def test_registering_a_taken_name_media_type_or_extension_fails() -> None:
    ply = get_format("ply")
    for change in ({}, {"name": "x", "media_type": ply.media_type}, {"name": "x", "extension": ".ply"},
                   {"name": "x", "proto_enum": "PLY"}):
        fields = {"name": ply.name, "media_type": "application/x-other", "extension": ".other", "proto_enum": None,
                  **change}
        with pytest.raises(ValueError, match="already registered"):
            register_format(SplatFormat(writer=ply.writer, reader=ply.reader, description="dup", **fields))
    assert format_names()[:3] == BUILT_IN and get_format("ply") is ply


def test_gateway_surfaces_read_the_registry() -> None:
    from glimpse3d.gateway import cli
    from glimpse3d.gateway.http.mapping import download_filename
    from glimpse3d.gateway.http.schemas import Downloads, ExportFormatName

    assert get_args(ExportFormatName) == format_names()
    assert tuple(Downloads.model_fields) == format_names()
    assert tuple(cli.FORMATS) == format_names()
    assert {name: cli.FORMATS[name] for name in format_names()} == {f.name: f.proto_value for f in formats()}
    assert download_filename("abc", 2, "glb") == "abc-v2.glb"

"""The registry of splat file formats: one :class:`SplatFormat` per name, the one list that the
gateway's exports, the HTTP API (and so its OpenAPI spec), the gRPC ``ExportRequest.Format``
mapping and the CLI read.

A format is one module that builds its :class:`SplatFormat` and calls :func:`register_format` at
import time. The built-in modules (``ply``, ``splatfile``, ``glb``, ..., then ``mesh`` with the
export-only ``obj`` and ``mesh-glb``) are imported, in that order, by
the package's ``__init__`` (which runs before this module can be imported), so the registry always
holds them; their order is the order of :func:`format_names`.

Nothing here imports the generated protobuf code until a proto number is asked for
(:attr:`SplatFormat.proto_value`, :func:`format_for_proto`): readers and writers work without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.splat import Splat

DEFAULT_FORMAT = "ply"
"""The lossless 3DGS ``.ply``: what versions are stored as, and the download when none is named."""


@dataclass(frozen=True)
class SplatFormat:
    """One splat file format.

    ``writer`` encodes a splat (it may raise :class:`~glimpse3d.core.errors.FailedPrecondition`
    for a splat the format cannot hold); ``reader`` decodes the bytes a writer produced (and raises
    :class:`InvalidInput` for anything malformed). ``proto_enum`` is the name of the
    ``glimpse3d.v1.ExportRequest.Format`` member that asks for the format over gRPC (``None``: not
    reachable over gRPC). ``sh_degree`` is the highest spherical-harmonics degree the format keeps:
    higher bands are dropped on writing. ``export_only`` formats (the meshes) hold no Gaussians:
    their reader raises :class:`InvalidInput` (field ``format``) for any data.
    """

    name: str  # the API's name: the HTTP ``format`` query value, the CLI's --format choice
    media_type: str
    extension: str  # with the dot: ".ply"
    writer: Callable[[Splat], bytes]
    reader: Callable[[bytes], Splat]
    proto_enum: str | None
    description: str
    sh_degree: int = 3
    export_only: bool = False

    @property
    def proto_value(self) -> int:
        """The ``ExportRequest.Format`` number (ValueError when the format has none)."""
        from glimpse3d.v1 import glimpse3d_pb2

        if self.proto_enum is None:
            raise ValueError(f"format {self.name!r} has no ExportRequest.Format member")
        return glimpse3d_pb2.ExportRequest.Format.Value(self.proto_enum)


_REGISTRY: dict[str, SplatFormat] = {}


def register_format(fmt: SplatFormat) -> SplatFormat:
    """Add ``fmt``; ValueError when its name, extension or proto member is taken, or its media type
    by a format that is not export-only (an export-only format may share a container's media type:
    the splat ``glb`` and the ``mesh-glb`` are both ``model/gltf-binary``)."""
    if not fmt.name or not fmt.extension.startswith("."):
        raise ValueError(f"format needs a name and an extension starting with '.': {fmt!r}")
    for other in _REGISTRY.values():
        for field in ("name", "media_type", "extension", "proto_enum"):
            if field == "media_type" and (fmt.export_only or other.export_only):
                continue
            value = getattr(fmt, field)
            if value is not None and value == getattr(other, field):
                raise ValueError(f"format {fmt.name!r}: {field} {value!r} is already registered by {other.name!r}")
    _REGISTRY[fmt.name] = fmt
    return fmt


def unregister_format(name: str) -> SplatFormat:
    """Remove a format (for tests and plug-ins); KeyError when it is not registered."""
    return _REGISTRY.pop(name)


def format_names() -> tuple[str, ...]:
    """Every registered name, built-ins first in the package's import order."""
    return tuple(_REGISTRY)


def formats() -> tuple[SplatFormat, ...]:
    """Every registered format, in :func:`format_names` order."""
    return tuple(_REGISTRY.values())


def get_format(name: str) -> SplatFormat:
    """The format called ``name``; InvalidInput (field ``format``) naming the valid ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise InvalidInput(f"format must be one of {', '.join(_REGISTRY)}; got {name!r}", field="format") from None


def format_for_proto(value: int) -> SplatFormat:
    """The format an ``ExportRequest.Format`` number asks for; InvalidInput (field ``format``) when
    it is unset, unknown or names no registered format."""
    from glimpse3d.v1 import glimpse3d_pb2

    enum = glimpse3d_pb2.ExportRequest.Format
    members = [f.proto_enum for f in _REGISTRY.values() if f.proto_enum is not None]
    name = enum.Name(value) if value in enum.values() else None
    for fmt in _REGISTRY.values():
        if name is not None and fmt.proto_enum == name:
            return fmt
    raise InvalidInput(f"format must be {', '.join(members[:-1])} or {members[-1]}" if len(members) > 1
                       else f"format must be {''.join(members)}", field="format")

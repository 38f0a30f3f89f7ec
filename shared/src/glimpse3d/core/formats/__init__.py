"""Splat file formats: 3DGS ``.ply`` (lossless, what viewers and trainers exchange), the compact,
lossy ``.splat`` of the antimatter15 web viewer and glTF 2.0 binary with KHR_gaussian_splatting.

Readers accept a path, bytes or a readable binary stream and raise
:class:`~glimpse3d.core.errors.InvalidInput` for any malformed, truncated, oversized or non-finite
input; writers accept a path or a writable binary stream.

:mod:`~glimpse3d.core.formats.registry` names every format (media type, extension, writer, reader,
gRPC enum member); each format module registers itself when imported, and this package imports the
built-in ones in the order ply, splat, glb.
"""

# isort: off
# Importing a format module registers it: this order is the order of format_names().
from glimpse3d.core.formats.ply import read_ply, splat_to_ply_bytes, write_ply
from glimpse3d.core.formats.splatfile import read_splat, splat_to_splat_bytes, write_splat
from glimpse3d.core.formats.glb import read_glb, splat_to_glb_bytes
# isort: on
from glimpse3d.core.formats.registry import (
    DEFAULT_FORMAT,
    SplatFormat,
    format_for_proto,
    format_names,
    formats,
    get_format,
    register_format,
    unregister_format,
)

__all__ = [
    "DEFAULT_FORMAT",
    "SplatFormat",
    "format_for_proto",
    "format_names",
    "formats",
    "get_format",
    "read_glb",
    "read_ply",
    "read_splat",
    "register_format",
    "splat_to_glb_bytes",
    "splat_to_ply_bytes",
    "splat_to_splat_bytes",
    "unregister_format",
    "write_ply",
    "write_splat",
]

"""Splat file formats: 3DGS ``.ply`` (lossless, what viewers and trainers exchange), the compact,
lossy ``.splat`` of the antimatter15 web viewer, glTF 2.0 binary with KHR_gaussian_splatting, and
the compressed ``.spz`` (Niantic) and ``.sog`` (PlayCanvas); and two export-only mesh formats of
the splat's surface, a zipped textured OBJ and a textured GLB (:mod:`~glimpse3d.core.formats.mesh`).

Readers accept a path, bytes or a readable binary stream and raise
:class:`~glimpse3d.core.errors.InvalidInput` for any malformed, truncated, oversized or non-finite
input; writers accept a path or a writable binary stream.

:mod:`~glimpse3d.core.formats.registry` names every format (media type, extension, writer, reader,
gRPC enum member); each format module registers itself when imported, and this package imports the
built-in ones in the order ply, splat, glb, spz, sog, obj, mesh-glb.
"""

# isort: off
# Importing a format module registers it: this order is the order of format_names().
from glimpse3d.core.formats.ply import read_ply, splat_to_ply_bytes, write_ply
from glimpse3d.core.formats.splatfile import read_splat, splat_to_splat_bytes, write_splat
from glimpse3d.core.formats.glb import read_glb, splat_to_glb_bytes
from glimpse3d.core.formats.spz import read_spz, splat_to_spz_bytes
from glimpse3d.core.formats.sog import read_sog, splat_to_sog_bytes
from glimpse3d.core.formats.mesh import splat_to_mesh_glb, splat_to_obj_zip
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
    "read_sog",
    "read_splat",
    "read_spz",
    "register_format",
    "splat_to_glb_bytes",
    "splat_to_mesh_glb",
    "splat_to_obj_zip",
    "splat_to_ply_bytes",
    "splat_to_sog_bytes",
    "splat_to_splat_bytes",
    "splat_to_spz_bytes",
    "unregister_format",
    "write_ply",
    "write_splat",
]

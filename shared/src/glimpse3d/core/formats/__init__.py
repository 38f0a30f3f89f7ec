"""Splat file formats: 3DGS ``.ply`` (lossless, what viewers and trainers exchange) and the compact,
lossy ``.splat`` of the antimatter15 web viewer.

Readers accept a path, bytes or a readable binary stream and raise
:class:`~glimpse3d.core.errors.InvalidInput` for any malformed, truncated, oversized or non-finite
input; writers accept a path or a writable binary stream.
"""

from glimpse3d.core.formats.ply import read_ply, splat_to_ply_bytes, write_ply
from glimpse3d.core.formats.splatfile import read_splat, splat_to_splat_bytes, write_splat

__all__ = [
    "read_ply",
    "read_splat",
    "splat_to_ply_bytes",
    "splat_to_splat_bytes",
    "write_ply",
    "write_splat",
]

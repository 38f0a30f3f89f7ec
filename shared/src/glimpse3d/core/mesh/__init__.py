"""Meshes from splats: :func:`splat_to_mesh` fuses rendered depths into a watertight, UV-mapped,
textured triangle mesh (docs/mesh.md); the ``obj`` and ``mesh-glb`` export formats write it."""

from glimpse3d.core.mesh.surface import DEFAULT_RESOLUTION, default_views, splat_to_mesh

__all__ = ["DEFAULT_RESOLUTION", "default_views", "splat_to_mesh"]

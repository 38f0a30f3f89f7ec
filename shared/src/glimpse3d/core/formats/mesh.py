"""Export-only mesh formats: the splat's surface as a watertight, UV-mapped, textured triangle mesh
(:func:`glimpse3d.core.mesh.splat_to_mesh`), written by trimesh.

- ``obj``: one ZIP (``application/zip``, ``.obj.zip``) holding ``mesh.obj``, ``mesh.mtl`` and the
  texture ``texture.png``, so that a download is one file; the members carry a fixed timestamp, so
  the same splat gives the same bytes.
- ``mesh-glb``: glTF 2.0 binary (``model/gltf-binary``, ``.mesh.glb``) with one triangle primitive,
  a metallic-roughness material and the texture embedded as PNG.

Neither can be read back as a splat: a mesh has no Gaussians. Their readers raise InvalidInput
(field ``format``); :attr:`SplatFormat.export_only` marks them. docs/mesh.md explains the pipeline.
"""

from __future__ import annotations

import io
import zipfile
from typing import TYPE_CHECKING

from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.formats.registry import SplatFormat, register_format
from glimpse3d.core.splat import Splat

if TYPE_CHECKING:
    import trimesh

OBJ_MEMBER, MTL_MEMBER, TEXTURE_MEMBER = "mesh.obj", "mesh.mtl", "texture.png"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a ZIP can hold: no wall-clock time in the bytes


def _mesh(splat: Splat) -> trimesh.Trimesh:
    from glimpse3d.core.mesh import splat_to_mesh

    return splat_to_mesh(splat)


def mesh_to_obj_zip(mesh: trimesh.Trimesh) -> bytes:
    """``mesh`` as a ZIP of ``mesh.obj`` (positions, UVs, normals), ``mesh.mtl`` and ``texture.png``."""
    import trimesh
    from trimesh.exchange.obj import export_obj
    from trimesh.visual import TextureVisuals
    from trimesh.visual.material import SimpleMaterial

    visual = mesh.visual
    if not isinstance(visual, TextureVisuals) or visual.uv is None:
        raise ValueError("the mesh has no UVs and texture to write")
    material = visual.material
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    # Kd 1 (the texture as is: viewers multiply map_Kd by Kd), no ambient or specular term.
    simple = SimpleMaterial(image=image, diffuse=[255, 255, 255, 255], ambient=[0, 0, 0, 255],
                            specular=[0, 0, 0, 255])
    simple.name = material.name
    plain = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False,
                            visual=TextureVisuals(uv=visual.uv, material=simple))
    text, files = export_obj(plain, include_normals=True, include_texture=True, return_texture=True,
                             mtl_name=MTL_MEMBER)
    texture_names = [name for name in files if name != MTL_MEMBER]
    if len(texture_names) != 1:
        raise RuntimeError(f"expected one texture beside the material, trimesh wrote {sorted(files)}")
    # One predictable texture name; the material refers to it.
    mtl = files[MTL_MEMBER].decode("utf-8").replace(texture_names[0], TEXTURE_MEMBER).encode("utf-8")
    members = {OBJ_MEMBER: text.encode("utf-8"), MTL_MEMBER: mtl, TEXTURE_MEMBER: files[texture_names[0]]}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def mesh_to_glb(mesh: trimesh.Trimesh) -> bytes:
    """``mesh`` as a binary glTF 2.0 file with its texture embedded (not its metadata: no timings in the bytes)."""
    import trimesh
    from trimesh.exchange.gltf import export_glb

    plain = trimesh.Trimesh(mesh.vertices, mesh.faces, visual=mesh.visual, process=False)
    return export_glb(plain, include_normals=True)


def splat_to_obj_zip(splat: Splat) -> bytes:
    """The splat's surface mesh as a ZIP of OBJ + MTL + PNG (see :func:`mesh_to_obj_zip`)."""
    return mesh_to_obj_zip(_mesh(splat))


def splat_to_mesh_glb(splat: Splat) -> bytes:
    """The splat's surface mesh as a textured glTF 2.0 binary (see :func:`mesh_to_glb`)."""
    return mesh_to_glb(_mesh(splat))


def _not_a_splat(name: str):
    def read(_data: bytes) -> Splat:
        raise InvalidInput(f"format {name!r} is an export-only mesh: it holds no Gaussians to read as a splat",
                           field="format")

    return read


OBJ = register_format(SplatFormat(
    name="obj", media_type="application/zip", extension=".obj.zip", writer=splat_to_obj_zip,
    reader=_not_a_splat("obj"), proto_enum="OBJ", export_only=True,
    description="ZIP of a textured, watertight OBJ mesh of the surface (mesh.obj, mesh.mtl, texture.png)"))

MESH_GLB = register_format(SplatFormat(
    name="mesh-glb", media_type="model/gltf-binary", extension=".mesh.glb", writer=splat_to_mesh_glb,
    reader=_not_a_splat("mesh-glb"), proto_enum="MESH_GLB", export_only=True,
    description="glTF 2.0 binary of a textured, watertight triangle mesh of the surface"))

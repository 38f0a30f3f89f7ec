"""glTF 2.0 binary (``.glb``) splats with the KHR_gaussian_splatting extension.

One POINTS primitive whose attributes hold the means, unit quaternions in glTF order (x, y, z, w),
linear scales, opacities and the raw SH coefficients, plus a ``COLOR_0`` point-cloud fallback; the
extension is used but not required. No coordinate conversion is needed (both are right-handed, +y
up, front +z). pygltflib is imported on first use. The layout in detail: docs/formats.md.
"""

from __future__ import annotations

import re
import struct
from typing import TYPE_CHECKING

import numpy as np

from glimpse3d.core.errors import FailedPrecondition, InvalidInput
from glimpse3d.core.formats.registry import SplatFormat, register_format
from glimpse3d.core.splat import Splat

if TYPE_CHECKING:
    import pygltflib

EXTENSION = "KHR_gaussian_splatting"
PREFIX = f"{EXTENSION}:"
COLOR_SPACE = "srgb_rec709_display"
MEDIA_TYPE = "model/gltf-binary"

_TYPE_WIDTHS = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}
_GLB_MAGIC = b"glTF"
_SH_NAME_RE = re.compile(rf"{re.escape(PREFIX)}SH_DEGREE_([0-3])_COEF_([0-6])")


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """The sRGB transfer function inverted (IEC 61966-2-1), for values in [0, 1]."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _sh_attribute_names(degree: int) -> list[str]:
    """glTF semantics of the SH coefficients of degrees 0..``degree``, in our array order."""
    return [f"{PREFIX}SH_DEGREE_{band}_COEF_{n}" for band in range(degree + 1) for n in range(2 * band + 1)]


def _gaussian_attributes(splat: Splat) -> dict[str, np.ndarray]:
    """Every attribute as a float32 [N, width] array, keyed by its glTF semantic."""
    quats_wxyz = splat.unit_quats
    opacity = splat.opacities
    fallback = np.empty((splat.num_gaussians, 4), np.float32)
    fallback[:, :3] = srgb_to_linear(splat.base_colors)
    fallback[:, 3] = opacity
    attributes = {
        "POSITION": splat.means,
        "COLOR_0": fallback,
        f"{PREFIX}ROTATION": quats_wxyz[:, [1, 2, 3, 0]],
        f"{PREFIX}SCALE": splat.scales,
        f"{PREFIX}OPACITY": opacity[:, None],
    }
    for k, name in enumerate(_sh_attribute_names(splat.sh_degree)):
        attributes[name] = splat.sh[:, k, :]
    return {name: np.ascontiguousarray(a, dtype="<f4") for name, a in attributes.items()}


def _accessor_type(width: int) -> str:
    import pygltflib

    return {1: pygltflib.SCALAR, 3: pygltflib.VEC3, 4: pygltflib.VEC4}[width]


def splat_to_glb_bytes(splat: Splat) -> bytes:
    """The splat as a binary glTF 2.0 file (see the module docstring for the layout)."""
    if splat.num_gaussians == 0:
        raise FailedPrecondition("the splat has no Gaussians; glTF accessors need at least one element")
    import pygltflib

    gltf = pygltflib.GLTF2(asset=pygltflib.Asset(version="2.0", generator="glimpse3d"))
    blob = bytearray()
    semantics: dict[str, int] = {}
    for name, array in _gaussian_attributes(splat).items():
        offset = len(blob)
        blob += array.tobytes()
        blob += b"\x00" * (-len(blob) % 4)
        gltf.bufferViews.append(pygltflib.BufferView(
            buffer=0, byteOffset=offset, byteLength=array.nbytes, target=pygltflib.ARRAY_BUFFER))
        accessor = pygltflib.Accessor(
            bufferView=len(gltf.bufferViews) - 1, componentType=pygltflib.FLOAT,
            count=splat.num_gaussians, type=_accessor_type(array.shape[1]))
        if name == "POSITION":
            accessor.min = [float(v) for v in array.min(axis=0)]
            accessor.max = [float(v) for v in array.max(axis=0)]
        gltf.accessors.append(accessor)
        semantics[name] = len(gltf.accessors) - 1
    gltf.buffers.append(pygltflib.Buffer(byteLength=len(blob)))
    primitive = pygltflib.Primitive(
        attributes=pygltflib.Attributes(**semantics), mode=pygltflib.POINTS,
        extensions={EXTENSION: {"kernel": "ellipse", "colorSpace": COLOR_SPACE}})
    gltf.meshes.append(pygltflib.Mesh(name="gaussians", primitives=[primitive]))
    gltf.nodes.append(pygltflib.Node(name="splat", mesh=0))
    gltf.scenes.append(pygltflib.Scene(nodes=[0]))
    gltf.scene = 0
    gltf.extensionsUsed = [EXTENSION]
    gltf.set_binary_blob(bytes(blob))
    return b"".join(gltf.save_to_bytes())


def _read_accessor(gltf: pygltflib.GLTF2, blob: bytes, index: int) -> np.ndarray:
    import pygltflib

    accessor = gltf.accessors[index]
    if accessor.componentType != pygltflib.FLOAT or accessor.type not in _TYPE_WIDTHS:
        raise InvalidInput(f"accessor {index} is not a FLOAT SCALAR/VEC3/VEC4 accessor", field="glb")
    if accessor.bufferView is None:
        raise InvalidInput(f"accessor {index} has no buffer view", field="glb")
    width = _TYPE_WIDTHS[accessor.type]
    view = gltf.bufferViews[accessor.bufferView]
    stride = view.byteStride or 4 * width
    start = (view.byteOffset or 0) + (accessor.byteOffset or 0)
    needed = stride * (accessor.count - 1) + 4 * width if accessor.count else 0
    if start + needed > len(blob) or needed > view.byteLength:
        raise InvalidInput(f"accessor {index} reaches past the end of its buffer view", field="glb")
    rows = np.ndarray((accessor.count, width), dtype="<f4", buffer=blob, offset=start, strides=(stride, 4))
    return np.array(rows, dtype=np.float32)


def read_glb_gaussians(data: bytes) -> dict[str, np.ndarray]:
    """The Gaussian attributes of the first KHR_gaussian_splatting primitive of a GLB, keyed by
    glTF semantic (``POSITION``, ``COLOR_0``, ``KHR_gaussian_splatting:ROTATION``, ...), each a
    float32 [N, width] array. Only FLOAT accessors (what :func:`splat_to_glb_bytes` writes) are read.
    """
    if len(data) < 12 or data[:4] != _GLB_MAGIC or struct.unpack_from("<I", data, 4)[0] != 2:
        raise InvalidInput("data is not a glTF 2.0 binary (GLB) file", field="glb")
    import pygltflib

    gltf = pygltflib.GLTF2.load_from_bytes(data)
    if gltf is None:  # no JSON chunk
        raise InvalidInput("the GLB has no JSON chunk", field="glb")
    blob = gltf.binary_blob() or b""
    for mesh in gltf.meshes:
        for primitive in mesh.primitives:
            if EXTENSION in (primitive.extensions or {}):
                semantics = {k: v for k, v in vars(primitive.attributes).items() if v is not None}
                return {name: _read_accessor(gltf, blob, index) for name, index in semantics.items()}
    raise InvalidInput(f"the GLB has no primitive with the {EXTENSION} extension", field="glb")


def gaussians_to_splat(attributes: dict[str, np.ndarray]) -> Splat:
    """A :class:`Splat` back from :func:`read_glb_gaussians` output (inverse of the GLB export up
    to float32 rounding; opacities of exactly 0 or 1 are clamped to keep the logit finite)."""
    sh_names = [name for name in attributes if _SH_NAME_RE.fullmatch(name)]
    if not sh_names:
        raise InvalidInput(f"the GLB has no {PREFIX}SH_DEGREE_0_COEF_0 attribute", field="glb")
    degree = max(int(_SH_NAME_RE.fullmatch(name).group(1)) for name in sh_names)  # type: ignore[union-attr]
    expected = _sh_attribute_names(degree)
    if sorted(sh_names) != sorted(expected):
        raise InvalidInput(f"spherical harmonics of degree {degree} are only partially defined", field="glb")
    opacity = np.clip(attributes[f"{PREFIX}OPACITY"][:, 0].astype(np.float64), 1e-7, 1 - 1e-7)
    return Splat(
        means=attributes["POSITION"],
        quats=attributes[f"{PREFIX}ROTATION"][:, [3, 0, 1, 2]],
        log_scales=np.log(np.maximum(attributes[f"{PREFIX}SCALE"].astype(np.float64), 1e-30)).astype(np.float32),
        opacity_logits=(np.log(opacity) - np.log1p(-opacity)).astype(np.float32),
        sh=np.stack([attributes[name] for name in expected], axis=1),
    )


def read_glb(data: bytes) -> Splat:
    """A :class:`Splat` back from a GLB that :func:`splat_to_glb_bytes` wrote (see :func:`gaussians_to_splat`)."""
    return gaussians_to_splat(read_glb_gaussians(data))


GLB = register_format(SplatFormat(
    name="glb", media_type=MEDIA_TYPE, extension=".glb", writer=splat_to_glb_bytes, reader=read_glb,
    proto_enum="GLB", description="glTF 2.0 binary with KHR_gaussian_splatting"))

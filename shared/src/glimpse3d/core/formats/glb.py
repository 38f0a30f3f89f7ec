"""glTF 2.0 binary (``.glb``) splats with the KHR_gaussian_splatting extension.

One POINTS primitive whose attributes hold the means, unit quaternions in glTF order (x, y, z, w),
linear scales, opacities and the raw SH coefficients, plus a ``COLOR_0`` point-cloud fallback; the
extension is used but not required. No coordinate conversion is needed (both are right-handed, +y
up, front +z). pygltflib writes the file (imported on first use); the reader parses the container and
its JSON itself, checking every index, offset and length before use. The layout: docs/formats.md.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import numpy as np

from glimpse3d.core.errors import FailedPrecondition, InvalidInput
from glimpse3d.core.formats.registry import SplatFormat, register_format
from glimpse3d.core.splat import Splat

EXTENSION = "KHR_gaussian_splatting"
PREFIX = f"{EXTENSION}:"
COLOR_SPACE = "srgb_rec709_display"
MEDIA_TYPE = "model/gltf-binary"

_TYPE_WIDTHS = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}
_GLB_MAGIC = b"glTF"
_JSON_CHUNK, _BIN_CHUNK = b"JSON", b"BIN\x00"
_FLOAT = 5126  # glTF componentType FLOAT
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


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, field="glb")


def _chunks(data: bytes) -> tuple[bytes, bytes]:
    """(JSON chunk, BIN chunk or b"") of a GLB container, every length checked against the data."""
    if len(data) < 12 or data[:4] != _GLB_MAGIC or struct.unpack_from("<I", data, 4)[0] != 2:
        raise _bad("data is not a glTF 2.0 binary (GLB) file")
    (length,) = struct.unpack_from("<I", data, 8)
    if length > len(data):
        raise _bad(f"the GLB header declares {length} bytes but the data has only {len(data)}")
    chunks: list[tuple[bytes, bytes]] = []
    pos = 12
    while pos < length:
        if pos + 8 > length:
            raise _bad(f"the GLB chunk header at byte {pos} is truncated")
        size, kind = struct.unpack_from("<I4s", data, pos)
        if pos + 8 + size > length:
            raise _bad(f"the GLB chunk at byte {pos} declares {size} bytes, past the end of the file")
        chunks.append((kind, data[pos + 8 : pos + 8 + size]))
        pos += 8 + size
    if not chunks or chunks[0][0] != _JSON_CHUNK:
        raise _bad("the GLB has no JSON chunk first")
    binary = chunks[1][1] if len(chunks) > 1 and chunks[1][0] == _BIN_CHUNK else b""
    return chunks[0][1], binary


def _int(obj: dict[str, Any], key: str, where: str, default: int | None = None, minimum: int = 0) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(f"{where}.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _item(doc: dict[str, Any], array: str, index: object) -> dict[str, Any]:
    items = doc.get(array)
    if (
        not isinstance(items, list)
        or isinstance(index, bool)
        or not isinstance(index, int)
        or not 0 <= index < len(items)
        or not isinstance(items[index], dict)
    ):
        raise _bad(f"{array}[{index!r}] does not exist")
    return items[index]


def _read_accessor(doc: dict[str, Any], blob: bytes, index: object) -> np.ndarray:
    accessor = _item(doc, "accessors", index)
    where = f"accessors[{index}]"
    kind = accessor.get("type")
    if accessor.get("componentType") != _FLOAT or not isinstance(kind, str) or kind not in _TYPE_WIDTHS:
        raise _bad(f"accessor {index} is not a FLOAT SCALAR/VEC3/VEC4 accessor")
    if "bufferView" not in accessor:
        raise _bad(f"accessor {index} has no buffer view")
    width = _TYPE_WIDTHS[kind]
    view = _item(doc, "bufferViews", accessor["bufferView"])
    view_where = f"bufferViews[{accessor['bufferView']}]"
    if _int(view, "buffer", view_where) != 0:
        raise _bad(f"{view_where} refers to a buffer other than the GLB's binary chunk")
    stride = _int(view, "byteStride", view_where, default=4 * width, minimum=4 * width)
    if stride % 4:
        raise _bad(f"{view_where}.byteStride must be a multiple of 4, got {stride}")
    view_start = _int(view, "byteOffset", view_where, default=0)
    view_length = _int(view, "byteLength", view_where, minimum=1)
    offset = _int(accessor, "byteOffset", where, default=0)
    count = _int(accessor, "count", where, minimum=1)
    start = view_start + offset
    needed = stride * (count - 1) + 4 * width
    if start % 4:
        raise _bad(f"accessor {index} starts at byte {start}, which is not 4-byte aligned")
    if view_start + view_length > len(blob) or offset + needed > view_length:
        raise _bad(f"accessor {index} reaches past the end of its buffer view")
    rows = np.ndarray((count, width), dtype="<f4", buffer=blob, offset=start, strides=(stride, 4))
    return np.array(rows, dtype=np.float32)


def read_glb_gaussians(data: bytes) -> dict[str, np.ndarray]:
    """The Gaussian attributes of the first KHR_gaussian_splatting primitive of a GLB, keyed by
    glTF semantic (``POSITION``, ``COLOR_0``, ``KHR_gaussian_splatting:ROTATION``, ...), each a
    float32 [N, width] array. Only FLOAT accessors (what :func:`splat_to_glb_bytes` writes) are read.

    The container and its JSON are read here, every index, offset and length checked against the
    data before use: any malformed file is an :class:`InvalidInput` (field ``glb``).
    """
    text, blob = _chunks(bytes(data))
    try:
        doc = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"the GLB's JSON chunk is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad("the GLB's JSON chunk is not a JSON object")
    meshes = doc.get("meshes", [])
    for mesh in meshes if isinstance(meshes, list) else []:
        primitives = mesh.get("primitives", []) if isinstance(mesh, dict) else []
        for primitive in primitives if isinstance(primitives, list) else []:
            extensions = primitive.get("extensions") if isinstance(primitive, dict) else None
            if isinstance(extensions, dict) and EXTENSION in extensions:
                semantics = primitive.get("attributes")
                if not isinstance(semantics, dict):
                    raise _bad(f"the {EXTENSION} primitive has no attributes object")
                return {str(name): _read_accessor(doc, blob, index) for name, index in semantics.items()}
    raise _bad(f"the GLB has no primitive with the {EXTENSION} extension")


_REQUIRED_WIDTHS = {"POSITION": 3, f"{PREFIX}ROTATION": 4, f"{PREFIX}SCALE": 3, f"{PREFIX}OPACITY": 1}


def gaussians_to_splat(attributes: dict[str, np.ndarray]) -> Splat:
    """A :class:`Splat` back from :func:`read_glb_gaussians` output (inverse of the GLB export up
    to float32 rounding; opacities of exactly 0 or 1 are clamped to keep the logit finite)."""
    for name, width in _REQUIRED_WIDTHS.items():
        if name not in attributes:
            raise _bad(f"the GLB has no {name} attribute")
        if attributes[name].shape[1] != width:
            raise _bad(f"the GLB's {name} attribute has {attributes[name].shape[1]} components, not {width}")
    sh_names = [name for name in attributes if _SH_NAME_RE.fullmatch(name)]
    if not sh_names:
        raise _bad(f"the GLB has no {PREFIX}SH_DEGREE_0_COEF_0 attribute")
    degree = max(int(_SH_NAME_RE.fullmatch(name).group(1)) for name in sh_names)  # type: ignore[union-attr]
    expected = _sh_attribute_names(degree)
    if sorted(sh_names) != sorted(expected):
        raise _bad(f"spherical harmonics of degree {degree} are only partially defined")
    bad = next((name for name in expected if attributes[name].shape[1] != 3), None)
    if bad is not None:
        raise _bad(f"the GLB's {bad} attribute is not a VEC3")
    counts = {len(a) for name, a in attributes.items() if name in _REQUIRED_WIDTHS or name in expected}
    if len(counts) != 1:
        raise _bad(f"the GLB's Gaussian attributes have different counts: {sorted(counts)}")
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

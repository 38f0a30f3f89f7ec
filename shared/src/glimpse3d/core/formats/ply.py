"""3D Gaussian Splatting ``.ply`` files, the format every Gaussian-splat viewer and trainer reads.

The reference layout (binary little-endian, one float32 ``vertex`` property per value, the
:class:`Splat` fields unchanged, so a write/read round trip is exact). Reading checks the header and
the data size before allocating anything and raises :class:`~glimpse3d.core.errors.InvalidInput`
naming the problem; files on disk are memory-mapped by plyfile, other sources decoded with numpy.
The layout and checks: docs/formats.md.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import numpy as np
from numpy.lib.recfunctions import structured_to_unstructured
from plyfile import PlyData, PlyElement, PlyParseError

from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.formats._io import Dest, Source, has_fileno, open_dest, open_source, read_bounded, remaining_size
from glimpse3d.core.formats.registry import SplatFormat, register_format
from glimpse3d.core.splat import MAX_GAUSSIANS, Splat, sh_coeffs_for_degree

_LOG = logging.getLogger(__name__)

HEADER_LIMIT = 64 * 1024
"""Largest PLY header accepted, in bytes (a degree-3 splat header is about 1.6 KiB)."""

# PLY scalar type names (both spellings) -> numpy type codes.
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
# Number of f_rest_* properties -> SH degree.
_REST_DEGREES = {0: 0, 9: 1, 24: 2, 45: 3}
_POSITION = ("x", "y", "z")
_DC = ("f_dc_0", "f_dc_1", "f_dc_2")
_SCALE = ("scale_0", "scale_1", "scale_2")
_ROT = ("rot_0", "rot_1", "rot_2", "rot_3")
_TAIL = ("opacity", *_SCALE, *_ROT)
_REQUIRED = (*_POSITION, *_DC, *_TAIL)


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, field="ply")


def _rest_names(count: int) -> list[str]:
    return [f"f_rest_{i}" for i in range(count)]


def ply_property_names(sh_degree: int) -> list[str]:
    """Vertex property names, in file order, of a splat ``.ply`` with SH degree ``sh_degree``."""
    n_rest = 3 * (sh_coeffs_for_degree(sh_degree) - 1)
    return [*_POSITION, "nx", "ny", "nz", *_DC, *_rest_names(n_rest), *_TAIL]


def splat_to_vertex_array(splat: Splat) -> np.ndarray:
    """The splat as a structured little-endian float32 array [N] in the reference vertex layout."""
    n, k = splat.sh.shape[:2]
    names = ply_property_names(splat.sh_degree)
    cols = np.zeros((n, len(names)), dtype="<f4")
    rest_end = 9 + 3 * (k - 1)
    cols[:, 0:3] = splat.means
    cols[:, 6:9] = splat.sh[:, 0, :]
    cols[:, 9:rest_end] = splat.sh[:, 1:, :].transpose(0, 2, 1).reshape(n, rest_end - 9)
    cols[:, rest_end] = splat.opacity_logits
    cols[:, rest_end + 1 : rest_end + 4] = splat.log_scales
    cols[:, rest_end + 4 : rest_end + 8] = splat.quats
    return cols.view(np.dtype([(name, "<f4") for name in names])).reshape(n)


def write_ply(splat: Splat, dest: Dest) -> None:
    """Write ``splat`` as a binary little-endian 3DGS ``.ply`` to a path or a writable binary stream."""
    element = PlyElement.describe(splat_to_vertex_array(splat), "vertex")
    with open_dest(dest) as f:
        PlyData([element], text=False, byte_order="<").write(f)


def splat_to_ply_bytes(splat: Splat) -> bytes:
    """The ``.ply`` file :func:`write_ply` writes, as bytes."""
    buf = io.BytesIO()
    write_ply(splat, buf)
    return buf.getvalue()


@dataclass(frozen=True)
class _Element:
    name: str
    count: int
    dtype: np.dtype  # structured, little-endian, one field per property

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


@dataclass(frozen=True)
class _Header:
    size: int  # bytes up to and including the end_header line
    elements: tuple[_Element, ...]
    vertex_index: int
    n_rest: int  # number of f_rest_* properties

    @property
    def vertex(self) -> _Element:
        return self.elements[self.vertex_index]

    @property
    def vertex_offset(self) -> int:
        """Offset of the vertex data from the end of the header."""
        return sum(e.nbytes for e in self.elements[: self.vertex_index])

    @property
    def body_size(self) -> int:
        return sum(e.nbytes for e in self.elements)


def _split_header(head: bytes) -> tuple[list[str], int]:
    """Header lines after ``ply`` (without line ends) and the header size in bytes."""
    if head[:3] != b"ply":
        raise _bad("not a PLY file: it does not start with 'ply'")
    nl = next((c for c in (b"\r\n", b"\n", b"\r") if head[3:].startswith(c)), None)
    if nl is None:
        raise _bad("not a PLY file: unexpected characters after 'ply'")
    end = head.find(nl + b"end_header" + nl, 3)
    if end < 0:
        if len(head) >= HEADER_LIMIT:
            raise _bad(f"PLY header is longer than the limit of {HEADER_LIMIT} bytes")
        raise _bad("PLY header is truncated: no 'end_header' line")
    try:
        text = head[:end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise _bad(f"PLY header contains a non-ASCII byte at offset {exc.start}") from exc
    return text.split(nl.decode("ascii"))[1:], end + len(b"end_header") + 2 * len(nl)


def _parse_format(words: list[str], line: int) -> None:
    if len(words) != 3 or words[2] != "1.0":
        raise _bad(f"PLY header line {line}: expected 'format binary_little_endian 1.0'")
    if words[1] in ("ascii", "binary_big_endian"):
        raise _bad(f"{words[1]} PLY is not supported: Gaussian splat .ply files must be binary_little_endian 1.0")
    if words[1] != "binary_little_endian":
        raise _bad(f"PLY header line {line}: unknown format {words[1]!r}")


def _parse_element(words: list[str], line: int) -> tuple[str, int, list[tuple[str, str]]]:
    if len(words) != 3 or not words[2].isdigit():
        raise _bad(f"PLY header line {line}: expected 'element <name> <count>'")
    return words[1], int(words[2]), []


def _parse_property(words: list[str], line: int) -> tuple[str, str]:
    if len(words) >= 2 and words[1] == "list":
        raise _bad(f"PLY header line {line}: list property {words[-1]!r} is not supported in a Gaussian splat PLY")
    if len(words) != 3:
        raise _bad(f"PLY header line {line}: expected 'property <type> <name>'")
    code = _PLY_TYPES.get(words[1])
    if code is None:
        raise _bad(f"PLY header line {line}: unknown property type {words[1]!r}")
    return words[2], code


def _parse_lines(lines: list[str]) -> list[tuple[str, int, list[tuple[str, str]]]]:
    """(name, count, [(property, numpy code)]) per element; the format line is checked on the way."""
    seen_format = False
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    for line, text in enumerate(lines, start=2):
        words = text.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if not seen_format:
            if words[0] != "format":
                raise _bad(f"PLY header line {line}: expected 'format', got {words[0]!r}")
            _parse_format(words, line)
            seen_format = True
        elif words[0] == "element":
            elements.append(_parse_element(words, line))
        elif words[0] == "property" and elements:
            elements[-1][2].append(_parse_property(words, line))
        else:
            raise _bad(f"PLY header line {line}: unexpected {words[0]!r}")
    if not seen_format:
        raise _bad("PLY header has no 'format' line")
    return elements


def _build_elements(parsed: list[tuple[str, int, list[tuple[str, str]]]]) -> tuple[_Element, ...]:
    elements: list[_Element] = []
    for name, count, props in parsed:
        if any(e.name == name for e in elements):
            raise _bad(f"PLY header declares element {name!r} twice")
        if not props:
            raise _bad(f"PLY element {name!r} has no properties")
        names = [p for p, _ in props]
        dup = next((p for i, p in enumerate(names) if p in names[:i]), None)
        if dup is not None:
            raise _bad(f"PLY element {name!r} declares property {dup!r} twice")
        elements.append(_Element(name, count, np.dtype([(p, "<" + code) for p, code in props])))
    return tuple(elements)


def _check_vertex(vertex: _Element, max_gaussians: int) -> int:
    """Validate the vertex element; returns the number of f_rest_* properties."""
    if vertex.count > max_gaussians:
        raise _bad(f"PLY vertex count {vertex.count} exceeds the limit of {max_gaussians} Gaussians")
    # numpy's stubs key dtype.fields by LiteralString; these names come from the file.
    fields = cast("Mapping[str, tuple[Any, ...]]", vertex.dtype.fields or {})
    missing = [p for p in _REQUIRED if p not in fields]
    if missing:
        raise _bad(f"PLY vertex element is missing required properties: {', '.join(missing)}")
    rest = [p for p in fields if p.startswith("f_rest_")]
    if len(rest) not in _REST_DEGREES or set(rest) != set(_rest_names(len(rest))):
        raise _bad(
            f"PLY vertex element has {len(rest)} f_rest_* properties; expected f_rest_0..f_rest_(M-1) "
            "with M = 0, 9, 24 or 45 (SH degree 0..3)"
        )
    not_float = [p for p in (*_REQUIRED, *rest) if fields[p][0].kind != "f"]
    if not_float:
        raise _bad(f"PLY vertex properties must be float or double: {', '.join(not_float)} are not")
    return len(rest)


def _parse_header(head: bytes, max_gaussians: int) -> _Header:
    """Parse and validate the header at the start of ``head`` (the first HEADER_LIMIT bytes or fewer)."""
    lines, size = _split_header(head)
    elements = _build_elements(_parse_lines(lines))
    index = next((i for i, e in enumerate(elements) if e.name == "vertex"), None)
    if index is None:
        raise _bad("PLY file has no 'vertex' element")
    n_rest = _check_vertex(elements[index], max_gaussians)
    return _Header(size=size, elements=elements, vertex_index=index, n_rest=n_rest)


def _check_body(header: _Header, available: int) -> None:
    if available < header.body_size:
        raise _bad(
            f"PLY data is truncated: the header describes {header.body_size} bytes of element data "
            f"but only {max(available, 0)} follow it"
        )
    if available > header.body_size:
        _LOG.debug("ignoring %d bytes after the PLY element data", available - header.body_size)


def _sh_names(n_rest: int) -> list[str]:
    """SH property names in [K, 3] (coefficient-major) order, undoing the channel-major f_rest layout."""
    k = n_rest // 3 + 1
    return [_DC[c] if j == 0 else f"f_rest_{c * (k - 1) + j - 1}" for j in range(k) for c in range(3)]


def _splat_from_vertex(vertex: np.ndarray, n_rest: int) -> Splat:
    """Copy the needed properties out of the (possibly memory-mapped) vertex records, one field at a time."""

    def columns(names: Sequence[str]) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):  # doubles beyond float32 become inf: rejected by Splat
            return structured_to_unstructured(vertex[list(names)], dtype=np.float32, copy=True)

    return Splat(
        means=columns(_POSITION),
        quats=columns(_ROT),
        log_scales=columns(_SCALE),
        opacity_logits=columns(["opacity"])[:, 0],
        sh=columns(_sh_names(n_rest)).reshape(len(vertex), n_rest // 3 + 1, 3),
    )


def _read_buffer(data: memoryview, max_gaussians: int) -> Splat:
    header = _parse_header(bytes(data[:HEADER_LIMIT]), max_gaussians)
    _check_body(header, len(data) - header.size)
    vertex = np.frombuffer(
        data, dtype=header.vertex.dtype, count=header.vertex.count, offset=header.size + header.vertex_offset
    )
    return _splat_from_vertex(vertex, header.n_rest)


def _read_file(f: BinaryIO, available: int, max_gaussians: int) -> Splat:
    """Validate, then let plyfile memory-map the element data of an OS-backed seekable stream."""
    start = f.tell()
    header = _parse_header(read_bounded(f, HEADER_LIMIT), max_gaussians)
    _check_body(header, available - header.size)
    f.seek(start)
    try:
        vertex = PlyData.read(f, mmap="c")["vertex"].data
    except (PlyParseError, ValueError, KeyError) as exc:  # the file changed under us, or plyfile disagrees
        raise _bad(f"PLY file could not be parsed: {exc}") from exc
    return _splat_from_vertex(vertex, header.n_rest)


def read_ply(src: Source, *, max_gaussians: int = MAX_GAUSSIANS) -> Splat:
    """Read a binary little-endian 3DGS ``.ply`` from a path, bytes, or a readable binary stream.

    Raises :class:`InvalidInput` for anything malformed, truncated, over ``max_gaussians`` or
    non-finite. Errors opening or reading a path or stream (``OSError``) propagate unchanged.
    """
    if isinstance(src, bytes | bytearray | memoryview):
        return _read_buffer(memoryview(src).cast("B"), max_gaussians)
    with open_source(src) as f:
        available = remaining_size(f)
        if available is not None and has_fileno(f):
            return _read_file(f, available, max_gaussians)
        head = read_bounded(f, HEADER_LIMIT)
        header = _parse_header(head, max_gaussians)
        body = read_bounded(f, max(header.size + header.body_size - len(head), 0))
        return _read_buffer(memoryview(head + body), max_gaussians)


PLY = register_format(SplatFormat(
    name="ply", media_type="application/x-glimpse3d-splat+ply", extension=".ply", writer=splat_to_ply_bytes,
    reader=read_ply, proto_enum="PLY", description="3DGS binary little-endian .ply, lossless"))

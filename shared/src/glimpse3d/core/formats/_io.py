"""Byte plumbing shared by the splat file formats: where bytes come from and go to, read with bounds.

Readers never trust a length they have not checked against the bytes actually available, and never
ask a stream for more than a bounded number of bytes at once (``BufferedReader.read(n)`` allocates
``n`` bytes up front, whatever the stream holds).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

BytesLike = bytes | bytearray | memoryview
Source = str | os.PathLike[str] | BytesLike | BinaryIO
Dest = str | os.PathLike[str] | BinaryIO

READ_CHUNK = 1 << 20


@contextmanager
def open_dest(dest: Dest) -> Iterator[BinaryIO]:
    """A writable binary stream for ``dest``: a path is opened (and closed), a stream is used as is."""
    if isinstance(dest, str | os.PathLike):
        with open(dest, "wb") as f:
            yield f
    else:
        yield dest


@contextmanager
def open_source(src: str | os.PathLike[str] | BinaryIO) -> Iterator[BinaryIO]:
    """A readable binary stream for ``src``: a path is opened (and closed), a stream is used as is."""
    if isinstance(src, str | os.PathLike):
        with open(src, "rb") as f:
            yield f
    else:
        yield src


def remaining_size(stream: BinaryIO) -> int | None:
    """Bytes between the stream's position and its end, or None when the stream cannot seek."""
    try:
        if not stream.seekable():
            return None
        pos = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(pos)
    except (OSError, ValueError):
        return None
    return max(end - pos, 0)


def has_fileno(stream: BinaryIO) -> bool:
    """True when ``stream`` is backed by an operating-system file."""
    try:
        stream.fileno()
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return False
    return True


def read_bounded(stream: BinaryIO, limit: int) -> bytes:
    """Read until end of stream or ``limit`` bytes, whichever comes first, in bounded chunks."""
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = stream.read(min(remaining, READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)

"""Bounded image decoding: a per-process pixel budget, a limit on concurrent decodes, and memory that
goes back to the system afterwards.

A PNG of a few kilobytes can declare 8192 x 8192 pixels (a "decompression bomb" that is still a
legal, allowed image); decoding it to an RGB array briefly takes about 11 bytes a pixel (Pillow's
own buffer, the converted copy and the array), some 700 MiB. Without a bound, twenty such uploads
at once would take the process past 10 GiB. :func:`glimpse3d.core.images.decode_image` therefore
reads the size from the header, then *reserves* ``width x height`` pixels from the process's
:class:`DecodeGate` before it decodes a single pixel, and gives them back when the decode ends
(also when it fails):

- at most ``max_concurrent`` decodes run at once, together at most ``max_pixels`` pixels;
- a reservation that cannot be made within ``wait_s`` seconds is refused with
  :class:`~glimpse3d.core.errors.Overloaded` (gRPC RESOURCE_EXHAUSTED, HTTP 429 with Retry-After);
- an image larger than the whole budget can never be decoded here and is refused at once with
  :class:`~glimpse3d.core.errors.InvalidInput` (only with a budget set below one full-size image).

After a decode of at least ``trim_pixels`` pixels the gate asks glibc to hand freed heap memory
back to the system (``malloc_trim(0)``). Measured on an 8192 x 8192 bomb: without it the process
keeps 145 MiB after one decode and about 490 MiB after four concurrent ones (freed, but held by
malloc's per-thread arenas, because Pillow's 16 MiB blocks fall under glibc's adaptive mmap
threshold once the first large block has been freed); with it the process is back at its idle size
after either. The call is skipped where the C library has no ``malloc_trim`` (musl, macOS).

The process gate is built on first use from ``GLIMPSE3D_DECODE_*`` variables (:class:`DecodeConfig`);
:func:`set_process_gate` replaces it (tests, benchmarks).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from glimpse3d.core.config import ConfigError, Settings, load_config
from glimpse3d.core.errors import InvalidInput, Overloaded

log = logging.getLogger(__name__)

FULL_SIZE_PIXELS = 8192 * 8192  # the largest image decode_image accepts (MAX_IMAGE_SIDE a side)
MAX_WAIT_S = 60.0


class DecodeConfig(Settings):
    """decode_max_pixels: pixels (width x height) all images being decoded at once may have together;
        the default, two full-size images, bounds the decoding memory to about 1.5 GiB.
    decode_max_concurrent: images decoded at once, whatever their size.
    decode_wait_s: how long a decode waits for room before it is refused with RESOURCE_EXHAUSTED.
    decode_trim_pixels: after a decode of at least this many pixels, return freed heap memory to the
        system (glibc ``malloc_trim``); 0 never does.
    """

    decode_max_pixels: int = 2 * FULL_SIZE_PIXELS
    decode_max_concurrent: int = 4
    decode_wait_s: float = 2.0
    decode_trim_pixels: int = 1 << 20

    def check(self) -> None:
        if self.decode_max_pixels < 1:
            raise ConfigError(
                f"decode_max_pixels must be at least 1, got {self.decode_max_pixels}", field="decode_max_pixels"
            )
        if not 1 <= self.decode_max_concurrent <= 1024:
            raise ConfigError(
                f"decode_max_concurrent must be in 1..1024, got {self.decode_max_concurrent}",
                field="decode_max_concurrent",
            )
        if not (math.isfinite(self.decode_wait_s) and 0 <= self.decode_wait_s <= MAX_WAIT_S):
            raise ConfigError(
                f"decode_wait_s must be in [0, {MAX_WAIT_S:g}] seconds, got {self.decode_wait_s}", field="decode_wait_s"
            )
        if self.decode_trim_pixels < 0:
            raise ConfigError(
                f"decode_trim_pixels must be 0 (never) or more, got {self.decode_trim_pixels}",
                field="decode_trim_pixels",
            )


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def release_free_memory() -> bool:
    """Hand the heap memory malloc holds free back to the system; False where that is not possible."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


class DecodeGate:
    """Admission of decodes: at most ``max_concurrent`` at once holding at most ``max_pixels`` together.

    Thread-safe (decodes run on worker threads). ``clock`` is for tests.
    """

    def __init__(
        self,
        max_pixels: int = 2 * FULL_SIZE_PIXELS,
        max_concurrent: int = 4,
        wait_s: float = 2.0,
        trim_pixels: int = 1 << 20,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        DecodeConfig(
            decode_max_pixels=max_pixels,
            decode_max_concurrent=max_concurrent,
            decode_wait_s=wait_s,
            decode_trim_pixels=trim_pixels,
        )  # the same range checks as the settings
        self.max_pixels = max_pixels
        self.max_concurrent = max_concurrent
        self.wait_s = wait_s
        self.trim_pixels = trim_pixels
        self._clock = clock
        self._cond = threading.Condition()
        self._pixels = 0
        self._decodes = 0
        self.refused = 0  # reservations refused for lack of room (not for being larger than the budget)
        self.trims = 0

    @classmethod
    def from_config(cls, config: DecodeConfig) -> DecodeGate:
        return cls(
            config.decode_max_pixels, config.decode_max_concurrent, config.decode_wait_s, config.decode_trim_pixels
        )

    @property
    def pixels_in_use(self) -> int:
        with self._cond:
            return self._pixels

    @property
    def decodes_in_flight(self) -> int:
        with self._cond:
            return self._decodes

    def _fits(self, pixels: int) -> bool:
        return self._decodes < self.max_concurrent and self._pixels + pixels <= self.max_pixels

    def acquire(self, pixels: int, *, field: str = "image") -> None:
        """Reserve ``pixels``, waiting at most ``wait_s``; pair with :meth:`release`.

        InvalidInput if ``pixels`` exceeds the whole budget; Overloaded if there is no room in time.
        """
        if pixels < 0:
            raise ValueError(f"pixels must be non-negative, got {pixels}")
        if pixels > self.max_pixels:
            raise InvalidInput(
                f"{field} has {pixels} pixels; this server decodes at most {self.max_pixels} pixels at once",
                field=field,
                metadata={"quota": "decode_max_pixels", "limit": str(self.max_pixels)},
            )
        deadline = self._clock() + self.wait_s
        with self._cond:
            while not self._fits(pixels):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    self.refused += 1
                    raise Overloaded(
                        f"{field} cannot be decoded now: {self._decodes} images of {self._pixels} pixels "
                        f"together are being decoded (limits: {self.max_concurrent} images, "
                        f"{self.max_pixels} pixels); retry later",
                        field=field,
                        metadata={
                            "quota": "decode_max_pixels",
                            "limit": str(self.max_pixels),
                            "requested": str(pixels),
                        },
                    )
                self._cond.wait(remaining)
            self._pixels += pixels
            self._decodes += 1

    def release(self, pixels: int) -> None:
        with self._cond:
            self._pixels -= pixels
            self._decodes -= 1
            self._cond.notify_all()
        if self.trim_pixels and pixels >= self.trim_pixels and release_free_memory():
            self.trims += 1

    @contextmanager
    def reserve(self, pixels: int, *, field: str = "image") -> Iterator[None]:
        """Hold ``pixels`` of the budget for the block (released also when it raises)."""
        self.acquire(pixels, field=field)
        try:
            yield
        finally:
            self.release(pixels)


class _ProcessGate:
    gate: DecodeGate | None = None
    lock = threading.Lock()


def process_gate() -> DecodeGate:
    """This process's gate, built from the ``GLIMPSE3D_DECODE_*`` variables on first use (a bad value
    is a ConfigError; servers call this at start-up so that it surfaces there)."""
    with _ProcessGate.lock:
        if _ProcessGate.gate is None:
            _ProcessGate.gate = DecodeGate.from_config(load_config(DecodeConfig))
        return _ProcessGate.gate


def set_process_gate(gate: DecodeGate | None) -> DecodeGate | None:
    """Replace the process gate (None: rebuild from the environment on next use); returns the old one."""
    with _ProcessGate.lock:
        old, _ProcessGate.gate = _ProcessGate.gate, gate
        return old

"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers that read untrusted bytes.

    python fuzz/harness.py TARGET [libFuzzer options] [CORPUS_DIR ...]

TARGET is one of :data:`TARGETS`: ``decode_image`` (photo uploads), ``ply``, ``splat``, ``glb``,
``spz`` and ``sog`` (splat imports). The property is the one tests/unit/test_fuzz_parsers.py checks:
every input either parses or raises :class:`~glimpse3d.core.errors.InvalidInput`; any other exception is a crash, which
libFuzzer reports with the input that caused it (``-artifact_prefix=DIR/`` says where it is written).
``fuzz/run.py`` runs every target for a while from a seed corpus (``make fuzz``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports(include=["glimpse3d", "PIL", "plyfile"]):  # pyright: ignore[reportAttributeAccessIssue]
    from glimpse3d.core.errors import InvalidInput
    from glimpse3d.core.formats import read_glb, read_ply, read_sog, read_splat, read_spz
    from glimpse3d.core.images import decode_image

TARGETS: dict[str, Callable[[bytes], object]] = {
    "decode_image": decode_image,
    "ply": read_ply,
    "splat": read_splat,
    "glb": read_glb,
    "spz": read_spz,
    "sog": read_sog,
}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus ...]")
    target = TARGETS[argv[1]]

    def one_input(data: bytes) -> None:
        try:
            target(data)
        except InvalidInput:
            pass

    atheris.Setup([argv[0], *argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

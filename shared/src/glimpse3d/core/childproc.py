"""Runs a module as a child that dies with its launcher: ``python -m glimpse3d.core.childproc PID MODULE``.

The launcher (:mod:`glimpse3d.gateway.stack`) used to set ``PR_SET_PDEATHSIG`` in a ``preexec_fn``. That
runs Python in the forked child before ``exec``: the interpreter's after-fork hooks (threading, weakref
and filelock resets) run in a copy of a multi-threaded process, and the child could crash with a
segmentation fault before it ever started. Here the request is made after ``exec``, in a fresh
interpreter, and the parent is checked afterwards, so a launcher that died in between is not missed.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when its parent dies (Linux); exits at once if the parent is already gone."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not glibc Linux: the launcher's own shutdown still stops the child
        return
    if os.getppid() != parent_pid:
        sys.exit(f"launcher {parent_pid} exited before this child started")


def main(argv: list[str]) -> None:
    if len(argv) != 2 or not argv[0].isdigit():
        sys.exit("usage: python -m glimpse3d.core.childproc PARENT_PID MODULE")
    die_with_parent(int(argv[0]))
    sys.argv = [argv[1]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])

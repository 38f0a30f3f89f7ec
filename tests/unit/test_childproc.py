"""glimpse3d.core.childproc: a launched service dies with its launcher, with no Python run between fork
and exec (a preexec_fn there could crash the child in a multi-threaded launcher)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "sleeper.py").write_text("import sys, time\nprint('started', sys.argv, flush=True)\ntime.sleep(60)\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}


def test_the_child_runs_the_module_as_main_and_dies_with_its_launcher(tmp_path):
    launcher = textwrap.dedent("""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-m", "glimpse3d.core.childproc", str(os.getpid()), "sleeper"],
                                 stdout=open(sys.argv[1], "w"))
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    out = tmp_path / "child.out"
    parent = subprocess.Popen([sys.executable, "-c", launcher, str(out)], stdout=subprocess.PIPE, text=True,
                              env=_env(tmp_path))
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 30
        while "started" not in (out.read_text() if out.exists() else ""):
            assert time.monotonic() < deadline, "the child never ran its module"
            time.sleep(0.05)
        assert out.read_text().strip().endswith("sleeper.py']")  # argv is [the module's file], as with python -m
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)  # the launcher gets no chance to stop it
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its launcher"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_child_whose_launcher_is_already_gone_exits(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    done = subprocess.run([sys.executable, "-m", "glimpse3d.core.childproc", gone.stdout.strip(), "sleeper"],
                          capture_output=True, text=True, timeout=60, env=_env(tmp_path), check=False)
    assert done.returncode != 0 and "exited before this child started" in done.stderr
    assert "started" not in done.stdout


def test_usage_is_named():
    done = subprocess.run([sys.executable, "-m", "glimpse3d.core.childproc", "sleeper"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode != 0 and "usage: python -m glimpse3d.core.childproc PARENT_PID MODULE" in done.stderr

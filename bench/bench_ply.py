"""Splat file I/O: 1M Gaussians at SH degree 3 written and read back through a temporary directory.

Compares our ``write_ply``/``read_ply`` with plain plyfile doing the same work on the same structured
array (``PlyElement.describe`` + ``PlyData.write``; ``PlyData.read`` with its default memory map,
then copying the vertex data out so that every byte is actually read), side by side in one process.
Ours does more: it builds the array from a :class:`Splat` (a fresh 248 MB buffer, also reported on
its own as ``ply_to_array_ours``), validates the header and the values and returns a :class:`Splat`.
Also times ``.splat`` write + read. Each figure is the best of a few interleaved repeats; files go
through the page cache (no fsync).

``python -m bench.bench_ply`` prints the table; ``make bench`` runs it with the other suites.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from glimpse3d.core.formats import read_ply, read_splat, write_ply, write_splat
from glimpse3d.core.formats.ply import splat_to_vertex_array
from glimpse3d.core.splat import Splat

N_GAUSSIANS = 1_000_000
SH_DEGREE = 3
REPEATS = 5


def _random_splat(n: int, degree: int) -> Splat:
    rng = np.random.default_rng(0)
    return Splat(
        means=rng.normal(size=(n, 3)).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),
        log_scales=rng.uniform(-6, -1, size=(n, 3)).astype(np.float32),
        opacity_logits=rng.normal(size=n).astype(np.float32),
        sh=rng.normal(scale=0.5, size=(n, (degree + 1) ** 2, 3)).astype(np.float32),
    )


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _plyfile_write(vertex: np.ndarray, path: Path) -> None:
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(str(path))


def _plyfile_read(path: Path) -> np.ndarray:
    return np.array(PlyData.read(str(path))["vertex"].data)


def _measure(splat: Splat, tmp: Path) -> dict[str, float]:
    vertex = splat_to_vertex_array(splat)
    steps: dict[str, Callable[[], object]] = {
        "ours_to_array": lambda: splat_to_vertex_array(splat),
        "ours_write": lambda: write_ply(splat, tmp / "ours.ply"),
        "ours_read": lambda: read_ply(tmp / "ours.ply"),
        "plyfile_write": lambda: _plyfile_write(vertex, tmp / "plyfile.ply"),
        "plyfile_read": lambda: _plyfile_read(tmp / "plyfile.ply"),
        "splat_write": lambda: write_splat(splat, tmp / "s.splat"),
        "splat_read": lambda: read_splat(tmp / "s.splat"),
    }
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(REPEATS):  # interleaved, so drift on a shared machine hits both sides alike
        for name, step in steps.items():
            best[name] = min(best[name], _seconds(step))
    best["ply_mb"] = (tmp / "ours.ply").stat().st_size / 1e6
    best["splat_mb"] = (tmp / "s.splat").stat().st_size / 1e6
    return best


def run() -> list[dict]:
    splat = _random_splat(N_GAUSSIANS, SH_DEGREE)
    with tempfile.TemporaryDirectory() as tmp:
        t = _measure(splat, Path(tmp))
    ours = t["ours_write"] + t["ours_read"]
    theirs = t["plyfile_write"] + t["plyfile_read"]
    size = f"{N_GAUSSIANS:,} Gaussians, SH degree {SH_DEGREE}"
    return [
        {"name": "ply_write_ours", "value": t["ours_write"], "unit": "s", "note": f"{size}, {t['ply_mb']:.0f} MB"},
        {
            "name": "ply_to_array_ours",
            "value": t["ours_to_array"],
            "unit": "s",
            "note": "part of write: Splat -> array",
        },
        {"name": "ply_read_ours", "value": t["ours_read"], "unit": "s", "note": "validated, to Splat"},
        {"name": "ply_write_read_ours", "value": ours, "unit": "s", "note": "write_ply + read_ply"},
        {"name": "ply_write_plyfile", "value": t["plyfile_write"], "unit": "s", "note": "same structured array"},
        {"name": "ply_read_plyfile", "value": t["plyfile_read"], "unit": "s", "note": "PlyData.read + copy"},
        {"name": "ply_write_read_plyfile", "value": theirs, "unit": "s", "note": "plain plyfile"},
        {"name": "ply_write_read_ratio", "value": ours / theirs, "unit": "x", "note": "ours / plyfile"},
        {"name": "splat_write", "value": t["splat_write"], "unit": "s", "note": f"sorted, {t['splat_mb']:.0f} MB"},
        {"name": "splat_read", "value": t["splat_read"], "unit": "s", "note": ""},
        {"name": "splat_write_read", "value": t["splat_write"] + t["splat_read"], "unit": "s", "note": ""},
    ]


def main() -> None:
    rows = run()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['value']:>8.3f} {r['unit']:<2} {r['note']}")


if __name__ == "__main__":
    main()

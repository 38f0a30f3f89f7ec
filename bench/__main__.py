"""`make bench`: every benchmark in one run, printed as one table.

Targets are reported as ratios measured side by side in the same process, never asserted in tests
(shared machines are noisy).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time

from bench import device

SUITES = (
    "bench.bench_raster",
    "bench.bench_gsplat",
    "bench.bench_ply",
    "bench.bench_pipeline",
    "bench.bench_backends",
    "bench.bench_triton",
    "bench.bench_decode",
    "bench.bench_mesh",
    "bench.bench_formats",
    "bench.bench_load",
)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="suite module names to run (default: all)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--device", choices=device.CHOICES,
                        help=f"where suites that render place their tensors (sets {device.ENV}; default: "
                             "auto, CUDA when torch sees a device); suites without CUDA work ignore it")
    ns = parser.parse_args()
    if ns.device:
        os.environ[device.ENV] = ns.device  # child processes of the suites read the same choice
    device.requested()  # a bad GLIMPSE3D_BENCH_DEVICE fails here, before any suite runs
    suites = ns.only or SUITES
    rows: list[dict] = []
    print(f"# Glimpse3D benchmarks on {platform.machine()} / Python {platform.python_version()}")
    for name in suites:
        start = time.perf_counter()
        results = importlib.import_module(name).run()
        for r in results:
            rows.append({"suite": name.rsplit(".", 1)[-1], **r})
        print(f"# {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    width = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        print(f"{r['suite']:<14} {r['name']:<{width}}  {_fmt(r['value']):>10} {r['unit']:<6} {r.get('note', '')}")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every atheris harness (fuzz/harness.py) for a while, each from a seed corpus of valid files.

    python fuzz/run.py [--seconds N] [--out DIR] [--only TARGET ...]

Seeds are written by the project's own encoders and exporters (PNG and JPEG photos in several modes,
splats of SH degree 0..3 as .ply, .splat, .glb, .spz and .sog) into ``DIR/<target>/corpus``, where
libFuzzer also keeps the inputs that reached new code, so a later run goes on from there. A crash leaves
``DIR/<target>/crash-*`` (the input) and makes the run exit 1 after the other targets ran.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ("decode_image", "ply", "splat", "glb", "spz", "sog")


def seeds(target: str) -> list[bytes]:
    """Valid inputs for ``target``, small so that mutations stay fast."""
    import numpy as np
    from PIL import Image

    from glimpse3d.core.formats import (
        splat_to_glb_bytes,
        splat_to_ply_bytes,
        splat_to_sog_bytes,
        splat_to_splat_bytes,
        splat_to_spz_bytes,
    )
    from glimpse3d.core.splat import Splat

    rng = np.random.default_rng(0)
    if target == "decode_image":
        rgba = Image.fromarray(rng.integers(0, 256, (6, 5, 4), dtype=np.uint8), "RGBA")
        out = []
        for mode, fmt in (
            ("RGB", "PNG"),
            ("RGBA", "PNG"),
            ("P", "PNG"),
            ("L", "PNG"),
            ("I;16", "PNG"),
            ("RGB", "JPEG"),
            ("L", "JPEG"),
            ("CMYK", "JPEG"),
        ):
            buf = io.BytesIO()
            rgba.convert(mode).save(buf, format=fmt)
            out.append(buf.getvalue())
        return out
    splats = [
        Splat.from_colors(
            rng.normal(size=(n, 3)),
            rng.uniform(0.1, 0.9, size=(n, 3)),
            0.05,
            0.7,
            quats=rng.normal(size=(n, 4)),
            sh_degree=d,
        )
        for n, d in ((3, 0), (2, 1), (1, 3))
    ]
    writer = {"ply": splat_to_ply_bytes, "splat": splat_to_splat_bytes, "glb": splat_to_glb_bytes,
              "spz": splat_to_spz_bytes, "sog": splat_to_sog_bytes}[target]
    return [writer(s) for s in splats]


def run(target: str, seconds: int, out: Path) -> int:
    work = out / target
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds(target)):
        (corpus / f"seed-{i}").write_bytes(data)
    cmd = [
        sys.executable,
        str(HERE / "harness.py"),
        target,
        f"-max_total_time={seconds}",
        "-rss_limit_mb=4096",
        "-timeout=20",
        "-max_len=65536",
        f"-artifact_prefix={work}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    print(f"== {target}: {seconds} s, corpus {corpus}", flush=True)
    return subprocess.run(cmd, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python fuzz/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--out", type=Path, default=Path("out/fuzz"), help="corpora and crashes (default out/fuzz)")
    parser.add_argument("--only", nargs="+", choices=TARGETS, default=list(TARGETS))
    ns = parser.parse_args(argv)
    failed = [t for t in ns.only if run(t, ns.seconds, ns.out) != 0]
    if failed:
        print(f"crashes in: {', '.join(failed)} (inputs under {ns.out}/<target>/crash-*)", file=sys.stderr)
        return 1
    print(f"no crashes in {', '.join(ns.only)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m glimpse3d.research``: ground truth and the coarse-splat evaluation.

  objects [--objects A B] [--resolution N] [--refresh] [--out DIR]
      render (or load from the cache) every object's views and write a contact sheet
  coarse [--objects A B] [--resolution N] [--out DIR] [--depth B] [--reconstruction B]
      the coarse splat of each object's input view, scored on the 16 held-out views
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from glimpse3d.core.errors import Glimpse3DError
from glimpse3d.research.groundtruth import DEFAULT_RESOLUTION, digest, ground_truth, surface_samples
from glimpse3d.research.objects import OBJECT_NAMES

log = logging.getLogger("glimpse3d.research")


def _objects(args: argparse.Namespace) -> int:
    rows, summary = [], {}
    for name in args.objects:
        gt = ground_truth(name, args.resolution, refresh=args.refresh)
        summary[name] = {"licence": gt.obj.licence, "source": gt.obj.source, "traits": list(gt.obj.traits),
                         "sha256": digest(gt)}
        rows.append(np.concatenate([v.rgb_uint8 for v in (gt.input, *gt.heldout[::2])], axis=1))
    args.out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out / "objects.png")
    (args.out / "objects.json").write_text(json.dumps(summary, indent=2))
    log.info("ground truth of %d objects; contact sheet %s", len(rows), args.out / "objects.png")
    return 0


def _coarse(args: argparse.Namespace) -> int:
    from glimpse3d.research.coarse import Stages, evaluate_coarse

    args.out.mkdir(parents=True, exist_ok=True)
    stages = Stages.load(args.depth, args.reconstruction)
    results = {}
    for name in args.objects:
        gt = ground_truth(name, args.resolution)
        start = time.perf_counter()
        score, grid = evaluate_coarse(gt, surface_samples(gt.obj), stages)
        score["seconds"] = time.perf_counter() - start
        results[name] = score
        Image.fromarray(grid).save(args.out / f"coarse-{name}.png")
        log.info("%s: %s", name, {k: round(v, 4) for k, v in score.items()})
    keys = next(iter(results.values())).keys()
    results["mean"] = {k: float(np.mean([r[k] for r in results.values()])) for k in keys}
    (args.out / "coarse.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results["mean"], indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m glimpse3d.research", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for command in ("objects", "coarse"):
        s = sub.add_parser(command)
        s.add_argument("--objects", nargs="+", choices=OBJECT_NAMES, default=list(OBJECT_NAMES))
        s.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION)
        s.add_argument("--out", type=Path, default=Path("research/out"))
        if command == "objects":
            s.add_argument("--refresh", action="store_true", help="render again even when cached")
        else:
            s.add_argument("--depth", default="silhouette", help="depth backend")
            s.add_argument("--reconstruction", default="lift", help="reconstruction backend")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return {"objects": _objects, "coarse": _coarse}[args.command](args)
    except Glimpse3DError as err:  # bad input or a missing asset: one line, exit status 2
        print(f"glimpse3d.research: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

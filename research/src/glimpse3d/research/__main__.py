"""``python -m glimpse3d.research``: ground truth, the coarse-splat evaluation and the six studies.

  run [--quick | --full] [--objects A B] [--resolution N] [--rounds N] [--depth B] [--reconstruction B]
      [--diffusion B] [--multiview B ...] [--depth-backends B ...] [--diffusion-backends B ...]
      [--studies S ...] [--out DIR] [--name RUN]
      every study (make research); writes DIR/RUN/results.json, report.md, plots and image grids
  compare A B
      the summary figures of two runs side by side, with B - A

  objects [--objects A B] [--resolution N] [--refresh] [--out DIR]
      render (or load from the cache) every object's views and write a contact sheet
  coarse [--objects A B] [--resolution N] [--out DIR] [--depth B] [--reconstruction B]
      the coarse splat of each object's input view, scored on the 16 held-out views
  extra [--objects A B] [--resolution N] [--hint-offset DEG] [--true-depth] [--views AZ,EL ...] [--out DIR]
      the ground truth's back view (azimuth 180, elevation 15; or the --views, one after the other) as
      extra photos: held-out PSNR in the mask of the first version with and without them, re-lifted and
      not (docs/extra-photos.md)
  identity [--objects A B] [--resolution N] [--hint-offset DEG] [--out DIR]
      every object's back view posed against every object's first version, as an extra photo is posed:
      own photos refused, other objects' photos accepted (docs/extra-photos.md)
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
from glimpse3d.research import STUDIES
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


def _extra(args: argparse.Namespace) -> int:
    from glimpse3d.research.coarse import Stages
    from glimpse3d.research.extra import extra_photo_gain

    args.out.mkdir(parents=True, exist_ok=True)
    stages = Stages.load()
    results: dict[str, dict[str, float | str]] = {}
    added = "+ back photo" if not args.views else f"+ {len(args.views)} photos"
    steps = "" if not args.views or len(args.views) < 2 else " (after each photo)"
    print(f"| object | single photo (dB) | {added}, re-lifted{steps} | {added}, fused only | last pose (az, el) |")
    print("|---|---|---|---|---|")
    for name in args.objects:
        gt = ground_truth(name, args.resolution)
        try:
            relifted = extra_photo_gain(gt, stages, hint_offset_deg=args.hint_offset, relift=True,
                                        true_depth=args.true_depth, views=args.views)
            fused = extra_photo_gain(gt, stages, hint_offset_deg=args.hint_offset, relift=False,
                                     true_depth=args.true_depth, views=args.views)
        except Glimpse3DError as err:  # the photo could not be posed from the hint: reported, not fatal
            results[name] = {"refused": str(err)}
            print(f"| {name} | | refused: {err} | | |", flush=True)
            continue
        row: dict[str, float | str] = {
            "single_db": relifted.single_db, "relift_gain_db": relifted.extra_db - relifted.single_db,
            "fused_gain_db": fused.extra_db - fused.single_db, "pose_azimuth_deg": relifted.pose.pose.azimuth_deg,
            "pose_elevation_deg": relifted.pose.pose.elevation_deg, "pose_hint_kept": float(relifted.pose.hint_kept)}
        for k, step_db in enumerate(relifted.steps_db[:-1]):  # with several photos: the gain after each
            row[f"relift_gain_after_{k + 1}_db"] = step_db - relifted.single_db
        results[name] = row
        each = [relifted_step - relifted.single_db for relifted_step in relifted.steps_db]
        gains = " → ".join(f"{g:+.2f}" for g in each) if len(each) > 1 else f"{row['relift_gain_db']:+.2f}"
        print(f"| {name} | {row['single_db']:.2f} | {gains} | {row['fused_gain_db']:+.2f} | "
              f"{row['pose_azimuth_deg']:.1f}, {row['pose_elevation_deg']:.1f} |", flush=True)
    scored = [r for r in results.values() if "refused" not in r]
    if scored:
        mean: dict[str, float | str] = {k: float(np.mean([float(r[k]) for r in scored]))
                                        for k in ("relift_gain_db", "fused_gain_db")}
        results["mean"] = mean
        relifted_mean, fused_mean = float(mean["relift_gain_db"]), float(mean["fused_gain_db"])
        print(f"| mean of {len(scored)} | | {relifted_mean:+.2f} | {fused_mean:+.2f} | |")
    (args.out / "extra.json").write_text(json.dumps(results, indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    from glimpse3d.research.report import write_report
    from glimpse3d.research.suite import run_suite, settings_for

    preset = "quick" if args.quick else "full" if args.full else "default"
    settings = settings_for(preset, objects=args.objects, resolution=args.resolution, rounds=args.rounds,
                            depth=args.depth, reconstruction=args.reconstruction, diffusion=args.diffusion,
                            multiview_backends=_tuple(args.multiview), depth_backends=_tuple(args.depth_backends),
                            diffusion_backends=_tuple(args.diffusion_backends), studies=_tuple(args.studies))
    name = args.name or f"{time.strftime('%Y%m%d-%H%M%S')}-{preset}"
    out = args.out / name
    print("settings: " + ", ".join(f"{k}={v}" for k, v in vars(settings).items()), flush=True)
    results = run_suite(settings, out, progress=lambda line: print(line, flush=True))
    report = write_report(results, out)
    for key, target in results["targets"].items():
        if key != "coarse_vs_published":
            figure = target.get("mean", target.get("ratio"))
            print(f"{key}: {figure if figure is None else round(figure, 3)} (goal {target['target']}, "
                  f"met: {target['met']})")
    print(f"total {results['timings_s']['total']:.0f} s")
    print(f"report: {report}")
    return 0


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(values) if values else None


def _identity(args: argparse.Namespace) -> int:
    from glimpse3d.research.coarse import Stages
    from glimpse3d.research.extra import photo_identity

    args.out.mkdir(parents=True, exist_ok=True)
    matrix = photo_identity([ground_truth(n, args.resolution) for n in args.objects], Stages.load(),
                            hint_offset_deg=args.hint_offset)
    print("| first version / back photo of | " + " | ".join(matrix.names) + " |")
    print("|---" * (len(matrix.names) + 1) + "|")
    for model in matrix.names:
        cells = [f"{c.iou:.2f}{' (hint)' if c.hint_kept else ''}" if c.accepted else "refused"
                 for c in (matrix.cells[model][p] for p in matrix.names)]
        print(f"| {model} | " + " | ".join(cells) + " |")
    pairs = len(matrix.names) * (len(matrix.names) - 1)
    print(f"own photo refused: {len(matrix.false_refusals)} of {len(matrix.names)} {matrix.false_refusals}; "
          f"another object's accepted: {len(matrix.false_acceptances)} of {pairs}")
    out = {"hint_offset_deg": args.hint_offset, "false_refusals": matrix.false_refusals,
           "false_acceptances": [list(pair) for pair in matrix.false_acceptances],
           "false_refusal_rate": matrix.false_refusal_rate, "false_acceptance_rate": matrix.false_acceptance_rate,
           "cells": {m: {p: {"accepted": c.accepted, "iou": c.iou if c.accepted else None, "hint_kept": c.hint_kept,
                             "azimuth_deg": c.azimuth_deg if c.accepted else None, "refusal": c.refusal}
                         for p, c in row.items()} for m, row in matrix.cells.items()}}
    (args.out / "identity.json").write_text(json.dumps(out, indent=2))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from glimpse3d.research.report import format_compare, load_results

    print(format_compare(load_results(args.a), load_results(args.b)))
    return 0


def _orbit_position(text: str) -> tuple[float, float]:
    """"AZ,EL" in degrees -> (azimuth, elevation); elevation within [-80, 80]."""
    try:
        azimuth, elevation = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected AZ,EL in degrees, got {text!r}") from None
    if not (np.isfinite(azimuth) and np.isfinite(elevation) and -80.0 <= elevation <= 80.0):
        raise argparse.ArgumentTypeError(f"expected a finite azimuth and an elevation in [-80, 80], got {text!r}")
    return azimuth, elevation


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
    e = sub.add_parser("extra", help="the gain of a back photo as an extra photo")
    e.add_argument("--objects", nargs="+", choices=OBJECT_NAMES, default=list(OBJECT_NAMES))
    e.add_argument("--resolution", type=int, default=128)
    e.add_argument("--hint-offset", type=float, default=None,
                   help="pose the photo from a hint this many degrees off in azimuth (default: its true camera)")
    e.add_argument("--true-depth", action="store_true",
                   help="fuse the photo with its ground-truth depth, not the depth backend's (what better depth gives)")
    e.add_argument("--views", nargs="+", type=_orbit_position, metavar="AZ,EL",
                   help="several extra photos, added in this order (default: one, 180,15)")
    e.add_argument("--out", type=Path, default=Path("research/out"))
    i = sub.add_parser("identity", help="which back photos the pose check accepts, of the same object and of others")
    i.add_argument("--objects", nargs="+", choices=OBJECT_NAMES, default=list(OBJECT_NAMES))
    i.add_argument("--resolution", type=int, default=128)
    i.add_argument("--hint-offset", type=float, default=20.0, help="the hint's azimuth error in degrees")
    i.add_argument("--out", type=Path, default=Path("research/out"))
    r = sub.add_parser("run", help="the six studies (make research)")
    size = r.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke run: one object at 64 px (about 2 minutes)")
    size.add_argument("--full", action="store_true", help="every study on every object at 256 px (hours)")
    r.add_argument("--objects", nargs="+", choices=OBJECT_NAMES, help="limit every study to these objects")
    r.add_argument("--resolution", type=int)
    r.add_argument("--rounds", type=int, help="enhancement rounds of study 5 (1..7)")
    r.add_argument("--depth", help="the pipeline's depth backend (default silhouette)")
    r.add_argument("--reconstruction", help="the pipeline's reconstruction backend (default lift)")
    r.add_argument("--diffusion", help="the diffusion backend the rounds use (default classical)")
    r.add_argument("--multiview", nargs="+", help="multiview backends of studies 1-2 (default render zero123)")
    r.add_argument("--depth-backends", nargs="+", help="depth backends of study 3 (default silhouette dpt)")
    r.add_argument("--diffusion-backends", nargs="+", help="diffusion backends of study 2 (default classical sdxl)")
    r.add_argument("--studies", nargs="+", choices=STUDIES, help="run only these studies (default: all)")
    r.add_argument("--out", type=Path, default=Path("research/out"))
    r.add_argument("--name", help="run folder name (default: time and preset)")
    c = sub.add_parser("compare", help="diff two runs")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    logging.getLogger("glimpse3d.services").setLevel(logging.WARNING)  # one line per MVCRM round is too many here
    try:
        return {"objects": _objects, "coarse": _coarse, "extra": _extra, "identity": _identity, "run": _run,
                "compare": _compare}[args.command](args)
    except Glimpse3DError as err:  # bad input or a missing asset: one line, exit status 2
        print(f"glimpse3d.research: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``report.md`` and its plots from a run's ``results.json``, and the diff of two runs.

Everything here reads the results dictionary only, so a report can be written again from an old
run, and ``compare`` works on any two runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # offscreen: no display on the CI machine
import matplotlib.pyplot as plt

from glimpse3d.core.errors import InvalidInput


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def _stat(entry: dict[str, Any] | None, digits: int = 3) -> str:
    """'mean [lo, hi]' of a summarise() entry."""
    if not entry or entry.get("mean") is None:
        return "n/a"
    ci = entry.get("ci95")
    return _fmt(entry["mean"], digits) + (f" [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]" if ci else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows),
            ""]


def _plot_curves(results: dict[str, Any], out: Path) -> str | None:
    feeds = results["studies"]["before_after"]["feeds"]
    metrics = [m for m in ("psnr_mask_db", "ssim", "lpips", "photo_psnr_db", "photo_consistency_db")
               if any(m in (feed["curve"][0] or {}) for feed in feeds.values())]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for feed, data in feeds.items():
            xs, ys, lo, hi = [], [], [], []
            for k, c in enumerate(data["curve"], start=1):
                entry = c.get(metric)
                if entry and entry.get("mean") is not None:
                    xs.append(k)
                    ys.append(entry["mean"])
                    ci = entry.get("ci95") or [entry["mean"], entry["mean"]]
                    lo.append(ci[0])
                    hi.append(ci[1])
            ax.plot(xs, ys, marker="o", label=feed)
            ax.fill_between(xs, lo, hi, alpha=0.2)
        ax.set_xlabel("version")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    return "curves.png"


def _plot_ablations(results: dict[str, Any], out: Path) -> str | None:
    variants = results["studies"]["ablations"]["variants"]
    if not variants:
        return None
    feeds = sorted({f for v in variants.values() for f in v})
    fig, ax = plt.subplots(figsize=(1.6 * len(variants) + 2, 3.6))
    width = 0.8 / max(1, len(feeds))
    for j, feed in enumerate(feeds):
        ys = [variants[v].get(feed, {}).get("summary", {}).get("round2_change_db", {}).get("mean") or 0.0
              for v in variants]
        ax.bar([i + j * width for i in range(len(variants))], ys, width, label=feed)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(variants))], list(variants), rotation=30, ha="right")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("round-2 held-out\nPSNR change (dB)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ablations.png", dpi=110)
    plt.close(fig)
    return "ablations.png"


def _targets(results: dict[str, Any], out: Path) -> list[str]:
    tg = results["targets"]
    lines: list[str] = []
    lines += ["## Targets", ""]
    rows = []
    if "oracle_gain_db" in tg:
        o, c = tg["oracle_gain_db"], tg["classical_change_db"]
        rows += [[f"oracle views: held-out PSNR gain in the mask over {o['rounds']} rounds (dB), {o['n']} objects",
                  _stat(o, 2), f">= {o['target']}", _fmt(o["met"])],
                 [f"`{c['backend']}` enhancement: held-out PSNR change over {c['rounds']} rounds (dB); worst single "
                  f"round {_fmt(c['worst_single_round_db'], 2)}", _stat(c, 2), "every object >= 0", _fmt(c["met"])]]
    if "adversarial_damage_ratio" in tg:
        a = tg["adversarial_damage_ratio"]
        rows.append([f"adversarial views: MVCRM damage / naive damage ({_fmt(a['mvcrm_damage_db'], 2)} dB / "
                     f"{_fmt(a['naive_damage_db'], 2)} dB)", _fmt(a["ratio"], 2), a["target"], _fmt(a["met"])])
    lines += _table(["target", "measured", "goal", "met"], rows)
    if "coarse_vs_published" not in tg:
        return lines
    cv = tg["coarse_vs_published"]
    lines += ["Coarse splat beside the published GSO figures (" + cv["note"] + "):", ""]
    lines += _table(["", "PSNR (dB)", "LPIPS", "Chamfer", "F-score@0.1"], [
        ["Glimpse3D coarse (full image)", _fmt(cv["ours"]["psnr_db"], 2), _fmt(cv["ours"]["lpips"]),
         _fmt(cv["ours"]["chamfer"]), _fmt(cv["ours"]["fscore_0.1"])],
        *([name, _fmt(p["psnr_db"], 1), _fmt(p["lpips"]), _fmt(p["chamfer"]), _fmt(p["fscore_0.1"])]
          for name, p in cv["published"].items()),
    ])
    return lines


def _coarse(co: dict[str, Any], results: dict[str, Any], out: Path) -> list[str]:
    lines = ["## The coarse splat", "", f"Hypothesis: {co['hypothesis']}", ""]
    keys = ["psnr_db", "psnr_mask_db", "ssim", "lpips", "chamfer", "fscore_0.1", "matte_iou"]
    lines += _table(["object", *keys], [[n, *(_fmt(r.get(k)) for k in keys)] for n, r in co["per_object"].items()]
                    + [["**mean [95% CI]**", *(_stat(co["summary"].get(k)) for k in keys)]])
    lines += [f"LPIPS: {co['lpips_note']}.", "", *(f"![{n}]({p})" for n, p in list(co["grids"].items())[:3]), ""]
    return lines


def _multiview(mv: dict[str, Any], results: dict[str, Any], out: Path) -> list[str]:
    lines = ["## Study 1: multiview baseline", "", f"Hypothesis: {mv['hypothesis']}", ""]
    keys = ["psnr_db", "psnr_mask_db", "ssim", "lpips", "clip"]
    rows = []
    for name, entry in mv["backends"].items():
        rows.append([name, *((_stat(entry["summary"].get(k)) for k in keys) if entry["status"] == "ok"
                             else [entry["status"], *[""] * (len(keys) - 1)])])
    lines += _table(["backend", *keys], rows)
    lines += [f"LPIPS: {mv['lpips_note']}; CLIP: {mv['clip_note']}.", "",
              *(f"![{n}]({e['grid']})" for n, e in mv["backends"].items() if "grid" in e), ""]
    return lines


def _inconsistency(inc: dict[str, Any], results: dict[str, Any], out: Path) -> list[str]:
    lines = ["## Study 2: multi-view inconsistency", "", f"Hypothesis: {inc['hypothesis']}", "",
              f"Unit: {inc['unit']}.", ""]
    lines += _table(["views", "inconsistency mean [95% CI]"], [
        [name, _stat(e["summary"].get("inconsistency"), 4) if e["status"] == "ok" else e["status"]]
        for name, e in inc["sets"].items()])
    return lines


def _depth(dp: dict[str, Any], results: dict[str, Any], out: Path) -> list[str]:
    lines = ["## Study 3: depth accuracy and variance", "", f"Hypothesis: {dp['hypothesis']}", ""]
    keys = ["absrel", "delta1", "depth_spread", "matte_iou"]
    lines += _table(["backend", *keys], [
        [n, *((_stat(e["summary"].get(k), 4) for k in keys) if e["status"] == "ok" else [e["status"], "", "", ""])]
        for n, e in dp["backends"].items()])
    lines += [f"Depth spread of exact depth (the metric's floor): {dp['ground_truth_spread']}.", ""]
    return lines


def _before_after(ba: dict[str, Any], results: dict[str, Any], out: Path) -> list[str]:
    s = results["settings"]
    lines = [f"## Study 5: before and after, versions 1..{s['rounds'] + 1}", "", f"Hypothesis: {ba['hypothesis']}", ""]
    for feed, data in ba["feeds"].items():
        keys = [k for k in ("psnr_mask_db", "psnr_db", "ssim", "lpips", "clip_to_photo", "photo_psnr_db",
                            "photo_consistency_db") if k in data["curve"][0]]
        lines += [f"Feed `{feed}` (mean over {len(data['per_object'])} objects [95% CI]):", ""]
        lines += _table(["version", *keys], [[str(k + 1), *(_stat(c.get(k), 2) for k in keys)]
                                             for k, c in enumerate(data["curve"])])
        rounds = [r for rows in data["per_object"].values() for r in rows[1:]]
        if rounds and "rejected" in rounds[0]:
            rejected = sum(r.get("rejected", 0.0) > 0 for r in rounds)
            raised = sum(r.get("photo_weight_raised", 0.0) > 0 for r in rounds)
            lines += [f"The product's round rule: {raised} of {len(rounds)} rounds were fused again with the photo "
                      f"weighted more, {rejected} were rejected (they would have cost the photo more than 0.5 dB).", ""]
    curves = _plot_curves(results, out)
    if curves:
        lines += [f"![curves]({curves})", ""]
    lines += ["Grids: top row ground truth, then versions 1.. downwards (held-out views 0, 3, 5, 10).", ""]
    lines += [f"![{k}]({p})" for k, p in ba["grids"].items()] + [""]
    fb = ba["feedback"]
    lines += ["### Do the product's figures track the ground truth?", "",
              f"Over {fb['rounds']} rounds (every object and feed), the change of each figure against the change of "
              "the held-out PSNR in the mask:", ""]
    lines += _table(["figure", "Pearson r", "sign agreement"], [
        [k, _fmt(fb[k].get("pearson_r"), 2), _fmt(fb[k].get("sign_agreement"), 2)]
        for k in ("photo_psnr_db", "photo_consistency_db")])
    lines += [f"The round's own report: {fb['round_report']['note']}; the held-out PSNR rose in "
              f"{_fmt(fb['round_report']['share_of_rounds_that_improved_heldout'], 2)} of the rounds.", ""]
    return lines


def _clip(cl: dict[str, Any], results: dict[str, Any], out: Path) -> list[str]:
    s = results["settings"]
    lines = ["## Study 4: CLIP similarity to the photo, per version", "", f"Hypothesis: {cl['hypothesis']}", ""]
    if cl["status"] != "ok":
        lines += [f"{cl['status']}.", ""]
    else:
        lines += _table(["feed", *(f"v{k + 1}" for k in range(s["rounds"] + 1))],
                        [[f, *(_stat(e, 3) for e in vals)] for f, vals in cl["per_feed"].items()])
        lines += [f"Ground-truth views against the photo: {_stat(cl['ground_truth'].get('clip_to_photo'))}.", ""]
    return lines


def _ablations(ab: dict[str, Any], results: dict[str, Any], out: Path) -> list[str]:
    lines = ["## Study 6: MVCRM ablations", "", f"Hypothesis: {ab['hypothesis']}", "", f"Protocol: {ab['protocol']}.",
              ""]
    feeds = sorted({f for v in ab["variants"].values() for f in v})
    lines += _table(["variant", *(f"{f}: round-2 change (dB)" for f in feeds)], [
        [v, *(_stat(e.get(f, {}).get("summary", {}).get("round2_change_db"), 2) for f in feeds)]
        for v, e in ab["variants"].items()])
    lines += [f"Skipped: {x['variant']}: {x['why']}." for x in ab["skipped"]] + [""]
    plot = _plot_ablations(results, out)
    if plot:
        lines += [f"![ablations]({plot})", ""]
    return lines


def write_report(results: dict[str, Any], out: Path) -> Path:
    """Write ``out/report.md`` (and ``curves.png``, ``ablations.png``) from ``results``."""
    s, st = results["settings"], results["studies"]
    lines = [f"# Glimpse3D research report: preset `{s['preset']}`", ""]
    lines += ["## Settings", "", "```", *(f"{k}: {v}" for k, v in s.items()), "```", "",
              f"Environment: {results['environment']}. Learned metrics: LPIPS: {results['learned_metrics']['lpips']}; "
              f"CLIP: {results['learned_metrics']['clip']}.", "",
              "Timings (s): " + ", ".join(f"{k} {v}" for k, v in results["timings_s"].items()), ""]

    lines += _targets(results, out)
    for study, section in (("coarse", _coarse), ("multiview_baseline", _multiview), ("inconsistency", _inconsistency),
                           ("depth", _depth), ("before_after", _before_after), ("clip", _clip),
                           ("ablations", _ablations)):
        if study in st:  # --studies may have left some out
            lines += section(st[study], results, out)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of the studies' summaries and the targets, by dotted path."""
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            if k in ("per_object", "per_case", "grids", "grid", "settings", "published", "ci95"):
                continue
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i + 1}]"))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[prefix] = float(value)
    return out


def load_results(run: Path) -> dict[str, Any]:
    path = run / "results.json" if run.is_dir() else run
    if not path.is_file():
        raise InvalidInput(f"no results.json at {path}: give a run folder written by "
                           "`python -m glimpse3d.research run`", field="run")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InvalidInput(f"{path} is not valid JSON ({err})", field="run") from err


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """(key, A, B, B - A) for every summary figure the two runs share (means, targets, timings)."""
    fa = _flatten({"studies": a["studies"], "targets": a["targets"], "timings_s": a["timings_s"]})
    fb = _flatten({"studies": b["studies"], "targets": b["targets"], "timings_s": b["timings_s"]})
    return [(k, fa[k], fb[k], fb[k] - fa[k]) for k in fa if k in fb and (".mean" in k or k.startswith(("targets",
                                                                                                       "timings")))]


def format_compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    settings = [f"{k}: {a['settings'][k]} -> {b['settings'].get(k)}" for k in a["settings"]
                if a["settings"][k] != b["settings"].get(k)]
    rows = compare(a, b)
    lines = ["settings that differ: " + ("; ".join(settings) if settings else "none"), ""]
    width = max((len(r[0]) for r in rows), default=10)
    lines.append(f"{'figure':<{width}}  {'A':>10}  {'B':>10}  {'B - A':>10}")
    lines += [f"{k:<{width}}  {x:>10.4f}  {y:>10.4f}  {d:>+10.4f}" for k, x, y, d in rows]
    return "\n".join(lines)

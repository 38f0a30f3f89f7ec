"""Plausibility check of an object matte (numpy only).

:func:`check_matte` measures a mask's ``coverage``, ``border_fraction`` and ``fragments`` and returns
a :class:`MatteCheck` whose ``warning`` is a short sentence for the user when the matte looks
implausible (thresholds ``MIN_COVERAGE``, ``MAX_COVERAGE``, ``MAX_FRAGMENTS``,
``MAX_BORDER_FRACTION``), else ``None``. Only numpy, because the gateway runs it on every job and
carries no OpenCV: components are labelled by a vectorised union-find over runs of foreground.
What is measured and when it warns: docs/http-api.md (``POST /api/v1/matte``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glimpse3d.core.errors import InvalidInput

MIN_COVERAGE = 0.02
MAX_COVERAGE = 0.90
MAX_FRAGMENTS = 3
MAX_BORDER_FRACTION = 0.5
FRAGMENT_MIN_SHARE = 0.01  # a component counts as a fragment when it holds this share of the foreground


@dataclass(frozen=True)
class MatteCheck:
    """What :func:`check_matte` measured, and a user-facing warning when the matte looks implausible."""

    coverage: float
    border_fraction: float
    fragments: int
    warning: str | None

    def metrics(self) -> dict[str, float]:
        return {
            "matte_coverage": float(self.coverage),
            "matte_border_fraction": float(self.border_fraction),
            "matte_fragments": float(self.fragments),
        }


def _runs(fg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bool [H, W] -> (row, start, end) [n] of the horizontal foreground runs, end exclusive, row-major order."""
    h, w = fg.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = fg
    d = np.diff(padded, axis=1)  # [H, W + 1]; +1 where a run starts, -1 one past where it ends
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    return rows, starts, ends


def component_sizes(fg: np.ndarray) -> np.ndarray:
    """Pixel counts [k] of the 8-connected components of a bool [H, W] image (any order)."""
    rows, starts, ends = _runs(fg)
    n = rows.size
    if n == 0:
        return np.zeros(0, np.int64)
    stride = fg.shape[1] + 2
    start_key = rows * stride + starts  # increasing in run order
    end_key = rows * stride + ends
    # Run a (row r) touches run b (row r + 1) with 8-connectivity iff s_b <= e_a and e_b >= s_a; the runs of
    # row r + 1 that do are consecutive in run order: from the first whose end reaches s_a to the last
    # that starts no later than e_a.
    lo = np.searchsorted(end_key, (rows + 1) * stride + starts, side="left")
    hi = np.searchsorted(start_key, (rows + 1) * stride + ends, side="right")
    count = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(n), count)
    b = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(int(count.sum()))
    parent = np.arange(n)  # a forest over the runs; every run points at its root after each round
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            break
        # Hook the larger root of every edge that still joins two trees onto the smaller one (no cycles);
        # every tree with such an edge merges with another, so the number of trees at least halves.
        np.minimum.at(parent, np.maximum(ra, rb)[differ], np.minimum(ra, rb)[differ])
        while True:  # pointer jumping until every run points at its root
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
    sizes = np.bincount(parent, weights=(ends - starts).astype(np.float64), minlength=n)
    return sizes[sizes > 0].astype(np.int64)


def check_matte(mask: np.ndarray) -> MatteCheck:
    """Coverage, border contact and fragmentation of ``mask`` ([H, W] in [0, 1]; foreground is ``>= 0.5``)."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or 0 in mask.shape:
        got = list(mask.shape) if isinstance(mask, np.ndarray) else type(mask).__name__
        raise InvalidInput(f"mask must be a non-empty [H, W] array, got {got}", field="mask")
    if mask.dtype != np.bool_ and not np.isfinite(mask).all():
        raise InvalidInput("mask has a non-finite value", field="mask")
    fg = mask >= 0.5  # [H, W] bool
    h, w = fg.shape
    total = int(fg.sum())
    coverage = total / fg.size
    if h <= 2 or w <= 2:
        ring = fg.ravel()
    else:
        ring = np.concatenate([fg[0], fg[-1], fg[1:-1, 0], fg[1:-1, -1]])
    border_fraction = float(ring.mean())
    sizes = component_sizes(fg)
    fragments = int((sizes >= FRAGMENT_MIN_SHARE * total).sum()) if total else 0

    reasons = []
    if coverage < MIN_COVERAGE:
        reasons.append(f"it covers only {100 * coverage:.1f}% of the image")
    elif coverage > MAX_COVERAGE:
        reasons.append(f"it covers {100 * coverage:.0f}% of the image")
    if fragments > MAX_FRAGMENTS:
        reasons.append(f"it is split into {fragments} separate pieces")
    if border_fraction > MAX_BORDER_FRACTION:
        reasons.append(f"it touches {100 * border_fraction:.0f}% of the image border")
    warning = None
    if reasons:
        warning = ("The object cut-out looks doubtful: " + "; ".join(reasons)
                   + ". A photo of one object, fully in frame on a plain background, works best.")
    return MatteCheck(coverage=float(coverage), border_fraction=border_fraction, fragments=fragments, warning=warning)

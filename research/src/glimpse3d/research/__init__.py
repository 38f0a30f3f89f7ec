"""Glimpse3D's research platform: benchmark objects with ground truth from an independent renderer,
the metrics, the coarse-splat evaluation and enhancement rounds scored against ground truth
(docs/research.md)."""

# The studies of ``python -m glimpse3d.research run`` (glimpse3d.research.suite), in the order they run.
STUDIES = ("coarse", "multiview_baseline", "inconsistency", "depth", "before_after", "clip", "ablations")

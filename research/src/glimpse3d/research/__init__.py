"""Glimpse3D's research platform: benchmark objects with ground truth from an independent renderer,
the metrics, the coarse-splat evaluation and enhancement rounds scored against ground truth
(docs/research.md)."""

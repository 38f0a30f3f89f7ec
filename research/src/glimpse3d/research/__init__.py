"""Glimpse3D's research platform: benchmark objects with ground truth from an independent renderer,
and the metrics the studies report (docs/research.md)."""

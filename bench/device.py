"""Where the benchmarks that render or run models place their tensors.

``python -m bench --device cuda`` (or ``GLIMPSE3D_BENCH_DEVICE=cuda``) asks for the GPU; ``auto`` (the
default) takes CUDA when torch sees a device, else the CPU. The flag is passed on through the
environment so that a suite's child processes (bench_raster runs its measurements in fresh ones) read
the same choice. A suite adopts it with ``from bench.device import bench_device``.
"""

from __future__ import annotations

import os

ENV = "GLIMPSE3D_BENCH_DEVICE"
CHOICES = ("auto", "cpu", "cuda")


def requested() -> str:
    """The device asked for: ``auto``, ``cpu`` or ``cuda`` (ValueError naming the variable otherwise)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(CHOICES)}, got {value!r}")
    return value


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def bench_device() -> str:
    """``cuda`` or ``cpu``; asking for ``cuda`` on a machine without it is a RuntimeError."""
    value = requested()
    if value == "cuda" and not cuda_available():
        raise RuntimeError(f"{ENV}=cuda (python -m bench --device cuda) but torch sees no CUDA device")
    if value == "auto":
        return "cuda" if cuda_available() else "cpu"
    return value

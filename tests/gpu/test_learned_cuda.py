"""Every learned backend on CUDA, with its tiny random models in the production layout.

The backends and their small options, dummy inputs and output checks are the backend contract classes
of tests/unit/test_contract_*.py (a backend counts as learned when its options have ``model_dir``), so
a new learned backend is covered here by its contract class alone. Each backend is loaded with
``device="cuda"`` and run once: the contract's declared shapes, dtypes and ranges must hold; in float32
the result must match the CPU result of the same inputs within a tolerance (the samplers draw their
noise from CPU generators, so the two devices differ only by floating-point rounding); in float16
(``dtype``, or ``clip_dtype`` for the CLIP check) the contract must hold and every output be finite.
The contract's same-seed-same-output rule is checked on CUDA on its own, since atomic reductions in
CUDA kernels could break it without making the results wrong.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from contracts import CONTRACTS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SERVICES = ("backprojection", "depth", "diffusion", "multiview", "reconstruction")
# tests/unit/test_contract_<service>.py, imported for their contract classes (they fill CONTRACTS).
_MODULES = tuple(importlib.import_module(f"test_contract_{service}") for service in SERVICES)


def _learned() -> list[tuple[str, str]]:
    return sorted(key for key, cls in CONTRACTS.items() if cls.__module__ in {m.__name__ for m in _MODULES}
                  and cls().learned)


LEARNED = _learned()


def _dtype_option(contract: Any, dtype: str) -> dict[str, str]:
    fields = contract.backend_class().Options.model_fields
    for name in ("dtype", "clip_dtype"):
        if name in fields:
            return {name: dtype}
    return {}


def _finite(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return not np.issubdtype(value.dtype, np.floating) or bool(np.isfinite(value).all())
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if hasattr(value, "__dict__"):
        return all(_finite(v) for v in vars(value).values())
    if hasattr(value, "_fields"):
        return all(_finite(getattr(value, f)) for f in value._fields)
    return True


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _assert_close_across_devices(service: str, gpu: Any, cpu: Any) -> None:
    """Per service: the CUDA result against the CPU one, with tolerances for float32 rounding."""
    if service == "depth":
        assert _mean_abs(gpu.mask, cpu.mask) < 0.02, "mask"
        inside = (gpu.mask >= 0.5) & (cpu.mask >= 0.5)
        rel = np.abs(gpu.depth[inside] - cpu.depth[inside]) / cpu.depth[inside]
        assert inside.any() and float(np.median(rel)) < 1e-2, f"depth: median relative difference {np.median(rel):.3g}"
    elif service == "diffusion":
        assert _mean_abs(gpu, cpu) < 3.0, f"mean |difference| {_mean_abs(gpu, cpu):.3g} levels"
    elif service == "multiview":
        for i, (a, b) in enumerate(zip(gpu, cpu, strict=True)):
            assert _mean_abs(a.rgb, b.rgb) < 3.0, f"view {i} rgb: mean |difference| {_mean_abs(a.rgb, b.rgb):.3g}"
            assert _mean_abs(a.mask, b.mask) < 0.03, f"view {i} mask: mean |difference| {_mean_abs(a.mask, b.mask):.3g}"
    elif service == "reconstruction":
        n_gpu, n_cpu = gpu.splat.num_gaussians, cpu.splat.num_gaussians
        assert abs(n_gpu - n_cpu) <= max(2, 0.05 * n_cpu), f"Gaussians {n_gpu} on CUDA, {n_cpu} on CPU"
        psnr = (gpu.metrics["input_view_psnr_db"], cpu.metrics["input_view_psnr_db"])
        assert abs(psnr[0] - psnr[1]) < 0.5, f"input-view PSNR {psnr[0]:.3f} dB on CUDA, {psnr[1]:.3f} dB on CPU"
    elif service == "backprojection":
        assert gpu.splat.num_gaussians == cpu.splat.num_gaussians
        assert gpu.report.rejected == cpu.report.rejected and gpu.report.steps == cpu.report.steps
        if gpu.report.clip_score is not None and cpu.report.clip_score is not None:
            assert abs(gpu.report.clip_score - cpu.report.clip_score) < 0.02, "clip_score"
        # Adam's first steps are about +-lr whatever the gradient's size, so a Gaussian whose gradient is
        # rounding noise may move differently on the two devices: most must agree, not all.
        moved = np.abs(gpu.splat.means - cpu.splat.means).max(axis=1) > 1e-2
        assert moved.mean() < 0.05, f"{moved.mean():.1%} of the means differ by more than 1e-2"
        scale = float(np.abs(cpu.confidence).mean()) + 1e-6
        assert _mean_abs(gpu.confidence, cpu.confidence) / scale < 0.05, "confidence"
    else:
        raise AssertionError(f"no CPU/CUDA comparison for service {service!r}: add one")


def _load(contract: Any, model_dir: Path, **options: Any) -> Any:
    backend = contract.make(model_dir, **options)
    backend.load()
    assert backend.ready
    return backend


_CUDA_BACKENDS: dict[tuple[str, str, str], Any] = {}


def _cuda_backend(service: str, backend: str, dtype: str, model_dir: Path) -> tuple[Any, Any]:
    """(contract, the backend loaded on CUDA in ``dtype``), loaded once per module run."""
    contract = CONTRACTS[(service, backend)]()
    key = (service, backend, dtype)
    if key not in _CUDA_BACKENDS:
        _CUDA_BACKENDS[key] = _load(contract, model_dir, device="cuda", **_dtype_option(contract, dtype))
    return contract, _CUDA_BACKENDS[key]


IDS = [f"{s}-{b}" for s, b in LEARNED]


@pytest.mark.parametrize(("service", "backend"), LEARNED, ids=IDS)
def test_float32_on_cuda_matches_cpu(service: str, backend: str, tiny_model_dir: Path):
    contract, gpu_backend = _cuda_backend(service, backend, "float32", tiny_model_dir)
    if getattr(gpu_backend, "device", None) is not None:
        assert torch.device(gpu_backend.device).type == "cuda"
    inputs = contract.get_dummy_inputs(seed=1)
    gpu = contract.call(gpu_backend, inputs)
    contract.check_outputs(gpu, inputs)
    assert _finite(gpu)
    cpu_backend = _load(contract, tiny_model_dir, device="cpu", **_dtype_option(contract, "float32"))
    _assert_close_across_devices(service, gpu, contract.call(cpu_backend, contract.get_dummy_inputs(seed=1)))


@pytest.mark.parametrize(("service", "backend"), LEARNED, ids=IDS)
def test_same_seed_same_output_on_cuda(service: str, backend: str, tiny_model_dir: Path):
    """The contract's determinism on the GPU (CUDA reductions with atomics would break it)."""
    contract, gpu_backend = _cuda_backend(service, backend, "float32", tiny_model_dir)
    first = contract.call(gpu_backend, contract.get_dummy_inputs(seed=3))
    contract.assert_same(first, contract.call(gpu_backend, contract.get_dummy_inputs(seed=3)))


@pytest.mark.parametrize(("service", "backend"), LEARNED, ids=IDS)
def test_float16_on_cuda_runs(service: str, backend: str, tiny_model_dir: Path):
    contract = CONTRACTS[(service, backend)]()
    option = _dtype_option(contract, "float16")
    if not option:
        pytest.skip(f"{service}/{backend} has no dtype option")
    contract, gpu_backend = _cuda_backend(service, backend, "float16", tiny_model_dir)
    if getattr(gpu_backend, "dtype", None) is not None and "dtype" in option:
        assert gpu_backend.dtype == torch.float16
    inputs = contract.get_dummy_inputs(seed=2)
    result = contract.call(gpu_backend, inputs)
    contract.check_outputs(result, inputs)
    assert _finite(result)

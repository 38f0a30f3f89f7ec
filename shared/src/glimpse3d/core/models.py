"""Model weights on local disk: where they live, what they are, and how a backend finds them.

Production weights are downloaded once by ``make models`` (:mod:`glimpse3d.core.modelfetch`) into a
*model directory* (``GLIMPSE3D_MODEL_DIR``, default ``models/`` under the working directory). Each
model is a subdirectory named ``<group>/<name>`` (for example ``depth/dpt-hybrid-midas``) that keeps
the published on-disk layout of its source (a diffusers pipeline folder, a transformers
``config.json`` + ``model.safetensors``, or a single checkpoint). ``models/manifest.json`` records
what was fetched: repo id, revision, files with sha256 and size, and licence.

At run time nothing touches the network: :func:`offline_hub` sets the Hugging Face offline switches
before any model library is imported, and :func:`require_model` turns a missing model into a
:class:`ModelMissing` error that names the path and the ``make models`` step.

This module does not import torch; :func:`resolve_device` and :func:`resolve_dtype` import it lazily.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from glimpse3d.core.errors import FailedPrecondition

MODEL_DIR_ENV = "GLIMPSE3D_MODEL_DIR"
DEFAULT_MODEL_DIR = Path("models")
MANIFEST_NAME = "manifest.json"

_OFFLINE_SWITCHES = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DIFFUSERS_OFFLINE": "1",
}


class ModelMissing(FailedPrecondition):
    """A backend's weights are not in the model directory (or are incomplete)."""

    reason = "MODEL_MISSING"


@dataclass(frozen=True)
class ModelSource:
    """One production model as ``make models`` fetches it.

    name: ``<group>/<name>``, the subdirectory of the model directory.
    repo_id / revision: the Hugging Face repository and the revision fetched (a tag, branch or
        commit; the resolved commit is recorded in the manifest).
    files: glob patterns (``huggingface_hub`` ``allow_patterns``) of the files to fetch.
    licence: the licence the publisher states for the weights.
    gpu_memory: published / documented inference memory, for the docs and capacity planning.
    used_by: ``<service>/<backend>`` names that load this model.
    opt_in: fetched by ``make models`` only when named (``--only``) or with ``--all``; for weights no
        default selects, such as non-commercial ones.
    """

    name: str
    repo_id: str
    revision: str
    files: tuple[str, ...]
    licence: str
    gpu_memory: str = ""
    used_by: tuple[str, ...] = ()
    notes: str = ""
    opt_in: bool = False

    def __post_init__(self) -> None:
        parts = self.name.split("/")
        if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
            raise ValueError(f"model name must be '<group>/<name>', got {self.name!r}")
        if not self.files:
            raise ValueError(f"model {self.name}: files must not be empty")


def default_model_dir() -> Path:
    """``GLIMPSE3D_MODEL_DIR`` or ``models/``."""
    raw = os.environ.get(MODEL_DIR_ENV, "").strip()
    return Path(raw) if raw else DEFAULT_MODEL_DIR


def offline_hub() -> None:
    """Switch the Hugging Face libraries to offline mode (idempotent). Call before importing them."""
    for key, value in _OFFLINE_SWITCHES.items():
        os.environ[key] = value


def require_model(model_dir: Path | str, name: str, required: Sequence[str] = ()) -> Path:
    """The directory of model ``name`` inside ``model_dir``; every path in ``required`` (relative to
    it) must exist. Raises :class:`ModelMissing` naming what is absent and how to get it."""
    root = Path(model_dir) / name
    missing = [rel for rel in required if not (root / rel).exists()]
    if not root.is_dir() or missing:
        what = f"{root}" if not root.is_dir() else ", ".join(str(root / m) for m in missing)
        raise ModelMissing(
            f"model {name!r} is not installed: {what} not found. Run `make models` "
            f"(or `python -m glimpse3d.core.modelfetch --model-dir {Path(model_dir)} --only {name}`) "
            f"to download it, or point GLIMPSE3D_MODEL_DIR at a directory that has it",
            field="model_dir",
            metadata={"model": name, "path": str(root)},
        )
    return root


def resolve_device(spec: str = "auto"):  # -> torch.device
    """``auto`` picks CUDA when available. Asking for CUDA on a machine without it is an error."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise FailedPrecondition(f"device {spec!r} requested but CUDA is not available", field="device")
    return torch.device(spec)


def warm_optimizer() -> None:
    """Pay torch's one-off optimiser set-up cost now (in a backend's ``load``), not in the first request.

    The first ``torch.optim`` optimiser a process builds imports ``torch._dynamo`` (its constructor is
    wrapped to disable compilation), which takes about as long as importing torch itself: seconds on a
    2-core machine. Backends that fit with Adam call this while loading.
    """
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def resolve_dtype(spec: str, device):  # -> torch.dtype
    """``auto`` is float16 on CUDA and float32 on CPU (half precision is slow or unsupported there)."""
    import torch

    if spec == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[spec]

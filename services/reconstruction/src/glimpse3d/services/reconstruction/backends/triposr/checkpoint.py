"""TripoSR checkpoint I/O: the published key naming, the manifest, verification and loading.

``model.ckpt`` is a ``torch.save`` of the published state dict, with transformers 4.x ViT key names;
:func:`published_key` maps the installed transformers' names to those, so one naming is used on
disk everywhere. ``manifest.json`` is derived from the published architecture
(:func:`architecture_manifest`); ``python -m glimpse3d.services.reconstruction.backends.triposr.checkpoint
manifest|verify <model.ckpt>`` writes it from, or checks it against, a real file. :func:`load_model`
checks keys and shapes before assigning the memory-mapped tensors (:class:`CheckpointMismatch`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from glimpse3d.core.errors import FailedPrecondition
from glimpse3d.services.reconstruction.backends.triposr.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TripoSRConfig,
    TripoSRModel,
    meta_copy,
    published_config,
)
from glimpse3d.services.reconstruction.backends.triposr.source import NAME

logger = logging.getLogger(__name__)

MANIFEST_PATH = Path(__file__).with_name("manifest.json")
_VIT_PREFIX = "image_tokenizer.model."
# transformers 5 ViT module names -> the transformers 4.x names in the published checkpoint. Order
# matters: ``attention.o_proj`` must become ``attention.output.dense`` before nothing else can
# claim it, and ``mlp.fc2`` maps to the bare ``output.dense``.
_VIT_RENAMES = (
    (".layers.", ".encoder.layer."),
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
    (".mlp.fc1.", ".intermediate.dense."),
    (".mlp.fc2.", ".output.dense."),
)
_SHOWN = 5  # offending keys named per category in an error

Shapes = dict[str, tuple[int, ...]]


class CheckpointMismatch(FailedPrecondition):
    """The checkpoint does not hold the tensors the configured architecture needs."""

    reason = "CHECKPOINT_MISMATCH"


def published_key(module_key: str) -> str:
    """The published checkpoint's name for a state-dict key of the installed model (identity when
    the installed transformers already uses the 4.x names)."""
    if not module_key.startswith(_VIT_PREFIX):
        return module_key
    key = "." + module_key[len(_VIT_PREFIX):]
    for new, old in _VIT_RENAMES:
        key = key.replace(new, old)
    return _VIT_PREFIX + key[1:]


def published_names(model: TripoSRModel) -> dict[str, str]:
    """Published key -> the model's own key, for every entry of the model's state dict."""
    names = {published_key(k): k for k in model.state_dict()}
    if len(names) != len(model.state_dict()):
        raise RuntimeError("two model keys map to the same published key; the ViT renaming table is wrong")
    return names


def implied_shapes(config: TripoSRConfig) -> Shapes:
    """Published key -> shape of every tensor the architecture built from ``config`` holds."""
    model = meta_copy(config)
    state = model.state_dict()
    return {pub: tuple(state[own].shape) for pub, own in sorted(published_names(model).items())}


def published_state_dict(model: TripoSRModel) -> dict[str, Tensor]:
    """The model's state dict under the published names (what ``model.ckpt`` holds)."""
    state = model.state_dict()
    return {pub: state[own].detach().cpu().contiguous() for pub, own in published_names(model).items()}


# ----------------------------------------------------------------------------- manifest


def manifest_dict(tensors: Mapping[str, tuple[tuple[int, ...], str]], derived_from: str) -> dict:
    """The manifest JSON object for ``key -> (shape, dtype)``."""
    entries = {k: {"shape": list(shape), "dtype": dtype} for k, (shape, dtype) in sorted(tensors.items())}
    params = sum(_numel(shape) for shape, _ in tensors.values())
    return {"model": NAME, "file": "model.ckpt", "derived_from": derived_from, "num_tensors": len(entries),
            "num_parameters": params, "tensors": entries}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def architecture_manifest() -> dict:
    """The manifest of the published architecture and config (how ``manifest.json`` was made)."""
    shapes = implied_shapes(published_config())
    return manifest_dict({k: (s, "float32") for k, s in shapes.items()},
                         "the published architecture and config.yaml")


def checkpoint_manifest(path: Path) -> dict:
    """The manifest of a real checkpoint file (to regenerate or audit ``manifest.json``)."""
    state = read_checkpoint(path)
    return manifest_dict({k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()},
                         f"the checkpoint file {Path(path).name}")


def write_manifest(manifest: Mapping, out: Path) -> None:
    """Write ``manifest`` as JSON, one tensor per line."""
    head = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in manifest.items() if k != "tensors")
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in manifest["tensors"].items())
    Path(out).write_text("{\n" + head + ',\n "tensors": {\n' + body + "\n }\n}\n", encoding="utf-8")


def read_manifest(path: Path = MANIFEST_PATH) -> Shapes:
    """Published key -> shape from a manifest file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return {k: tuple(int(s) for s in v["shape"]) for k, v in data["tensors"].items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FailedPrecondition(f"cannot read the triposr manifest {path}: {err}", field="manifest") from err


# ----------------------------------------------------------------------------- reading and checking


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """The tensors of ``model.ckpt`` (a state dict, or a mapping with a ``state_dict`` entry), read
    with ``weights_only`` (no code from the file runs) and memory-mapped when the format allows."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means an unusable file
        raise CheckpointMismatch(f"cannot read triposr checkpoint {path}: {err}", field="model.ckpt") from err
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointMismatch(f"triposr checkpoint {path} is not a mapping of tensor names to tensors",
                                 field="model.ckpt")
    return dict(obj)


def verify_state(state: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Raise :class:`CheckpointMismatch` unless ``state`` has exactly the ``expected`` keys and shapes
    (floating point); the message names the first few offending keys of each kind."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {list(state[k].shape)} (expected {list(expected[k])})"
             for k in sorted(set(state) & set(expected)) if tuple(state[k].shape) != tuple(expected[k])]
    not_float = [f"{k} ({state[k].dtype})" for k in sorted(state) if not state[k].is_floating_point()]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong),
                         ("not floating point", not_float)):
        if items:
            more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:_SHOWN])}{more}")
    if problems:
        raise CheckpointMismatch(
            f"triposr checkpoint {where} does not match the model: {'; '.join(problems)}",
            field="model.ckpt",
            metadata={"missing": str(len(missing)), "unexpected": str(len(unexpected)), "wrong_shape": str(len(wrong))},
        )


def expected_shapes(config: TripoSRConfig) -> tuple[Shapes, str]:
    """What a checkpoint for ``config`` must hold: the manifest for the published config, else the
    shapes the config implies; and which of the two it is."""
    if config == published_config():
        return read_manifest(), f"manifest {MANIFEST_PATH.name}"
    return implied_shapes(config), "the shapes config.yaml implies"


def load_model(checkpoint: Path, config: TripoSRConfig) -> TripoSRModel:
    """The model for ``config`` with the weights of ``checkpoint`` (CPU, float32 as stored, eval mode)."""
    expected, reference = expected_shapes(config)
    state = read_checkpoint(checkpoint)
    verify_state(state, expected, f"{checkpoint} (checked against {reference})")
    model = meta_copy(config)
    names = published_names(model)
    model.load_state_dict({names[k]: v for k, v in state.items()}, strict=True, assign=True)
    tokenizer = model.image_tokenizer  # its normalisation buffers are not in the state dict
    tokenizer.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
    tokenizer.register_buffer("image_std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"triposr tensors left unloaded: {left[:_SHOWN]}")
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write or check the triposr state-dict manifest.")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("manifest", help="write the manifest of a real model.ckpt")
    make.add_argument("checkpoint", type=Path)
    make.add_argument("--out", type=Path, default=MANIFEST_PATH)
    check = sub.add_parser("verify", help="check a model.ckpt against the manifest")
    check.add_argument("checkpoint", type=Path)
    ns = parser.parse_args(argv)
    if ns.command == "manifest":
        write_manifest(checkpoint_manifest(ns.checkpoint), ns.out)
        logger.info("wrote %s", ns.out)
    else:
        verify_state(read_checkpoint(ns.checkpoint), read_manifest(), str(ns.checkpoint))
        logger.info("%s matches %s", ns.checkpoint, MANIFEST_PATH.name)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())

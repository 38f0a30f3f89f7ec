"""Loading and checking LGM checkpoints, and the key/shape manifest of the published one.

The published ``model_fp16_fixrot.safetensors`` is a bare fp16 state dict of the :data:`.unet.BIG`
architecture; the tiny test model adds its config as JSON in the header metadata
(:data:`CONFIG_METADATA_KEY`). :func:`load_checkpoint` compares every key and shape with the
architecture before allocating and raises :class:`CheckpointMismatch` naming what differs.
``manifest.json`` is derived from the architecture (its predicted safetensors size matches the
published file's). With a real file::

    python -m glimpse3d.services.reconstruction.backends.lgm.checkpoint verify FILE
    python -m glimpse3d.services.reconstruction.backends.lgm.checkpoint manifest --from FILE --out manifest.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from glimpse3d.core.errors import FailedPrecondition
from glimpse3d.services.reconstruction.backends.lgm.source import CHECKPOINT_FILE, MODEL_NAME
from glimpse3d.services.reconstruction.backends.lgm.unet import BIG, LGMConfig, LGMNet

logger = logging.getLogger(__name__)

CONFIG_METADATA_KEY = "glimpse3d.lgm.config"
MANIFEST_PATH = Path(__file__).with_name("manifest.json")
_LISTED = 5  # keys named per category in an error message
_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}

Shapes = dict[str, tuple[int, ...]]


class CheckpointMismatch(FailedPrecondition):
    """A checkpoint's tensors do not fit the LGM architecture."""

    reason = "CHECKPOINT_MISMATCH"


def expected_shapes(cfg: LGMConfig = BIG) -> Shapes:
    """Every state-dict key of the architecture with its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        net = LGMNet(cfg)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def read_header(path: Path) -> tuple[Shapes, dict[str, str], dict[str, str]]:
    """(shapes, dtypes, metadata) of a safetensors file, read from its header only."""
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            dtypes = {k: str(f.get_slice(k).get_dtype()) for k in shapes}
            return shapes, dtypes, dict(f.metadata() or {})
    except (OSError, SafetensorError) as err:
        raise CheckpointMismatch(f"LGM checkpoint {path} is not a readable safetensors file: {err}",
                                 field="model_dir", metadata={"path": str(path)}) from None


def compare(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> dict[str, list[str]]:
    """Keys missing from ``found``, unexpected in it, and present with another shape (as "key: found vs expected")."""
    return {
        "missing": sorted(set(expected) - set(found)),
        "unexpected": sorted(set(found) - set(expected)),
        "mismatched": sorted(f"{k}: {list(found[k])} vs {list(expected[k])}"
                             for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k])),
    }


def check_keys(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], path: Path) -> None:
    """Raise :class:`CheckpointMismatch` naming what differs (a few keys per kind, with counts)."""
    diff = compare(found, expected)
    if not any(diff.values()):
        return
    parts = []
    for kind, keys in diff.items():
        if keys:
            more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
            parts.append(f"{len(keys)} {kind} ({'; '.join(keys[:_LISTED])}{more})")
    raise CheckpointMismatch(
        f"LGM checkpoint {path} does not match the LGM architecture: {', '.join(parts)}. "
        f"Re-download it with `make models` (model {MODEL_NAME})",
        field="model_dir", metadata={"path": str(path), **{k: str(len(v)) for k, v in diff.items()}},
    )


def config_from_metadata(metadata: Mapping[str, str], path: Path) -> LGMConfig:
    """The architecture a checkpoint declares (tiny models), else the published ``big`` one."""
    raw = metadata.get(CONFIG_METADATA_KEY)
    if raw is None:
        return BIG
    try:
        return LGMConfig.from_mapping(json.loads(raw))
    except (ValueError, TypeError) as err:
        raise CheckpointMismatch(f"LGM checkpoint {path} has a bad {CONFIG_METADATA_KEY}: {err}",
                                 field="model_dir", metadata={"path": str(path)}) from None


def load_checkpoint(path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> LGMNet:
    """The checked network with the checkpoint's weights, in eval mode on ``device`` / ``dtype``."""
    shapes, _, metadata = read_header(path)
    cfg = config_from_metadata(metadata, path)
    check_keys(shapes, expected_shapes(cfg), path)
    state = {k: v.to(torch.float32) for k, v in load_file(str(path), device="cpu").items()}
    with torch.device("meta"):
        net = LGMNet(cfg)
    net.load_state_dict(state, strict=True, assign=True)
    logger.info("lgm: loaded %s (%d tensors, splat %d px per view)", path, len(state), cfg.splat_size)
    return net.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- manifest


def predicted_file_size(shapes: Mapping[str, tuple[int, ...]], dtype: str = "F16") -> int:
    """Bytes of a safetensors file holding ``shapes`` in ``dtype`` with no metadata: 8-byte length,
    compact JSON header (keys sorted, data in that order) padded with spaces to a multiple of 8, data."""
    header: dict[str, Any] = {}
    offset = 0
    for key in sorted(shapes):
        n = _DTYPE_BYTES[dtype]
        for s in shapes[key]:
            n *= s
        header[key] = {"dtype": dtype, "shape": list(shapes[key]), "data_offsets": [offset, offset + n]}
        offset += n
    length = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + (length + 7) // 8 * 8 + offset


def build_manifest(shapes: Mapping[str, tuple[int, ...]], source: str) -> dict[str, Any]:
    return {
        "file": CHECKPOINT_FILE,
        "model": MODEL_NAME,
        "source": source,
        "dtype": "F16",
        "num_tensors": len(shapes),
        "num_parameters": sum(int(torch.Size(s).numel()) for s in shapes.values()),
        "predicted_file_size": predicted_file_size(shapes),
        "tensors": {k: list(shapes[k]) for k in sorted(shapes)},
    }


def dump_manifest(manifest: Mapping[str, Any]) -> str:
    """The manifest as JSON text with one tensor per line."""
    head = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in manifest.items() if k != "tensors"]
    tensors = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in manifest["tensors"].items()]
    return "{\n" + "\n".join(head) + '\n "tensors": {\n' + ",\n".join(tensors) + "\n }\n}\n"


def read_manifest(path: Path = MANIFEST_PATH) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def verify_file(path: Path, manifest: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """Differences between a real checkpoint's header and the manifest (empty lists = identical keys and shapes)."""
    manifest = manifest or read_manifest()
    shapes, dtypes, _ = read_header(path)
    diff = compare(shapes, {k: tuple(v) for k, v in manifest["tensors"].items()})
    diff["dtype"] = sorted(f"{k}: {d}" for k, d in dtypes.items() if d != manifest["dtype"])
    return diff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify an LGM checkpoint against manifest.json, or regenerate it.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="compare a checkpoint's keys, shapes and dtypes with the manifest")
    verify.add_argument("checkpoint", type=Path)
    make = sub.add_parser("manifest", help="write the manifest (from a real file, or derived from the architecture)")
    make.add_argument("--from", dest="source", type=Path, default=None, help="a real checkpoint to read")
    make.add_argument("--out", type=Path, default=MANIFEST_PATH)
    ns = parser.parse_args(argv)
    if ns.command == "verify":
        diff = verify_file(ns.checkpoint)
        for kind, keys in diff.items():
            print(f"{kind}: {len(keys)}", *keys[:20], sep="\n  ")
        return 1 if any(diff.values()) else 0
    if ns.source is not None:
        shapes, _, _ = read_header(ns.source)
        manifest = build_manifest(shapes, f"read from {ns.source.name}")
    else:
        manifest = build_manifest(expected_shapes(BIG), "derived from the published big architecture")
    ns.out.write_text(dump_manifest(manifest))
    print(f"wrote {ns.out}: {manifest['num_tensors']} tensors, {manifest['num_parameters']} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())

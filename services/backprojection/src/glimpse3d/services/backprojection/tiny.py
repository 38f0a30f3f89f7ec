"""Tiny random CLIP checkpoints in the production layout of :mod:`.weights`, for tests and benchmarks.

Each model folder holds what ``make models`` fetches: ``config.json``, ``preprocessor_config.json``
(the published CLIP preprocessing: shortest edge 224, centre crop 224, CLIP mean/std) and the
weights under the published file name: ``pytorch_model.bin`` (a ``torch.save``'d state dict, as
openai/clip-vit-base-patch32 publishes it) or ``model.safetensors`` (openai/clip-vit-large-patch14).
The towers are tiny (hidden size 32, 2 layers) but keep the real image size and patch size, so the
processor and the patch embedding see production-shaped inputs. Embeddings are meaningless.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from glimpse3d.services.backprojection.weights import CLIP_BASE, CLIP_LARGE

_PATCH = {CLIP_BASE: 32, CLIP_LARGE: 14}


def _tiny_config(patch_size: int):  # -> transformers.CLIPConfig
    from transformers import CLIPConfig

    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    text = {**tower, "vocab_size": 99, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2,
            "pad_token_id": 1}
    vision = {**tower, "image_size": 224, "patch_size": patch_size}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def write_tiny_models(model_dir: Path, seed: int = 0) -> list[str]:
    """Write seeded tiny CLIP checkpoints for every name in :data:`.weights.MODELS` under ``model_dir``."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    names = []
    for name, patch in _PATCH.items():
        out = Path(model_dir) / name
        torch.manual_seed(seed)
        model = CLIPModel(_tiny_config(patch)).eval()
        # Written beside the target and moved in file by file: a process that already loaded the folder
        # keeps its memory-mapped weights (rewriting a file in place would change them under it).
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
            CLIPImageProcessor().save_pretrained(tmp)
            if name == CLIP_BASE:
                model.config.save_pretrained(tmp)
                torch.save(model.state_dict(), Path(tmp) / "pytorch_model.bin")
            else:
                model.save_pretrained(tmp)
            out.mkdir(exist_ok=True)
            for item in Path(tmp).iterdir():
                os.replace(item, out / item.name)
        names.append(name)
    return names

"""Production weights of the backprojection service (torch-free; read by ``make models``).

The optional CLIP check (:mod:`.clip`) uses OpenAI's CLIP checkpoints as converted for
transformers (``config.json``, ``preprocessor_config.json`` and the weights); only the image tower
is used. ``clip/clip-vit-base-patch32`` (ViT-B/32, pickle weights only) is the default;
``clip/clip-vit-large-patch14`` (ViT-L/14, safetensors) is finer and slower. The ``gpu_memory``
strings give the fp16 weight size derived from the published file sizes.
"""

from __future__ import annotations

from glimpse3d.core.models import ModelSource

CLIP_BASE = "clip/clip-vit-base-patch32"
CLIP_LARGE = "clip/clip-vit-large-patch14"

# The openai/CLIP repository is MIT licensed; the Hugging Face model cards state no licence of their own.
_CLIP_LICENCE = "MIT (openai/CLIP); research use per the model card"
_CLIP_NOTES = "OpenAI CLIP image embeddings for the MVCRM drift check; the model card advises against deployment"

MODELS: tuple[ModelSource, ...] = (
    ModelSource(
        name=CLIP_BASE,
        repo_id="openai/clip-vit-base-patch32",
        revision="main",
        files=("config.json", "preprocessor_config.json", "pytorch_model.bin"),
        licence=_CLIP_LICENCE,
        gpu_memory="no published figure; ~0.3 GB of fp16 weights (605 MB fp32 file, 151 M parameters)",
        used_by=("backprojection/mvcrm",),
        notes=_CLIP_NOTES,
    ),
    ModelSource(
        name=CLIP_LARGE,
        repo_id="openai/clip-vit-large-patch14",
        revision="main",
        files=("config.json", "preprocessor_config.json", "model.safetensors"),
        licence=_CLIP_LICENCE,
        gpu_memory="no published figure; ~0.86 GB of fp16 weights (1.71 GB fp32 file, 428 M parameters)",
        used_by=("backprojection/mvcrm",),
        notes=_CLIP_NOTES,
    ),
)

# Weight files transformers accepts in a CLIP model folder, in the order it prefers them.
WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILES: tuple[str, ...] = ("config.json", "preprocessor_config.json")

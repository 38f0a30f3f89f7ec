"""Production weights of the backprojection service (torch-free; read by ``make models``).

The MVCRM backend's optional CLIP check (:mod:`.clip`) compares image embeddings of the enhanced
view and the reference photo. Both sources are OpenAI's CLIP checkpoints as converted for
transformers (``config.json``, ``preprocessor_config.json`` and the weights); only the image tower
is used, the text tower is loaded with the checkpoint and left idle.

- ``clip/clip-vit-base-patch32`` (the default when the check is on): ViT-B/32, 151 M parameters.
  The repository publishes PyTorch pickle weights only (``pytorch_model.bin``, 605 MB in fp32);
  transformers reads them with ``torch.load(weights_only=True)``.
- ``clip/clip-vit-large-patch14`` (option ``clip_model``): ViT-L/14, 428 M parameters, published as
  ``model.safetensors`` (1.71 GB in fp32); finer, slower.

Neither model card states an inference memory figure; the ``gpu_memory`` strings give the weight
size in fp16 (what the scorer holds on CUDA), derived from the published file sizes.
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

"""Weights of the ``sdxl`` backend, as ``make models`` fetches them into the model directory: the SDXL
1.0 base pipeline and the depth ControlNet (their ``fp16`` variant files only, upcast to float32 on the
CPU), and the fp16-fix VAE used when the backend runs in float16. Does not import torch or diffusers.
"""

from __future__ import annotations

from glimpse3d.core.models import ModelSource

SDXL_BASE = "diffusion/sdxl-base-1.0"
CONTROLNET_DEPTH = "diffusion/controlnet-depth-sdxl-1.0"
VAE_FP16_FIX = "diffusion/sdxl-vae-fp16-fix"

WEIGHTS_VARIANT = "fp16"  # the variant suffix of the fetched weight files

_TOKENIZER_FILES = ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")

SDXL_BASE_FILES: tuple[str, ...] = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.fp16.safetensors",
    *(f"tokenizer/{name}" for name in _TOKENIZER_FILES),
    *(f"tokenizer_2/{name}" for name in _TOKENIZER_FILES),
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
)
CONTROLNET_DEPTH_FILES: tuple[str, ...] = ("config.json", "diffusion_pytorch_model.fp16.safetensors")
VAE_FP16_FIX_FILES: tuple[str, ...] = ("config.json", "diffusion_pytorch_model.safetensors")

MODELS: tuple[ModelSource, ...] = (
    ModelSource(
        name=SDXL_BASE,
        repo_id="stabilityai/stable-diffusion-xl-base-1.0",
        revision="main",
        files=SDXL_BASE_FILES,
        licence="CreativeML Open RAIL++-M (openrail++)",
        gpu_memory="fp16 weights 7.0 GB (UNet 5.14 GB, text encoders 1.39 + 0.25 GB, VAE 0.17 GB); "
        "21.7 GB peak for a batch of four 1024x1024 images in fp16 on an A100 (Hugging Face blog "
        "'Exploring simple optimizations for SDXL', 2023)",
        used_by=("diffusion/sdxl",),
        notes="fp16 variant files only; loaded with variant='fp16' and upcast to float32 on the CPU",
    ),
    ModelSource(
        name=CONTROLNET_DEPTH,
        repo_id="diffusers/controlnet-depth-sdxl-1.0",
        revision="main",
        files=CONTROLNET_DEPTH_FILES,
        licence="CreativeML Open RAIL++-M (openrail++)",
        gpu_memory="fp16 weights 2.5 GB, on top of the SDXL base pipeline",
        used_by=("diffusion/sdxl",),
        notes="depth ControlNet for SDXL base; trained on MiDaS-style (DPT) disparity maps, near = bright",
    ),
    ModelSource(
        name=VAE_FP16_FIX,
        repo_id="madebyollin/sdxl-vae-fp16-fix",
        revision="main",
        files=VAE_FP16_FIX_FILES,
        licence="MIT",
        gpu_memory="0.17 GB in fp16 (weights 335 MB in fp32)",
        used_by=("diffusion/sdxl",),
        notes="SDXL VAE fine-tuned to run in float16 without NaNs; used when the backend runs in float16",
    ),
)

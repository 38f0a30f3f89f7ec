"""Production weights of the learned multiview backends, as ``make models`` fetches them.

``multiview/zero123-xl`` (the ``zero123`` backend): Zero-1-to-3 XL in the diffusers layout of
``bennyguo/zero123-xl-diffusers``; only the ``fp16`` weight files are fetched. The folder layout,
and the other layouts the backend reads, are in docs/backends/multiview.md. No torch import here.
"""

from __future__ import annotations

from glimpse3d.core.models import ModelSource

ZERO123_XL = "multiview/zero123-xl"

WEIGHTS_VARIANT = "fp16"  # the variant suffix of the fetched weight files

ZERO123_XL_FILES: tuple[str, ...] = (
    "model_index.json",
    "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
    "clip_camera_projection/config.json",
    "clip_camera_projection/diffusion_pytorch_model.fp16.safetensors",
    "image_encoder/config.json",
    "image_encoder/model.fp16.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
)

MODELS: tuple[ModelSource, ...] = (
    ModelSource(
        name=ZERO123_XL,
        repo_id="bennyguo/zero123-xl-diffusers",
        revision="ae385edfaf74c677408f96bd04b513483bd326ac",
        files=ZERO123_XL_FILES,
        licence="MIT (as stated on the model card; Zero-1-to-3 code is MIT)",
        gpu_memory="fp16 weights about 2.5 GB (image encoder 608 MB and VAE 167 MB as listed in the "
        "repository, UNet about 1.72 GB from its 860 M parameters); the original fp32 Zero-1-to-3 demo "
        "needs about 22 GB of VRAM (Zero-1-to-3 README: 4 samples at 256x256, with its matting model)",
        used_by=("multiview/zero123",),
        notes="the commit 'add zero123-xl diffusers weights'; fp16 variant files only, loaded with "
        "variant='fp16' and upcast to float32 on the CPU; native resolution 256x256",
    ),
)

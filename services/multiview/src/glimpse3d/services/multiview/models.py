"""Production weights of the learned multiview backends, as ``make models`` fetches them.

The ``zero123`` backend (:mod:`glimpse3d.services.multiview.zero123`) loads one model,
``multiview/zero123-xl``: Zero-1-to-3 XL (the Zero-1-to-3 view-conditioned Stable Diffusion
fine-tuned on Objaverse-XL) converted to the diffusers layout and published as
``bennyguo/zero123-xl-diffusers``. Its folder keeps that layout::

    model_index.json                       Zero123Pipeline; not read by the backend
    unet/config.json                       UNet2DConditionModel, in_channels 8, cross_attention_dim 768
    unet/diffusion_pytorch_model.fp16.safetensors
    vae/config.json                        AutoencoderKL (the Stable Diffusion 1.x VAE, scale 8)
    vae/diffusion_pytorch_model.fp16.safetensors
    image_encoder/config.json              CLIPVisionModelWithProjection (ViT-L/14, projection 768)
    image_encoder/model.fp16.safetensors
    feature_extractor/preprocessor_config.json   CLIPImageProcessor (224 px)
    scheduler/scheduler_config.json        the DDIM schedule (scaled linear betas 0.00085..0.012)
    clip_camera_projection/config.json     {"_class_name": "CLIPCameraProjection",
                                            "embedding_dim": 768, "additional_embeddings": 4}
    clip_camera_projection/diffusion_pytorch_model.fp16.safetensors
                                           one Linear(772 -> 768): tensors ``proj.weight`` [768, 772]
                                           and ``proj.bias`` [768]

Every weight file exists in the repository in three variants: full precision (no suffix), ``fp16``
and ``fp16_ema`` (the exponential-moving-average weights that the original Zero-1-to-3 demo
samples with). Only the ``fp16`` files are fetched (half the download); the backend reads them with
``variant="fp16"`` and upcasts to float32 on the CPU. The backend also reads the other variants
(``variant`` option) and the older ``kxic/zero123-*`` layout, whose projection folder is
``cc_projection/`` with tensors ``projection.weight`` / ``projection.bias``.

This module does not import torch or diffusers.
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

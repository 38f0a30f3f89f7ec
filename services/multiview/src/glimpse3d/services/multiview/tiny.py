"""Tiny random models for the multiview service's learned backends, in the real on-disk layout.

``multiview/zero123-xl`` has the published folder's subfolders, file names, ``fp16`` variant and
tensor names, with diffusers-test-sized configs (two-level UNet and VAE, a two-layer CLIP tower, a
32-wide projection) that run at 32 x 32 pixels. The weights depend only on ``seed``.
"""

from __future__ import annotations

import json
from pathlib import Path

from glimpse3d.services.multiview.weights import WEIGHTS_VARIANT, ZERO123_XL

TINY_WIDTH = 32  # CLIP hidden/projection width = UNet cross-attention width
POSE_DIMS = 4  # [delta polar, sin delta azimuth, cos delta azimuth, delta radius]


def _model_index(version: str) -> dict:
    return {
        "_class_name": "Zero123Pipeline",
        "_diffusers_version": version,
        "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _write_projection(folder: Path, seed: int, version: str) -> None:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    linear = torch.nn.Linear(TINY_WIDTH + POSE_DIMS, TINY_WIDTH)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "CLIPCameraProjection", "_diffusers_version": version,
              "additional_embeddings": POSE_DIMS, "embedding_dim": TINY_WIDTH}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tensors = {"proj.weight": linear.weight.detach().half().contiguous(),
               "proj.bias": linear.bias.detach().half().contiguous()}
    save_file(tensors, str(folder / f"diffusion_pytorch_model.{WEIGHTS_VARIANT}.safetensors"),
              metadata={"format": "pt"})


def write_zero123(model_dir: Path, seed: int = 0) -> str:
    """Write the tiny ``multiview/zero123-xl``; returns its name."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    root = Path(model_dir) / ZERO123_XL
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_WIDTH, attention_head_dim=8, norm_num_groups=32,
    )
    unet.half().save_pretrained(root / "unet", variant=WEIGHTS_VARIANT)
    torch.manual_seed(seed + 1)
    # diffusers annotates the three per-block tuples as 1-tuples (tuple[int], tuple[str]).
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),  # pyright: ignore[reportArgumentType]
        down_block_types=("DownEncoderBlock2D",) * 2,  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D",) * 2,  # pyright: ignore[reportArgumentType]
        norm_num_groups=32, sample_size=32,
    )
    vae.half().save_pretrained(root / "vae", variant=WEIGHTS_VARIANT)
    torch.manual_seed(seed + 2)
    clip_config = CLIPVisionConfig(
        hidden_size=TINY_WIDTH, projection_dim=TINY_WIDTH, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, image_size=32, patch_size=8,
    )
    CLIPVisionModelWithProjection(clip_config).half().save_pretrained(root / "image_encoder", variant=WEIGHTS_VARIANT)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "feature_extractor")
    DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    ).save_pretrained(root / "scheduler")
    _write_projection(root / "clip_camera_projection", seed + 3, diffusers.__version__)
    (root / "model_index.json").write_text(json.dumps(_model_index(diffusers.__version__), indent=2) + "\n")
    return ZERO123_XL


def write_tiny_models(model_dir: Path, seed: int = 0) -> list[str]:
    """Write every learned multiview backend's tiny model under ``model_dir``; returns the names."""
    return [write_zero123(Path(model_dir), seed=seed)]

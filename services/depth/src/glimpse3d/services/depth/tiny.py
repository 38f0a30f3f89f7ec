"""Tiny random models for the depth service's learned backends, in the real on-disk layout.

For tests and ``make bench``; production weights come from ``make models``
(:mod:`glimpse3d.services.depth.weights`). :func:`write_tiny_models` writes every depth model name
and ``matting/sam2.1-hiera-tiny`` as seeded random networks of the production classes, with the
published file layouts and preprocessor styles, initialised so that their disparity and mask
outputs vary over an image. See docs/backends/depth.md ("Tests and tiny models").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from glimpse3d.services.depth.weights import DA_V2_BASE, DA_V2_LARGE, DA_V2_SMALL, DPT_HYBRID, DPT_LARGE, SAM2_TINY

DPT_SIZE = 64  # px: the tiny MiDaS models' fixed input side (the real ones: 384)
DA_SIZE = 56  # px: the tiny Depth Anything target side (the real ones: 518), a multiple of 14
SAM2_SIZE = 128  # px: the tiny SAM 2 input side (the real one: 1024)
_MIDAS_MEAN_STD = [0.5, 0.5, 0.5]
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC


def _vit(hidden: int = 32, layers: int = 2, heads: int = 2) -> dict[str, Any]:
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "intermediate_size": 37}


def _dpt_hybrid_config():  # -> DPTConfig
    from transformers import DPTConfig

    backbone = {  # BiT-ResNet stem of DPT-Hybrid, three stages (strides 4, 8, 16), tiny widths
        "model_type": "bit", "global_padding": "same", "layer_type": "bottleneck", "depths": [1, 1, 1],
        "hidden_sizes": [16, 32, 64], "embedding_size": 16, "num_groups": 2,
        "out_features": ["stage1", "stage2", "stage3"], "embedding_dynamic_padding": True,
    }
    return DPTConfig(
        # backbone_out_indices: as in DPT-Hybrid, the first two stand for the BiT stages and only the
        # last two pick ViT layers
        **_vit(layers=4), image_size=DPT_SIZE, patch_size=16, is_hybrid=True, backbone_config=backbone,
        backbone_featmap_shape=[1, 64, DPT_SIZE // 16, DPT_SIZE // 16], backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[16, 32, 32, 32], reassemble_factors=[1, 1, 1, 0.5], readout_type="project",
        fusion_hidden_size=16, architectures=["DPTForDepthEstimation"],
    )


def _dpt_large_config():  # -> DPTConfig
    from transformers import DPTConfig

    return DPTConfig(
        **_vit(layers=4), image_size=DPT_SIZE, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32], reassemble_factors=[4, 2, 1, 0.5], readout_type="project",
        fusion_hidden_size=16, architectures=["DPTForDepthEstimation"],
    )


def _depth_anything_config():  # -> DepthAnythingConfig
    from transformers import DepthAnythingConfig

    backbone = {"model_type": "dinov2", "image_size": DA_SIZE, "patch_size": 14, **_vit(layers=4),
                "out_indices": [1, 2, 3, 4], "reshape_hidden_states": False}
    return DepthAnythingConfig(
        backbone_config=backbone, patch_size=14, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type="relative",
        architectures=["DepthAnythingForDepthEstimation"],
    )


def _midas_preprocessor() -> dict[str, Any]:
    return {
        "feature_extractor_type": "DPTFeatureExtractor", "do_resize": True, "size": DPT_SIZE,
        "keep_aspect_ratio": False, "ensure_multiple_of": 1, "resample": _BICUBIC, "do_rescale": True,
        "rescale_factor": 1.0 / 255.0, "do_normalize": True, "image_mean": _MIDAS_MEAN_STD,
        "image_std": _MIDAS_MEAN_STD,
    }


def _depth_anything_preprocessor() -> dict[str, Any]:
    return {
        "image_processor_type": "DPTImageProcessor", "do_resize": True, "size": {"height": DA_SIZE, "width": DA_SIZE},
        "keep_aspect_ratio": True, "ensure_multiple_of": 14, "resample": _BICUBIC, "do_rescale": True,
        "rescale_factor": 1.0 / 255.0, "do_normalize": True, "image_mean": _IMAGENET_MEAN,
        "image_std": _IMAGENET_STD, "do_pad": False, "size_divisor": None,
    }


def _write(root: Path, config: Any, preprocessor: dict[str, Any], seed: int) -> None:
    import torch
    from transformers import AutoModelForDepthEstimation

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForDepthEstimation.from_config(config).eval()
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.reset_parameters()  # fan-in scaled: activations keep their size through the layers
        last = model.head.conv3 if hasattr(model.head, "conv3") else model.head.head[-2]  # the 1-channel conv
        with torch.no_grad():
            last.bias.fill_(1.0)
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root)
    (root / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")


def _sam2_config():  # -> Sam2Config
    from transformers import Sam2Config

    side = SAM2_SIZE
    backbone = {  # Hiera: four stages (strides 4, 8, 16, 32), global attention in the third
        "model_type": "sam2_hiera_det_model", "hidden_size": 8, "image_size": [side, side],
        "embed_dim_per_stage": [8, 16, 32, 64], "blocks_per_stage": [1, 1, 2, 1],
        "num_attention_heads_per_stage": [1, 1, 1, 1], "window_size_per_stage": [4, 4, 4, 2],
        "global_attention_blocks": [3], "window_positional_embedding_background_size": [2, 2],
        "num_attention_heads": 1,
    }
    vision = {"backbone_channel_list": [64, 32, 16, 8], "fpn_hidden_size": 32, "backbone_config": backbone,
              "backbone_feature_sizes": [[side // 4, side // 4], [side // 8, side // 8], [side // 16, side // 16]]}
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": 32, "image_size": side, "patch_size": 16, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
        architectures=["Sam2Model"],
    )


def _write_sam2(root: Path, seed: int) -> None:
    import torch
    from transformers import Sam2ImageProcessor, Sam2Model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam2Model(_sam2_config()).eval()
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                module.reset_parameters()
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root)
    Sam2ImageProcessor(size={"height": SAM2_SIZE, "width": SAM2_SIZE}).save_pretrained(root)


def write_tiny_models(model_dir: Path, seed: int = 0) -> list[str]:
    """Write the tiny depth and matting models under ``model_dir``; returns the model names written."""
    specs = (
        (DPT_HYBRID, _dpt_hybrid_config, _midas_preprocessor),
        (DPT_LARGE, _dpt_large_config, _midas_preprocessor),
        (DA_V2_SMALL, _depth_anything_config, _depth_anything_preprocessor),
        (DA_V2_BASE, _depth_anything_config, _depth_anything_preprocessor),
        (DA_V2_LARGE, _depth_anything_config, _depth_anything_preprocessor),
    )
    for i, (name, config, preprocessor) in enumerate(specs):
        _write(Path(model_dir) / name, config(), preprocessor(), seed * 1000 + i)
    _write_sam2(Path(model_dir) / SAM2_TINY, seed * 1000 + len(specs))
    return [*(name for name, _, _ in specs), SAM2_TINY]

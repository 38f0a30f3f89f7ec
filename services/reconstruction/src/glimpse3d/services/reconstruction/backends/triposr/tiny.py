"""A tiny random TripoSR in the published on-disk layout, for tests and benchmarks.

``write_tiny`` writes ``<model_dir>/reconstruction/triposr/config.yaml`` (the published file's
structure, its ``${tokenizer.num_channels}`` interpolation included, with tiny sizes: a 2-layer ViT
of width 32 given inline as ``image_tokenizer.vit_config``, 4 x 4 planes of 32 channels, a 2-block
backbone, 8 triplane channels, a 2-layer decoder, 32 px conditioning) and ``model.ckpt`` (a plain
``torch.save`` of the state dict under the published key names). Weights are seeded; the density
output's bias is set so that, for a grey input, half of the cube is denser than the default
threshold, so the conversion has cells to keep and cells to drop. The outputs mean nothing, but
every loading and inference path of the backend runs on them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import torch

from glimpse3d.services.reconstruction.backends.triposr.checkpoint import published_state_dict
from glimpse3d.services.reconstruction.backends.triposr.convert import cell_centers
from glimpse3d.services.reconstruction.backends.triposr.model import PUBLISHED_CLASSES, TripoSRModel, parse_config
from glimpse3d.services.reconstruction.backends.triposr.source import CONFIG_FILE, NAME, WEIGHTS_FILE

TINY_VIT = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "image_size": 16, "patch_size": 8, "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
    "qkv_bias": True, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
}
TINY_DENSITY_THRESHOLD = 25.0


def tiny_config_yaml() -> str:
    """The tiny model's config.yaml text."""
    import yaml

    c = PUBLISHED_CLASSES
    return f"""cond_image_size: 32

image_tokenizer_cls: {c["image_tokenizer_cls"]}
image_tokenizer:
  pretrained_model_name_or_path: "tiny-vit"
  vit_config: {yaml.safe_dump(TINY_VIT, default_flow_style=True, width=1000).strip()}

tokenizer_cls: {c["tokenizer_cls"]}
tokenizer:
  plane_size: 4
  num_channels: 32

backbone_cls: {c["backbone_cls"]}
backbone:
  in_channels: ${{tokenizer.num_channels}}
  num_attention_heads: 2
  attention_head_dim: 16
  num_layers: 2
  cross_attention_dim: 32

post_processor_cls: {c["post_processor_cls"]}
post_processor:
  in_channels: 32
  out_channels: 8

decoder_cls: {c["decoder_cls"]}
decoder:
  in_channels: 24 # 3 * 8
  n_neurons: 16
  n_hidden_layers: 2
  activation: silu

renderer_cls: {c["renderer_cls"]}
renderer:
  radius: 0.87
  feature_reduction: concat
  density_activation: exp
  density_bias: -1.0
  num_samples_per_ray: 128
"""


def _calibrate_density(model: TripoSRModel) -> None:
    """Set the density output's bias so that, for a grey input, the median density over the cube is
    the default threshold (about half the cube occupied)."""
    with torch.no_grad():
        last = cast(torch.nn.Linear, model.decoder.layers[-1])  # NeRFMLP's output layer
        last.weight[0].mul_(0.5)
        last.bias[0] = 0.0
        size = model.config.cond_image_size
        triplane = model(torch.full((1, 3, size, size), 0.5))[0]
        radius = model.config.renderer.radius
        points = cell_centers(16, radius, torch.zeros(3))
        density, _ = model.query(triplane, points)  # exp(raw - 1) with a zero bias
        raw = torch.log(density.clamp(min=1e-30)) + 1.0
        last.bias[0] = 1.0 + math.log(TINY_DENSITY_THRESHOLD) - float(raw.median())


def write_tiny(model_dir: Path, seed: int = 0) -> list[str]:
    """Write the tiny ``reconstruction/triposr`` under ``model_dir``; returns its model name."""
    import yaml

    root = Path(model_dir) / NAME
    root.mkdir(parents=True, exist_ok=True)
    text = tiny_config_yaml()
    torch.manual_seed(seed)
    model = TripoSRModel(parse_config(yaml.safe_load(text)))
    _calibrate_density(model.eval())
    (root / CONFIG_FILE).write_text(text, encoding="utf-8")
    torch.save(published_state_dict(model), root / WEIGHTS_FILE)
    return [NAME]

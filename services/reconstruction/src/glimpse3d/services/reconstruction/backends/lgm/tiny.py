"""A tiny random LGM in the production on-disk layout (tests and benchmarks only).

Same file (``reconstruction/lgm/model_fp16_fixrot.safetensors``), format (fp16 safetensors state
dict) and structure (six encoder levels with attention in the last three, a mid block, five decoder
levels with attention in the first three, the final 1x1 conv; the same 376 keys) as the published
model, at 64 px input with 8-40 channels: 0.85M parameters, 32 x 32 Gaussians per view, a forward
pass in well under a second on a CPU. The production file has no config, so this one declares its architecture
in the safetensors header metadata (:data:`.checkpoint.CONFIG_METADATA_KEY`), which the loader
reads; the same loader takes a file without it as the published ``big`` model.

The weights are seeded random; the final conv's bias is shifted so that the random Gaussians are
small (scale ~0.01 of LGM's cube) and mostly opaque, which keeps rendering them cheap.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from glimpse3d.services.reconstruction.backends.lgm.checkpoint import CONFIG_METADATA_KEY
from glimpse3d.services.reconstruction.backends.lgm.source import CHECKPOINT_FILE, MODEL_NAME
from glimpse3d.services.reconstruction.backends.lgm.unet import LGMConfig, LGMNet

TINY = LGMConfig(
    input_size=64,
    down_channels=(8, 16, 24, 32, 40, 40),  # widths change where the big model's do: the same key set
    up_channels=(40, 40, 32, 24, 16),
    attention_heads=2,
    norm_groups=8,
)
_SCALE_BIAS = -2.0  # 0.1 * softplus(-2) = 0.013
_OPACITY_BIAS = 2.0  # sigmoid(2) = 0.88


def write_tiny(model_dir: Path, seed: int = 0) -> list[str]:
    """Write the tiny model under ``model_dir``; returns ``["reconstruction/lgm"]``."""
    torch.manual_seed(seed)
    net = LGMNet(TINY)
    assert net.conv.bias is not None  # a Conv2d with the default bias=True
    with torch.no_grad():
        net.conv.bias[3] += _OPACITY_BIAS
        net.conv.bias[4:7] += _SCALE_BIAS
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    out = Path(model_dir) / MODEL_NAME
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / CHECKPOINT_FILE), metadata={CONFIG_METADATA_KEY: TINY.to_json()})
    return [MODEL_NAME]

"""Production weights of the depth service's learned models, as ``make models`` fetches them.

Depth (``DEPTH_MODELS``, the ``dpt`` backend's ``model`` option): transformers folders in their
published layout (``config.json``, ``preprocessor_config.json``, ``model.safetensors``), loaded with
``AutoModelForDepthEstimation``. ``depth/dpt-hybrid-midas`` is the default; the Depth Anything V2
``-base`` / ``-large`` weights are CC-BY-NC-4.0 (non-commercial), so opt-in and never the default.

Matting (``MATTING_MODELS``, the ``matting`` option of ``silhouette`` and ``dpt``): SAM 2.1
Hiera-Tiny (Apache-2.0) in its transformers port, run by :mod:`glimpse3d.services.depth.matting`.
Chosen because it takes point and box prompts (the user's keep / remove clicks correct it) and
loads like the depth models; only its three files below are fetched (the published
``processor_config.json`` names a video processor and is not used).

This module does not import torch or transformers.
"""

from __future__ import annotations

from glimpse3d.core.models import ModelSource

DPT_HYBRID = "depth/dpt-hybrid-midas"
DPT_LARGE = "depth/dpt-large"
DA_V2_SMALL = "depth/depth-anything-v2-small"
DA_V2_BASE = "depth/depth-anything-v2-base"
DA_V2_LARGE = "depth/depth-anything-v2-large"

CONFIG_FILES: tuple[str, ...] = ("config.json", "preprocessor_config.json")
WEIGHTS_FILE = "model.safetensors"
FILES: tuple[str, ...] = (*CONFIG_FILES, WEIGHTS_FILE)
USED_BY = ("depth/dpt",)

SAM2_TINY = "matting/sam2.1-hiera-tiny"
MATTING_FILES: tuple[str, ...] = ("config.json", "preprocessor_config.json", "model.safetensors")
MATTING_USED_BY = ("depth/silhouette", "depth/dpt")

DEPTH_MODELS: tuple[ModelSource, ...] = (
    ModelSource(
        name=DPT_HYBRID,
        repo_id="Intel/dpt-hybrid-midas",
        revision="main",
        files=FILES,
        licence="Apache-2.0",
        gpu_memory="~0.25 GB fp16 weights (123M parameters, MiDaS v3.0 README); no published inference figure",
        used_by=USED_BY,
        notes="MiDaS v3.0 DPT-Hybrid; DPTForDepthEstimation with is_hybrid=True (BiT backbone); "
        "384 x 384 input; relative inverse depth",
    ),
    ModelSource(
        name=DPT_LARGE,
        repo_id="Intel/dpt-large",
        revision="main",
        files=FILES,
        licence="Apache-2.0",
        gpu_memory="~0.69 GB fp16 weights (344M parameters, MiDaS v3.0 README); no published inference figure",
        used_by=USED_BY,
        notes="MiDaS v3.0 DPT-Large; DPTForDepthEstimation (ViT-L/16); 384 x 384 input; relative inverse depth",
    ),
    ModelSource(
        name=DA_V2_SMALL,
        repo_id="depth-anything/Depth-Anything-V2-Small-hf",
        revision="main",
        files=FILES,
        licence="Apache-2.0",
        gpu_memory="~0.05 GB fp16 weights (24.8M parameters, Depth Anything V2 README); "
        "no published inference figure",
        used_by=USED_BY,
        notes="DepthAnythingForDepthEstimation (DINOv2 ViT-S/14); aspect kept, sides multiples of 14 "
        "around 518 px; relative inverse depth",
    ),
    ModelSource(
        name=DA_V2_BASE,
        repo_id="depth-anything/Depth-Anything-V2-Base-hf",
        revision="main",
        files=FILES,
        licence="CC-BY-NC-4.0 (non-commercial use only)",
        gpu_memory="~0.2 GB fp16 weights (97.5M parameters, Depth Anything V2 README); "
        "no published inference figure",
        used_by=USED_BY,
        notes="DINOv2 ViT-B/14; non-commercial licence: check before deploying",
        opt_in=True,  # make models fetches it only when named or with --all
    ),
    ModelSource(
        name=DA_V2_LARGE,
        repo_id="depth-anything/Depth-Anything-V2-Large-hf",
        revision="main",
        files=FILES,
        licence="CC-BY-NC-4.0 (non-commercial use only)",
        gpu_memory="~0.67 GB fp16 weights (335.3M parameters, Depth Anything V2 README); "
        "no published inference figure",
        used_by=USED_BY,
        notes="DINOv2 ViT-L/14; non-commercial licence: check before deploying",
        opt_in=True,  # make models fetches it only when named or with --all
    ),
)

MATTING_MODELS: tuple[ModelSource, ...] = (
    ModelSource(
        name=SAM2_TINY,
        repo_id="facebook/sam2.1-hiera-tiny",
        revision="main",
        files=MATTING_FILES,
        licence="Apache-2.0",
        gpu_memory="~0.16 GB float32 weights (38.9M parameters, SAM 2 README); no published inference figure",
        used_by=MATTING_USED_BY,
        notes="SAM 2.1 Hiera-Tiny; Sam2Model + Sam2ImageProcessor (1024 x 1024 input); point and box prompts",
    ),
)

MODELS: tuple[ModelSource, ...] = (*DEPTH_MODELS, *MATTING_MODELS)  # what ``make models`` collects
MODEL_NAMES: tuple[str, ...] = tuple(m.name for m in DEPTH_MODELS)  # the ``dpt`` backend's depth models
MATTING_NAMES: tuple[str, ...] = tuple(m.name for m in MATTING_MODELS)

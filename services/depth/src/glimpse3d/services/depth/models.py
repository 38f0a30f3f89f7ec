"""Production weights of the depth service's learned backends, as ``make models`` fetches them.

Depth (``DEPTH_MODELS``, the ``dpt`` backend's ``model`` option)

Every model is a transformers folder in its published layout: ``config.json``,
``preprocessor_config.json`` (a ``DPTImageProcessor``) and ``model.safetensors`` (float32). The
backend loads it with ``AutoModelForDepthEstimation`` / ``AutoImageProcessor`` (local files only),
which picks ``DPTForDepthEstimation`` or ``DepthAnythingForDepthEstimation`` from the config.

- ``depth/dpt-hybrid-midas``: MiDaS v3.0 DPT-Hybrid (ViT-B/16 on a ResNet-50 BiT stem, 384 x 384);
  the default: the best quality per second of the MiDaS v3.0 pair.
- ``depth/dpt-large``: MiDaS v3.0 DPT-Large (ViT-L/16, 384 x 384).
- ``depth/depth-anything-v2-small``: Depth Anything V2 Small (DINOv2 ViT-S/14, 518 px short side).
- ``depth/depth-anything-v2-base`` / ``-large``: the bigger Depth Anything V2 models. Their weights
  are published under CC-BY-NC-4.0: non-commercial use only, so they are never the default.

GPU memory: none of the publishers states an inference-memory figure. The figures below are the
float16 weights from the published parameter counts (MiDaS README table for v3.0, Depth Anything V2
README for V2); activations for one 384 px / 518 px image add well under 1 GB.

Matting (``MATTING_MODELS``, the ``matting`` option of the ``silhouette`` and ``dpt`` backends)

``matting/sam2.1-hiera-tiny``: SAM 2.1 Hiera-Tiny (Meta; Apache-2.0; 38.9M parameters) in its
transformers port (``Sam2Model``, ``Sam2ImageProcessor``), run by
:mod:`glimpse3d.services.depth.matting`. Chosen over the alternatives because:

- it is promptable: SAM 2 takes point and box prompts, so the user's keep / remove clicks
  (``matte_points``) become its positive / negative point prompts, and the weight-free matte's box
  and inner point steer it to the object. BiRefNet, U2-Net and IS-Net segment the salient object
  from the image alone: a wrong matte cannot be corrected by clicking;
- it loads like the depth models: a first-class transformers class, local files only. BiRefNet
  (MIT) loads only with ``trust_remote_code``, that is by running Python code from its model
  repository; U2-Net / IS-Net (Apache-2.0) come through rembg as ONNX files: another runtime, and
  no prompts;
- Apache-2.0 weights, and the smallest SAM 2.1 checkpoint (0.16 GB in float32).

The repository's ``processor_config.json`` names a video processor; the matting code builds the
image processor from ``preprocessor_config.json`` instead, so only the three files below are fetched.

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

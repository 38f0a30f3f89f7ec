"""Weights the research harness's learned metrics read (torch-free; ``make models`` fetches them).

- ``lpips/vgg16-tv-in1k``: the VGG-16 backbone of LPIPS-VGG, torchvision's ImageNet weights as
  timm republishes them in safetensors (the ``features`` layers are torchvision's, key for key). The
  five LPIPS linear heads are small and ship inside the ``lpips`` wheel (BSD-2-Clause), so this one
  file is all LPIPS needs. LPIPS-VGG rather than LPIPS-Alex because SF3D and SPAR3D report it.
- CLIP similarity reads the backprojection service's ``clip/clip-vit-base-patch32``, which
  ``make models`` already fetches for the MVCRM drift check.

Registered through the ``glimpse3d.models`` entry point group (research/pyproject.toml), which
:func:`glimpse3d.core.modelfetch.collect_models` reads beside the services' ``models`` modules.
"""

from __future__ import annotations

from glimpse3d.core.models import ModelSource

LPIPS_VGG = "lpips/vgg16-tv-in1k"

MODELS: tuple[ModelSource, ...] = (
    ModelSource(
        name=LPIPS_VGG,
        repo_id="timm/vgg16.tv_in1k",
        revision="main",
        files=("config.json", "model.safetensors"),
        licence="BSD-3-Clause (torchvision weights, republished by timm)",
        gpu_memory="no published figure; ~0.03 GB of fp32 convolution weights are used (553 MB file, 138 M "
                   "parameters, the classifier is not loaded)",
        used_by=("research/lpips",),
        notes="LPIPS-VGG backbone for the research harness's perceptual metric; the linear heads ship in the "
              "lpips wheel",
    ),
)

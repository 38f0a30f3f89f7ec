"""Production weights of the ``triposr`` reconstruction backend, as ``make models`` fetches them.

``reconstruction/triposr`` keeps the published layout of the ``stabilityai/TripoSR`` repository:

- ``config.yaml``: the model hyper-parameters (image tokenizer, triplane tokenizer, transformer
  backbone, upsampler, NeRF decoder and renderer sections; one ``${...}`` interpolation);
- ``model.ckpt``: a plain ``torch.save`` of the model's state dict (an ``OrderedDict`` of 549 float32
  tensors, about 419 M parameters, 1.68 GB), its image-encoder keys in the transformers 4.x ViT
  naming (``encoder.layer.N.attention.attention.query``...). The package's ``manifest.json`` lists
  every key and shape the backend expects (:mod:`.checkpoint`).

The DINO ViT-B/16 image encoder's weights are inside ``model.ckpt``; only its configuration comes
from ``facebook/dino-vitb16``, and the backend carries those values in code, so nothing else is
downloaded.

This module does not import torch.
"""

from __future__ import annotations

from glimpse3d.core.models import ModelSource

NAME = "reconstruction/triposr"
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.ckpt"
REQUIRED_FILES: tuple[str, ...] = (CONFIG_FILE, WEIGHTS_FILE)

SOURCES: tuple[ModelSource, ...] = (
    ModelSource(
        name=NAME,
        repo_id="stabilityai/TripoSR",
        revision="main",
        files=REQUIRED_FILES,
        licence="MIT",
        gpu_memory="about 6 GB of GPU memory for one image with the reference defaults (TripoSR README)",
        used_by=("reconstruction/triposr",),
        notes="feed-forward image -> triplane NeRF (DINO ViT-B/16 + 16-layer transformer); "
        "the backend converts the triplane to Gaussians",
    ),
)

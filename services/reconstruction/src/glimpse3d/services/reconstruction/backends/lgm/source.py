"""Production weights of the ``lgm`` reconstruction backend (torch-free; read by ``make models``).

The checkpoint is a single fp16 safetensors file holding the state dict of the published ``big``
model (no config inside: the architecture lives in :mod:`.unet`). ``model_fp16_fixrot`` is the
release fine-tuned with the corrected rotation normalisation (the first ``model_fp16`` was trained
with quaternions normalised over the wrong axis). The revision is the Hub commit that uploaded it.
"""

from __future__ import annotations

from glimpse3d.core.models import ModelSource

MODEL_NAME = "reconstruction/lgm"
CHECKPOINT_FILE = "model_fp16_fixrot.safetensors"
# Published with the file (Hugging Face LFS pointer of ashawkey/LGM, commit 55b933d).
CHECKPOINT_SIZE = 830_126_160
CHECKPOINT_SHA256 = "744d6324656342c64f871308e73db97f0eb51858d94329b30090e986a6d050ab"

SOURCES: tuple[ModelSource, ...] = (
    ModelSource(
        name=MODEL_NAME,
        repo_id="ashawkey/LGM",
        revision="55b933d1437c18447987861eb838b87eec692287",
        files=(CHECKPOINT_FILE,),
        licence="MIT (model card of ashawkey/LGM; code: MIT, 3DTopia/LGM)",
        gpu_memory=(
            "about 10 GB for the authors' whole text/image-to-3D demo (ImageDream + MVDream + LGM, fp16), "
            "per the 3DTopia/LGM README; LGM alone is 415M parameters, 0.83 GB of fp16 weights"
        ),
        used_by=("reconstruction/lgm",),
        notes=f"{CHECKPOINT_SIZE} bytes, sha256 {CHECKPOINT_SHA256}",
    ),
)

"""Regenerates assets/sample.png, the bundled sample photo of `make demo`: the project's synthetic
textured object (glimpse3d.core.synthetic) rendered by its own rasterizer over a light grey
background from a little further than the pipeline's default camera (so the
object has a margin), RGB only, so the depth service's matting has real work to do."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.synthetic import render_image, textured_object

if __name__ == "__main__":
    img = render_image(
        textured_object(seed=0), orbit_camera(20.0, 12.0, 3.6, width=256, height=256), background=(0.92, 0.92, 0.92)
    )
    Image.fromarray(img[..., :3]).save(Path(__file__).with_name("sample.png"), optimize=True)

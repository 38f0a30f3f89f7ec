"""Export formats compared: file size against the lossless ``.ply`` and the render PSNR of the splat
each format reads back, against the original, on the harness object.

The object is :func:`glimpse3d.core.synthetic.textured_object` (the demo photo's checker ellipsoid,
6000 Gaussians) given SH degree 3: bands 1..3 drawn from a normal distribution with the spread of
trained 3DGS scenes (standard deviation 0.05), so the view-dependent bands are exercised too. Each
format's splat is rendered with the project's rasterizer from six orbit views (256 x 256, white
background, the sample photo's distance and field of view) and compared with the original's render
of the same view (PSNR over 8-bit RGB, mean over the views).

``python -m bench.bench_formats`` prints the table (docs/formats.md quotes it).
"""

from __future__ import annotations

import time

import numpy as np

from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.formats import formats
from glimpse3d.core.splat import Splat
from glimpse3d.core.synthetic import DEFAULT_DISTANCE, DEFAULT_FOV_Y_DEG, render_image, textured_object

VIEWS = ((0.0, 0.0), (60.0, 15.0), (120.0, -10.0), (180.0, 0.0), (240.0, 30.0), (300.0, -20.0))
SH_REST_STD = 0.05


def harness_splat(seed: int = 0) -> Splat:
    base = textured_object(seed)
    rng = np.random.default_rng(seed)
    sh = np.concatenate([base.sh, rng.normal(0.0, SH_REST_STD, (base.num_gaussians, 15, 3))], axis=1)
    return Splat(base.means, base.quats, base.log_scales, base.opacity_logits, sh.astype(np.float32))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def run() -> list[dict]:
    """Per splat format: size against .ply and the render PSNR of the decoded splat against the original."""
    splat = harness_splat()
    cameras = [orbit_camera(az, el, DEFAULT_DISTANCE, width=256, height=256, fov_y_deg=DEFAULT_FOV_Y_DEG)
               for az, el in VIEWS]
    reference = [render_image(splat, cam) for cam in cameras]
    ply_size = len(formats()[0].writer(splat))
    what = f"{splat.num_gaussians} Gaussians, SH degree {splat.sh_degree}"
    rows = []
    for fmt in formats():
        if fmt.export_only:  # mesh exports have no splat to read back
            continue
        start = time.perf_counter()
        data = fmt.writer(splat)
        written = time.perf_counter()
        back = fmt.reader(data)
        read = time.perf_counter()
        scores = [psnr(render_image(back, cam), ref) for cam, ref in zip(cameras, reference, strict=True)]
        rows += [
            {"name": f".{fmt.name} size / .ply size", "value": len(data) / ply_size, "unit": "x",
             "note": f"{len(data)} of {ply_size} bytes; {what}"},
            {"name": f".{fmt.name} decoded render PSNR", "value": float(np.mean(scores)), "unit": "dB",
             "note": f"mean of {len(cameras)} views at 256 px; "
                     f"write {written - start:.2f} s, read {read - written:.2f} s"},
        ]
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:<36} {row['value']:10.4g} {row['unit']:<3} {row['note']}")

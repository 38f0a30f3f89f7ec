"""Enhancement rounds against ground truth: does each click make the held-out views better?

One round does what the gateway's round does, in process: render the current splat at the round's
camera, make the "enhanced" view, estimate its depth, and fuse it through MVCRM with the photo as
reference. The enhanced view comes from one of two feeds:
- ``oracle``: the ground-truth render at the round's camera, which bounds what a round can achieve;
- ``classical``: the configured diffusion backend applied to the render, as the product does.
After every version the splat is scored on the 16 held-out views.
"""

from __future__ import annotations

import numpy as np

from glimpse3d.core import convert
from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.research.coarse import Stages, coarse_splat, heldout_psnr, render_heldout
from glimpse3d.research.groundtruth import GroundTruth, Raycaster
from glimpse3d.services.backprojection.backends import REGISTRY as BACKPROJECTION
from glimpse3d.services.diffusion.backends import REGISTRY as DIFFUSION

# Round cameras: elevation 15, off both held-out rings (0 and 30), the far side first.
ROUND_AZIMUTHS = (180.0, 90.0, 270.0, 45.0, 315.0, 135.0, 225.0)
ROUND_ELEVATION = 15.0
FEEDS = ("oracle", "classical")


def round_cameras(n: int, resolution: int) -> list[Camera]:
    return [orbit_camera(ROUND_AZIMUTHS[k % len(ROUND_AZIMUTHS)], ROUND_ELEVATION, convert.DEFAULT_ORBIT_RADIUS,
                         width=resolution, height=resolution, fov_y_deg=convert.DEFAULT_FOV_Y_DEG) for k in range(n)]


def run_rounds(gt: GroundTruth, feed: str, rounds: int, seed: int = 0) -> list[dict[str, float]]:
    """Scores of versions 1 (the coarse splat) to ``rounds + 1``."""
    if feed not in FEEDS:
        raise ValueError(f"feed must be one of {FEEDS}, got {feed!r}")
    stages = Stages.load()
    splat, _ = coarse_splat(gt, stages, seed=seed)
    recon, depth = stages.reconstruction, stages.depth
    diffusion, fuse = DIFFUSION.create("classical"), BACKPROJECTION.create("mvcrm")
    diffusion.load()
    fuse.load()
    caster = Raycaster(gt.obj) if feed == "oracle" else None
    photo = gt.input.rgb_uint8
    confidence = None
    scores = [heldout_psnr(render_heldout(stages, splat, gt), gt)]
    for k, cam in enumerate(round_cameras(rounds, gt.input.camera.width)):
        rendered = recon.render(splat, [cam])[0]
        if caster is not None:
            view = caster.render(cam).rgb_uint8
        else:
            view = diffusion.enhance(np.round(np.clip(rendered.rgb, 0, 1) * 255).astype(np.uint8),
                                     depth=rendered.depth, alpha=rendered.alpha, reference=photo, prompt="",
                                     strength=0.5, steps=30, guidance=7.5, seed=seed + k)
        view_depth = depth.estimate(view, cam).depth
        result = fuse.refine(splat, view, cam, view_depth, confidence, reference=photo)
        splat, confidence = result.splat, result.confidence
        score = heldout_psnr(render_heldout(stages, splat, gt), gt)
        score["accepted_fraction"] = result.report.accepted_fraction
        scores.append(score)
    return scores

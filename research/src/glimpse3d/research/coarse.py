"""The coarse splat against ground truth: the product's first version, scored on held-out views.

The backends are called in process through their services' registries, as the gateway's job would
call them over gRPC: depth (matte + depth) of the input view, then reconstruction.
"""

from __future__ import annotations

import numpy as np

from glimpse3d.research import metrics
from glimpse3d.research.groundtruth import BACKGROUND, GroundTruth
from glimpse3d.services.depth.backends import REGISTRY as DEPTH
from glimpse3d.services.reconstruction.backends import REGISTRY as RECONSTRUCTION


def coarse_splat(gt: GroundTruth, depth_backend: str = "silhouette", reconstruction_backend: str = "lift",
                 seed: int = 0):
    """(splat, estimated mask [H, W]) from the input view's 8-bit RGB, as a user's photo would arrive."""
    depth = DEPTH.create(depth_backend)
    depth.load()
    recon = RECONSTRUCTION.create(reconstruction_backend)
    recon.load()
    photo = gt.input.rgb_uint8
    est = depth.estimate(photo, gt.input.camera)
    result = recon.reconstruct(photo, est.depth, est.mask, gt.input.camera, seed=seed)
    return result.splat, est.mask


def evaluate_coarse(gt: GroundTruth, surface: np.ndarray, depth_backend: str = "silhouette",
                    reconstruction_backend: str = "lift") -> tuple[dict[str, float], np.ndarray]:
    """Scores of the coarse splat (held-out PSNR/SSIM full and in the mask, Chamfer, F-score@0.1,
    matte IoU) and an image grid [2 H, 9 W, 3] (top: ground truth, bottom: the splat)."""
    splat, matte = coarse_splat(gt, depth_backend, reconstruction_backend)
    recon = RECONSTRUCTION.create(reconstruction_backend)
    recon.load()
    renders = recon.render(splat, [v.camera for v in gt.heldout], background=BACKGROUND)
    psnr = [metrics.psnr(r.rgb, v.rgb) for r, v in zip(renders, gt.heldout, strict=True)]
    psnr_in = [metrics.psnr(r.rgb, v.rgb, v.mask) for r, v in zip(renders, gt.heldout, strict=True)]
    ssim = [metrics.ssim(r.rgb, v.rgb) for r, v in zip(renders, gt.heldout, strict=True)]
    points = np.concatenate([metrics.depth_points(v.camera, r.depth, r.alpha)
                             for r, v in zip(renders, gt.heldout, strict=True)])
    shape = metrics.chamfer_fscore(points, surface) if len(points) else metrics.ShapeScore(np.inf, 0.0, 0.0, 0.0)
    truth, est = gt.input.mask > 0.5, matte > 0.5
    iou = float((truth & est).sum() / max(1, (truth | est).sum()))
    score = {"psnr_db": float(np.mean(psnr)), "psnr_mask_db": float(np.mean(psnr_in)),
             "ssim": float(np.mean(ssim)), "chamfer": shape.chamfer, "fscore_0.1": shape.fscore,
             "matte_iou": iou, "num_gaussians": float(splat.num_gaussians)}
    cols = list(range(0, 16, 2))
    top = np.concatenate([gt.input.rgb_uint8, *(gt.heldout[k].rgb_uint8 for k in cols)], axis=1)
    ours = [recon.render(splat, [gt.input.camera], background=BACKGROUND)[0], *(renders[k] for k in cols)]
    bottom = np.concatenate([np.round(np.clip(r.rgb, 0, 1) * 255).astype(np.uint8) for r in ours], axis=1)
    return score, np.concatenate([top, bottom], axis=0)

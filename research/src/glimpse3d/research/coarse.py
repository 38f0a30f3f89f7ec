"""The coarse splat against ground truth: the product's first version, scored on held-out views.

The backends are called in process through their services' registries, as the gateway's job would
call them over gRPC: depth (matte + depth) of the input view, then reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glimpse3d.core.splat import Splat
from glimpse3d.research import metrics
from glimpse3d.research.groundtruth import BACKGROUND, GroundTruth
from glimpse3d.services.depth.api import REGISTRY as DEPTH
from glimpse3d.services.depth.api import DepthBackend
from glimpse3d.services.reconstruction.api import REGISTRY as RECONSTRUCTION
from glimpse3d.services.reconstruction.api import ReconstructionBackend, RenderedImage


@dataclass(frozen=True, eq=False)
class Stages:
    """The loaded depth and reconstruction backends a job's first version needs."""

    depth: DepthBackend
    reconstruction: ReconstructionBackend

    @classmethod
    def load(cls, depth_backend: str = "silhouette", reconstruction_backend: str = "lift") -> Stages:
        stages = cls(DEPTH.create(depth_backend), RECONSTRUCTION.create(reconstruction_backend))
        stages.depth.load()
        stages.reconstruction.load()
        return stages


def coarse_splat(gt: GroundTruth, stages: Stages, seed: int = 0) -> tuple[Splat, np.ndarray]:
    """(splat, estimated mask [H, W]) from the input view's 8-bit RGB, as a user's photo would arrive."""
    photo = gt.input.rgb_uint8
    est = stages.depth.estimate(photo, gt.input.camera)
    result = stages.reconstruction.reconstruct(photo, est.depth, est.mask, gt.input.camera, seed=seed)
    return result.splat, est.mask


def render_heldout(stages: Stages, splat: Splat, gt: GroundTruth) -> list[RenderedImage]:
    return stages.reconstruction.render(splat, [v.camera for v in gt.heldout], background=BACKGROUND)


def heldout_psnr(renders: list[RenderedImage], gt: GroundTruth) -> dict[str, float]:
    """Mean held-out PSNR in dB, inside the mask and over the full image."""
    pairs = list(zip(renders, gt.heldout, strict=True))
    return {"psnr_mask_db": float(np.mean([metrics.psnr(r.rgb, v.rgb, v.mask) for r, v in pairs])),
            "psnr_db": float(np.mean([metrics.psnr(r.rgb, v.rgb) for r, v in pairs]))}


def evaluate_coarse(gt: GroundTruth, surface: np.ndarray, stages: Stages) -> tuple[dict[str, float], np.ndarray]:
    """Scores of the coarse splat (held-out PSNR/SSIM full and in the mask, Chamfer, F-score@0.1,
    matte IoU) and an image grid [2 H, 9 W, 3] (top: ground truth, bottom: the splat)."""
    splat, matte = coarse_splat(gt, stages)
    renders = render_heldout(stages, splat, gt)
    ssim = [metrics.ssim(r.rgb, v.rgb) for r, v in zip(renders, gt.heldout, strict=True)]
    points = np.concatenate([metrics.depth_points(v.camera, r.depth, r.alpha)
                             for r, v in zip(renders, gt.heldout, strict=True)])
    shape = metrics.chamfer_fscore(points, surface) if len(points) else metrics.ShapeScore(np.inf, 0.0, 0.0, 0.0)
    truth, est = gt.input.mask > 0.5, matte > 0.5
    iou = float((truth & est).sum() / max(1, (truth | est).sum()))
    score = {**heldout_psnr(renders, gt), "ssim": float(np.mean(ssim)), "chamfer": shape.chamfer,
             "fscore_0.1": shape.fscore, "matte_iou": iou, "num_gaussians": float(splat.num_gaussians)}
    cols = list(range(0, 16, 2))
    top = np.concatenate([gt.input.rgb_uint8, *(gt.heldout[k].rgb_uint8 for k in cols)], axis=1)
    ours = [stages.reconstruction.render(splat, [gt.input.camera], background=BACKGROUND)[0],
            *(renders[k] for k in cols)]
    bottom = np.concatenate([np.round(np.clip(r.rgb, 0, 1) * 255).astype(np.uint8) for r in ours], axis=1)
    return score, np.concatenate([top, bottom], axis=0)

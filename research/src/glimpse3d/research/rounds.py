"""Enhancement rounds against ground truth: does each click make the held-out views better?

One round does what the gateway's round does, in process: render the current splat at the round's
camera, make the "enhanced" view, estimate its depth with the depth backend, and fuse it with the
photo as reference. The enhanced view comes from a feed:

- ``oracle``: the ground-truth render at the round's camera, which bounds what a round can achieve;
- a diffusion backend's name (``classical``, ``sdxl``...): that backend applied to the render with
  the product's default strength, steps and guidance, as the product does;
- adversarial, geometry-inconsistent views (the ablation study): ``shifted`` (the oracle view moved
  by an eighth of the frame), ``rotated`` (the oracle view turned 25 degrees in the image plane) and
  ``other`` (the ground truth of another object at the same camera).

The fusion is MVCRM (optionally with components switched off, :class:`Ablation`) or naive fusion.
Like the gateway's round, MVCRM fuses the view together with the photo (inside its estimated matte)
as a trusted view, and a round that costs the photo more than ``MAX_ROUND_LOSS_DB`` of input-view
PSNR is fused again with the photo weighted ``PHOTO_RETRY_WEIGHT``, then rejected if it still does
(the version stays; its score row says ``rejected``). The ablation study switches each of the two
off. After every version the splat is scored on the 16 held-out views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from glimpse3d.core import convert
from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.feedback import (
    PHOTO_RETRY_WEIGHT,
    background_colour,
    feedback_cameras,
    input_view_figures,
    photo_figures,
    round_rejection,
)
from glimpse3d.core.splat import Splat
from glimpse3d.research import metrics
from glimpse3d.research.coarse import Stages, coarse_splat, heldout_psnr, render_heldout
from glimpse3d.research.groundtruth import BACKGROUND, GroundTruth, Raycaster
from glimpse3d.research.objects import OBJECT_NAMES, load_object
from glimpse3d.services.backprojection.api import ClipScorer, RefineOptions, TrustedView
from glimpse3d.services.backprojection.mvcrm import FULL_MVCRM, Ablation, naive_fuse, refine
from glimpse3d.services.diffusion.api import REGISTRY as DIFFUSION
from glimpse3d.services.diffusion.api import apply_proto_defaults

# Round cameras: elevation 15, off both held-out rings (0 and 30), the far side first.
ROUND_AZIMUTHS = (180.0, 90.0, 270.0, 45.0, 315.0, 135.0, 225.0)
ROUND_ELEVATION = 15.0
ADVERSARIAL = ("shifted", "rotated", "other")
ROTATION_DEG = 25.0
FEEDS = ("oracle", "classical")  # what run_rounds accepts (the study runner takes any diffusion backend)


def round_cameras(n: int, resolution: int) -> list[Camera]:
    return [orbit_camera(ROUND_AZIMUTHS[k % len(ROUND_AZIMUTHS)], ROUND_ELEVATION, convert.DEFAULT_ORBIT_RADIUS,
                         width=resolution, height=resolution, fov_y_deg=convert.DEFAULT_FOV_Y_DEG)
            for k in range(n)]


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------- feeds

# A feed makes the "enhanced" view of round k at a camera from the current render (uint8 [H, W, 3]).
Feed = Callable[[int, Camera, np.ndarray, object], np.ndarray]


def other_object(name: str) -> str:
    """The adversarial ``other`` feed's object: the next benchmark object after ``name``."""
    return OBJECT_NAMES[(OBJECT_NAMES.index(name) + 1) % len(OBJECT_NAMES)]


def make_feed(kind: str, gt: GroundTruth, seed: int = 0) -> Feed:
    """The feed called ``kind``: oracle, an adversarial kind, or a diffusion backend's name."""
    if kind == "oracle" or kind in ADVERSARIAL:
        caster = Raycaster(load_object(other_object(gt.obj.name)) if kind == "other" else gt.obj)

        def truth(_k: int, cam: Camera, _rendered: np.ndarray, _r: object) -> np.ndarray:
            view = caster.render(cam).rgb_uint8
            if kind == "shifted":
                shift = cam.width // 8
                out = np.full_like(view, 255)
                out[:, shift:] = view[:, :-shift]
                return out
            if kind == "rotated":
                return ndimage.rotate(view, ROTATION_DEG, axes=(1, 0), reshape=False, order=1, mode="constant",
                                      cval=255)
            return view

        return truth
    backend = DIFFUSION.create(kind)  # unknown name: InvalidInput listing the known ones
    backend.load()
    strength, steps, guidance = apply_proto_defaults(0.0, 0, 0.0)
    photo = gt.input.rgb_uint8

    def enhanced(k: int, _cam: Camera, rendered_u8: np.ndarray, rendered: object) -> np.ndarray:
        return backend.enhance(rendered_u8, depth=rendered.depth, alpha=rendered.alpha, reference=photo,  # type: ignore[attr-defined]
                               prompt="", strength=strength, steps=steps, guidance=guidance, seed=seed + k)

    return enhanced


# ---------------------------------------------------------------------------- fusion


@dataclass(frozen=True)
class Fuser:
    """MVCRM with ``ablation`` (``naive`` False) or naive fusion, with the product's default options.

    ``trusted_photo``: MVCRM fuses the view together with the photo (the product does); ``guard``: the
    product's rule against rounds that cost the photo (see the module docstring). Naive fusion has neither.
    """

    name: str
    ablation: Ablation = FULL_MVCRM
    naive: bool = False
    clip: ClipScorer | None = None
    trusted_photo: bool = True
    guard: bool = True

    def __post_init__(self) -> None:
        if self.naive:
            object.__setattr__(self, "trusted_photo", False)
            object.__setattr__(self, "guard", False)

    def __call__(self, splat: Splat, view: np.ndarray, cam: Camera, view_depth: np.ndarray,
                 confidence: np.ndarray | None, photo: np.ndarray, seed: int,
                 trusted: TrustedView | None = None) -> tuple[Splat, np.ndarray | None, float]:
        """(splat, confidence, accepted fraction) after fusing ``view`` (with ``trusted`` when given and
        ``trusted_photo`` is on)."""
        if self.naive:
            steps = RefineOptions().steps
            return naive_fuse(splat, view, cam, steps=steps), confidence, 1.0
        views = (trusted,) if trusted is not None and self.trusted_photo else ()
        result = refine(splat, view, cam, view_depth, confidence, RefineOptions(seed=seed), self.clip, photo,
                        ablation=self.ablation, trusted=views)
        return result.splat, result.confidence, result.report.accepted_fraction


def ablation_fusers(clip: ClipScorer | None) -> list[Fuser]:
    """Full MVCRM, each component switched off (the CLIP check only when a CLIP model is loaded:
    without one, switching it off changes nothing), and naive fusion."""
    fusers = [Fuser("full MVCRM", clip=clip)]
    for component in Ablation().components:
        if component == "clip_check" and clip is None:
            continue
        fusers.append(Fuser(f"no {component.replace('_', ' ')}", Ablation.without(component), clip=clip))
    fusers.append(Fuser("no trusted photo", clip=clip, trusted_photo=False))
    fusers.append(Fuser("no round guard", clip=clip, guard=False))
    fusers.append(Fuser("no trusted photo, no guard", clip=clip, trusted_photo=False, guard=False))
    fusers.append(Fuser("naive fusion", naive=True))
    return fusers


# ---------------------------------------------------------------------------- scoring


@dataclass
class Scorer:
    """Scores a version: held-out PSNR (and, when ``detailed``, SSIM, LPIPS, CLIP and the product's
    photo figures); keeps the held-out renders of ``grid_views`` for the image grids."""

    stages: Stages
    gt: GroundTruth
    matte: np.ndarray | None = None  # the photo's estimated matte (for the photo's background colour)
    detailed: bool = False
    lpips: object | None = None
    clip: object | None = None
    grid_views: tuple[int, ...] = (0, 3, 5, 10)

    def __post_init__(self) -> None:
        self.photo_background = background_colour(self.gt.input.rgb, self.matte)
        self.photo_cameras = feedback_cameras(self.gt.input.camera)

    def input_view_psnr(self, splat: Splat) -> float:
        """The product's input-view PSNR: the splat at the photo's camera against the photo, inside the
        estimated matte (NaN without one)."""
        if self.matte is None:
            return float("nan")
        render = self.stages.reconstruction.render(splat, self.photo_cameras[:1], background=self.photo_background)[0]
        return input_view_figures(self.gt.input.rgb, self.matte, render.rgb)["input_view_psnr_db"]

    def __call__(self, splat: Splat) -> tuple[dict[str, float], list[np.ndarray]]:
        renders = render_heldout(self.stages, splat, self.gt)
        score = heldout_psnr(renders, self.gt)
        pairs = [(r.rgb, v.rgb) for r, v in zip(renders, self.gt.heldout, strict=True)]
        if self.detailed:
            score["ssim"] = float(np.mean([metrics.ssim(a, b) for a, b in pairs]))
            if self.lpips is not None:
                score["lpips"] = self.lpips.mean_distance(pairs)  # type: ignore[attr-defined]
            if self.clip is not None:
                from glimpse3d.research.learned import clip_similarity

                score["clip_to_photo"] = clip_similarity(self.clip, [to_uint8(a) for a, _ in pairs],
                                                         self.gt.input.rgb_uint8)
            photo_renders = self.stages.reconstruction.render(splat, self.photo_cameras,
                                                              background=self.photo_background)
            score.update(photo_figures(self.gt.input.rgb, self.photo_cameras,
                                       [(r.rgb, r.depth, r.alpha) for r in photo_renders]))
        return score, [to_uint8(renders[k].rgb) for k in self.grid_views]


def photo_confidence(gt: GroundTruth, stages: Stages, splat: Splat, seed: int = 0) -> tuple[Splat, np.ndarray]:
    """The first version as the product makes it: the photo fused as a one-step MVCRM round at its own
    camera, which gives what the photo shows its confidence (gateway ``_photo_confidence``)."""
    photo = gt.input.rgb_uint8
    depth = stages.depth.estimate(photo, gt.input.camera).depth
    result = refine(splat, photo, gt.input.camera, depth, None, RefineOptions(seed=seed, steps=1, clip_check=False),
                    reference=photo)
    return result.splat, result.confidence


def run_sequence(gt: GroundTruth, stages: Stages, start: Splat, cameras: Sequence[Camera], feeds: Sequence[Feed],
                 fuser: Fuser, scorer: Scorer, confidence: np.ndarray | None = None, seed: int = 0,
                 first_score: tuple[dict[str, float], list[np.ndarray]] | None = None,
                 ) -> tuple[list[dict[str, float]], list[list[np.ndarray]], Splat, np.ndarray | None]:
    """Rounds at ``cameras`` fed by ``feeds`` (one per round) from ``start``: (scores of every version
    including the start, grid renders of every version, final splat, final confidence)."""
    first = first_score if first_score is not None else scorer(start)
    scores, grids, splat = [dict(first[0])], [first[1]], start
    photo = None if scorer.matte is None else TrustedView(gt.input.rgb_uint8, gt.input.camera, scorer.matte)
    first_db = scorer.input_view_psnr(start) if fuser.guard else float("nan")
    for k, (cam, feed) in enumerate(zip(cameras, feeds, strict=True)):
        rendered = stages.reconstruction.render(splat, [cam])[0]
        view = feed(k, cam, to_uint8(rendered.rgb), rendered)
        view_depth = stages.depth.estimate(view, cam).depth

        args = (splat, view, cam, view_depth, confidence, gt.input.rgb_uint8, seed + k)

        def fuse(weight: float, args=args):
            trusted = None if photo is None else TrustedView(photo.image, photo.camera, photo.mask, weight)
            return fuser(*args, trusted=trusted)

        new_splat, new_conf, accepted = fuse(1.0)
        verdict = {"rejected": 0.0, "photo_weight_raised": 0.0}
        if fuser.guard:
            before = scorer.input_view_psnr(splat)
            if round_rejection(before, scorer.input_view_psnr(new_splat), first_db) is not None:
                if fuser.trusted_photo:  # fused again with the photo weighted more (without it: rejected at once)
                    new_splat, new_conf, accepted = fuse(PHOTO_RETRY_WEIGHT)
                    verdict["photo_weight_raised"] = 1.0
                if round_rejection(before, scorer.input_view_psnr(new_splat), first_db) is not None:
                    new_splat, new_conf, verdict["rejected"] = splat, confidence, 1.0
        splat, confidence = new_splat, new_conf
        score, grid = scorer(splat)
        score.update(verdict)
        score["accepted_fraction"] = accepted
        scores.append(score)
        grids.append(grid)
    return scores, grids, splat, confidence


def run_rounds(gt: GroundTruth, feed: str, rounds: int, seed: int = 0) -> list[dict[str, float]]:
    """Scores of versions 1 (the coarse splat) to ``rounds + 1`` with full MVCRM and the given feed."""
    if feed not in FEEDS:
        raise ValueError(f"feed must be one of {FEEDS}, got {feed!r}")
    stages = Stages.load()
    splat, matte = coarse_splat(gt, stages, seed=seed)
    splat, confidence = photo_confidence(gt, stages, splat, seed)
    make = make_feed(feed, gt, seed)
    scores, _, _, _ = run_sequence(gt, stages, splat, round_cameras(rounds, gt.input.camera.width),
                                   [make] * rounds, Fuser("full MVCRM"), Scorer(stages, gt, matte),
                                   confidence=confidence, seed=seed)
    return scores


__all__ = [
    "ADVERSARIAL",
    "BACKGROUND",
    "Fuser",
    "Scorer",
    "ablation_fusers",
    "make_feed",
    "photo_confidence",
    "round_cameras",
    "run_rounds",
    "run_sequence",
]

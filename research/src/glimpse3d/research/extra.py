"""Extra photos of the same object against ground truth: pose refinement and fusion as a real view.

- :func:`surface_splat`: Gaussians on an object's true surface, coloured as the ground-truth renderer
  shades it: a splat that explains every view, on which pose refinement can be measured apart from
  reconstruction errors.
- :func:`extra_view`: the ground-truth image of an object at an orbit position (an "extra photo").
- :func:`photo_identity`: each object's back photo posed against each object's first version, as the
  gateway poses an extra photo: which photos of the same object are refused, and which photos of
  another object are accepted (the pose's outline check is the product's only identity test).
- :func:`extra_photo_gain`: held-out PSNR inside the mask of the product's first version (coarse splat,
  the photo fused at its own camera) with and without one extra photo, posed from a hint and fused as a
  real view: an MVCRM round with ``options.observed`` (every covered pixel trusted, confidence raised as
  an observation), fused together with the input photo as a trusted view, as the gateway does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import trimesh

from glimpse3d.core import convert
from glimpse3d.core.cameras import Camera, orbit_camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.feedback import background_colour
from glimpse3d.core.splat import SH_C0, Splat
from glimpse3d.research.coarse import Stages, coarse_splat, heldout_psnr, render_heldout
from glimpse3d.research.groundtruth import AMBIENT, LIGHT_DIRECTION, GroundTruth, Raycaster, View
from glimpse3d.research.objects import BenchmarkObject
from glimpse3d.research.rounds import photo_confidence
from glimpse3d.services.backprojection.api import RefineOptions, TrustedView
from glimpse3d.services.backprojection.mvcrm import refine
from glimpse3d.services.backprojection.pose import KnownView, OrbitPose, PoseHint, PoseResult, find_pose

SURFACE_OPACITY = 0.95


def surface_splat(obj: BenchmarkObject, count: int = 16000, seed: int = 0) -> Splat:
    """``count`` flat Gaussians (discs along the surface) uniformly on ``obj``'s surface, shaded as
    :class:`Raycaster` shades it (Lambertian under the fixed light with outward normals, band-0 colour
    only), each about half as wide as the spacing of the samples."""
    mesh = obj.mesh
    sampled = trimesh.sample.sample_surface(mesh, count, seed=seed)  # (points, face indices)
    points, faces = np.asarray(sampled[0], np.float64), np.asarray(sampled[1])
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[faces], points)
    if obj.smooth:
        normals = np.einsum("mk,mkc->mc", bary, mesh.vertex_normals[mesh.faces[faces]])
    else:
        normals = mesh.face_normals[faces]
    normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    albedo = np.clip(obj.albedo(points, faces, bary), 0.0, 1.0)
    rgb = albedo * (AMBIENT + (1 - AMBIENT) * np.clip(normals @ LIGHT_DIRECTION, 0.0, None))[:, None]
    spacing = math.sqrt(float(mesh.area) / count)
    n = len(points)
    facing = np.where(normals[:, 2:3] < 0, -normals, normals)  # a disc has no side: turn +z onto +-n
    quats = np.stack([1.0 + facing[:, 2], -facing[:, 1], facing[:, 0], np.zeros(n)], axis=1)
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    scales = np.log(np.array([0.5, 0.5, 0.05]) * spacing)
    sh = ((rgb - 0.5) / SH_C0)[:, None, :].astype(np.float32)
    return Splat(points.astype(np.float32), quats.astype(np.float32), np.tile(scales, (n, 1)).astype(np.float32),
                 np.full(n, math.log(SURFACE_OPACITY / (1 - SURFACE_OPACITY)), np.float32), sh)


def extra_view(gt: GroundTruth, azimuth_deg: float, elevation_deg: float, obj: BenchmarkObject | None = None) -> View:
    """The ground truth of ``obj`` (default: ``gt``'s object) at an orbit position, the input photo's size."""
    cam = orbit_camera(azimuth_deg, elevation_deg, convert.DEFAULT_ORBIT_RADIUS, width=gt.input.camera.width,
                       height=gt.input.camera.height, fov_y_deg=convert.DEFAULT_FOV_Y_DEG)
    return Raycaster(obj or gt.obj).render(cam)


def fuse_extra_photo(splat: Splat, confidence: np.ndarray | None, photo: np.ndarray, matte: np.ndarray,
                     camera: Camera, stages: Stages, input_photo: TrustedView, seed: int = 0,
                     relift: bool = True, depth: np.ndarray | None = None,
                     photo_cameras: Sequence[Camera] = ()) -> tuple[Splat, np.ndarray]:
    """An extra photo, posed at ``camera``, fused as the gateway fuses it: one MVCRM round with
    ``options.observed`` and ``options.relift`` (the photo's depth from the depth backend), together with
    the input photo and the extra photo itself (inside its matte, full weight) as trusted views;
    ``photo_cameras``: the cameras of earlier extra photos (what they show is not re-lifted). Returns the
    splat and its confidence. ``relift=False``: the round without the re-lift, for comparison; ``depth``:
    the photo's depth in place of the depth backend's (the ground truth's, to measure what a better depth
    would give)."""
    if depth is None:
        depth = stages.depth.estimate(photo, camera).depth
    own = TrustedView(photo, camera, matte)
    result = refine(splat, photo, camera, depth, confidence, RefineOptions(seed=seed, observed=True, relift=relift),
                    background=background_colour(photo, matte), trusted=[input_photo, own],
                    photo_cameras=photo_cameras)
    return result.splat, result.confidence


@dataclass(frozen=True)
class ExtraPhotoScore:
    single_db: float  # held-out PSNR inside the mask, the photo alone
    extra_db: float  # the same with the extra photos fused (all of them)
    pose: PoseResult  # the last photo's
    steps_db: tuple[float, ...] = ()  # held-out PSNR after each extra photo, in order


def extra_photo_gain(gt: GroundTruth, stages: Stages, azimuth_deg: float = 180.0, elevation_deg: float = 15.0,
                     hint_offset_deg: float | None = 20.0, seed: int = 0, relift: bool = True,
                     true_depth: bool = False, views: Sequence[tuple[float, float]] | None = None) -> ExtraPhotoScore:
    """Held-out PSNR (inside the mask) of the first version with and without the ground truth at
    (``azimuth_deg``, ``elevation_deg``) as an extra photo, posed from a hint ``hint_offset_deg`` off
    (None: at its true camera, which separates the fusion's gain from the pose's error); ``relift``
    as :func:`fuse_extra_photo`; ``true_depth``: the extra photo fused with its ground-truth depth.
    ``views``: several extra photos instead, (azimuth, elevation) each, added one after the other as
    AddPhoto adds them (each posed against the splat so far, earlier photos' cameras known)."""
    splat, matte = coarse_splat(gt, stages, seed=seed)
    splat, confidence = photo_confidence(gt, stages, splat, seed)
    single = heldout_psnr(render_heldout(stages, splat, gt), gt)["psnr_mask_db"]
    input_photo = TrustedView(gt.input.rgb_uint8, gt.input.camera, matte)
    cameras: list[Camera] = []
    steps: list[float] = []
    pose: PoseResult | None = None
    for i, (azimuth, elevation) in enumerate(views if views else [(azimuth_deg, elevation_deg)]):
        view = extra_view(gt, azimuth, elevation)
        photo = view.rgb_uint8
        est = stages.depth.estimate(photo, view.camera)
        if hint_offset_deg is None:
            pose = PoseResult(OrbitPose(azimuth, elevation), view.camera, float("nan"), float("nan"))
        else:  # as the gateway does
            pose = find_pose(splat, photo, est.mask, PoseHint(azimuth + hint_offset_deg, elevation),
                             field=f"extra_photos[{i}]", known=KnownView(gt.input.camera, matte),
                             photo_cameras=cameras)
        splat, confidence = fuse_extra_photo(splat, confidence, photo, est.mask, pose.camera, stages, input_photo,
                                             seed, relift, view.depth if true_depth else None, cameras)
        cameras.append(pose.camera)
        steps.append(heldout_psnr(render_heldout(stages, splat, gt), gt)["psnr_mask_db"])
    assert pose is not None
    return ExtraPhotoScore(single, steps[-1], pose, tuple(steps))


@dataclass(frozen=True)
class IdentityCell:
    """One photo posed against one first version: accepted (with the pose's IoU, whether the hint was
    kept, the azimuth found) or refused (``refusal``: the error's message)."""

    accepted: bool
    iou: float = float("nan")
    hint_kept: bool = False
    azimuth_deg: float = float("nan")
    refusal: str = ""


@dataclass(frozen=True)
class IdentityMatrix:
    """``cells[model][photo]``: the back photo of object ``photo`` posed against ``model``'s first version."""

    names: list[str]
    cells: dict[str, dict[str, IdentityCell]]

    @property
    def false_refusals(self) -> list[str]:
        """Objects whose own back photo was refused."""
        return [n for n in self.names if not self.cells[n][n].accepted]

    @property
    def false_acceptances(self) -> list[tuple[str, str]]:
        """(model, photo) pairs of different objects where the photo was accepted."""
        return [(m, p) for m in self.names for p in self.names if m != p and self.cells[m][p].accepted]

    @property
    def false_refusal_rate(self) -> float:
        return len(self.false_refusals) / len(self.names)

    @property
    def false_acceptance_rate(self) -> float:
        pairs = len(self.names) * (len(self.names) - 1)
        return len(self.false_acceptances) / pairs if pairs else float("nan")


def photo_identity(gts: Sequence[GroundTruth], stages: Stages, azimuth_deg: float = 180.0,
                   elevation_deg: float = 15.0, hint_offset_deg: float = 20.0, seed: int = 0) -> IdentityMatrix:
    """Every object's ground truth at (``azimuth_deg``, ``elevation_deg``) posed against every object's
    first version (the coarse splat with the photo fused) from a hint ``hint_offset_deg`` off in azimuth,
    as the gateway poses a first extra photo (the input photo's camera and matte known, no earlier photo):
    the diagonal should be accepted, the rest refused."""
    names = [gt.obj.name for gt in gts]
    if len(names) < 2:
        raise InvalidInput(f"at least two objects are needed (one photo of another object each), got {names}",
                           field="objects")
    if len(set(names)) != len(names):
        raise InvalidInput(f"objects must differ, got {names}", field="objects")
    photos = {}
    for gt in gts:
        view = extra_view(gt, azimuth_deg, elevation_deg)
        photos[gt.obj.name] = (view.rgb_uint8, stages.depth.estimate(view.rgb_uint8, view.camera).mask)
    hint = PoseHint(azimuth_deg + hint_offset_deg, elevation_deg)
    cells: dict[str, dict[str, IdentityCell]] = {}
    for gt in gts:
        splat, matte = coarse_splat(gt, stages, seed=seed)
        splat, _ = photo_confidence(gt, stages, splat, seed)
        row: dict[str, IdentityCell] = {}
        for name, (rgb, mask) in photos.items():
            try:
                found = find_pose(splat, rgb, mask, hint, field=name, known=KnownView(gt.input.camera, matte))
            except InvalidInput as err:
                row[name] = IdentityCell(False, refusal=str(err))
                continue
            row[name] = IdentityCell(True, found.iou, found.hint_kept, found.pose.azimuth_deg)
        cells[gt.obj.name] = row
    return IdentityMatrix(names, cells)


__all__ = ["ExtraPhotoScore", "IdentityCell", "IdentityMatrix", "extra_photo_gain", "extra_view", "fuse_extra_photo",
           "photo_identity", "surface_splat"]

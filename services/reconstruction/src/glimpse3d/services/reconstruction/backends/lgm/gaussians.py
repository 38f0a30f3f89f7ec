"""LGM's Gaussians -> the project's :class:`~glimpse3d.core.splat.Splat`, in the project's world.

Raw outputs are activated as published (:func:`.unet.activate`) and carried by the similarity
``p_ours = s R p_lgm + t`` of :func:`.rays.lgm_frame`: means ``s R p + t``, scales times ``s``
(logs, floored at 1e-8), quaternions (w, x, y, z) ``q(R) * q_lgm``, opacity logits clamped to
+-30, colours to band-0 SH. Gaussians fainter than ``min_opacity`` are dropped; ``max_gaussians``
keeps the most opaque ones.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor

from glimpse3d.core.lifting import rotmat_to_quat
from glimpse3d.core.splat import Splat, rgb_to_sh0
from glimpse3d.services.reconstruction.backends.lgm.rays import Similarity
from glimpse3d.services.reconstruction.backends.lgm.unet import OUT_CHANNELS, activate

logger = logging.getLogger(__name__)

MIN_SCALE = 1e-8
MAX_LOGIT = 30.0


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (w, x, y, z) quaternions, broadcasting ([4] or [N, 4] each)."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, np.float64), -1, 0)
    return np.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], axis=-1)


def select(opacity: np.ndarray, min_opacity: float, max_gaussians: int) -> np.ndarray:
    """Indices of the Gaussians to keep: opacity >= ``min_opacity``, at most ``max_gaussians`` (0 = all)
    of them, the most opaque first; never empty (the most opaque one stays)."""
    keep = np.flatnonzero(opacity >= min_opacity)
    if keep.size == 0:
        logger.warning("lgm: no Gaussian reaches opacity %.3g; keeping the most opaque one", min_opacity)
        keep = np.array([int(np.argmax(opacity))])
    if max_gaussians and keep.size > max_gaussians:
        keep = keep[np.argsort(-opacity[keep], kind="stable")[:max_gaussians]]
        keep.sort()
    return keep


def lgm_to_splat(raw: Tensor, frame: Similarity, min_opacity: float = 0.005, max_gaussians: int = 0) -> Splat:
    """Raw network output [N, 14] (LGM's frame) -> a splat in the project's world (see the module docstring)."""
    assert raw.ndim == 2 and raw.shape[1] == OUT_CHANNELS, f"raw must be [N, {OUT_CHANNELS}], got {list(raw.shape)}"
    raw = raw.detach().to(torch.float32).cpu()
    act = {k: v.numpy().astype(np.float64) for k, v in activate(raw).items()}
    keep = select(act["opacity"], min_opacity, max_gaussians)
    quats = act["rotation"][keep]
    degenerate = np.linalg.norm(quats, axis=1) < 1e-6  # a zero raw quaternion normalises to zero
    quats[degenerate] = (1.0, 0.0, 0.0, 0.0)
    frame_quat = rotmat_to_quat(frame.rotation[None].astype(np.float64))[0]
    return Splat(
        means=frame.points(act["position"][keep]).astype(np.float32),
        quats=quat_multiply(frame_quat, quats).astype(np.float32),
        log_scales=(np.log(np.maximum(act["scale"][keep], MIN_SCALE)) + math.log(frame.scale)).astype(np.float32),
        opacity_logits=np.clip(raw[keep, 3].numpy(), -MAX_LOGIT, MAX_LOGIT).astype(np.float32),
        sh=rgb_to_sh0(act["rgb"][keep])[:, None, :].astype(np.float32),
    )

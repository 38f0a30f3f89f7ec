"""Learned backends on the CPU with their tiny models (issue 5): the latency of each backend, and
the overhead of the gRPC service wrapper against a direct call of the same loaded backend.

For every learned backend this suite writes the tiny random models (``glimpse3d.core.tinymodels``),
starts the service in this process on a loopback port with the backend selected through
``ServiceSettings`` (the same path as ``GLIMPSE3D_BACKEND``), and then, side by side in one run,
times a direct call of the servicer's own backend object and the same request over gRPC (artifacts
through a file store: PNG/NPY encode, write, read, decode, and the response's artifacts). The ratio
service / direct is the wrapper's cost; with tiny models the model work is small, so the ratio is an
upper bound of what production sees, where the model dominates.

Latencies of the tiny models say nothing about the production models' speed (see docs/models.md
for published figures); they track the fixed costs of each backend's pre- and post-processing.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from glimpse3d.core import convert
from glimpse3d.core.artifacts import LEGACY_TENANT, FileArtifactStore, tenant_scope
from glimpse3d.core.cameras import orbit_camera, turned_about_up
from glimpse3d.core.formats import splat_to_ply_bytes
from glimpse3d.core.images import encode_npy, encode_png
from glimpse3d.core.rpc import create_channel
from glimpse3d.core.service import ServiceSettings, running_in_process
from glimpse3d.core.synthetic import render_depth_alpha, render_image, textured_object
from glimpse3d.core.tinymodels import write_all
from glimpse3d.services.backprojection import server as bp_server
from glimpse3d.services.backprojection.api import RefineOptions
from glimpse3d.services.depth import server as depth_server
from glimpse3d.services.diffusion import server as diffusion_server
from glimpse3d.services.multiview import server as multiview_server
from glimpse3d.services.reconstruction import server as recon_server
from glimpse3d.services.reconstruction.api import ExtraView
from glimpse3d.v1 import (
    backprojection_pb2,
    backprojection_pb2_grpc,
    common_pb2,
    depth_pb2,
    depth_pb2_grpc,
    diffusion_pb2,
    diffusion_pb2_grpc,
    multiview_pb2,
    multiview_pb2_grpc,
    reconstruction_pb2,
    reconstruction_pb2_grpc,
)

SIZE = 64
REPEATS = 5
STEPS = 4


@dataclass
class Scene:
    store: FileArtifactStore
    rgba: np.ndarray
    rgb: np.ndarray
    depth: np.ndarray
    alpha: np.ndarray
    camera: Any
    views: list[ExtraView]
    splat: Any

    def put(self, data: bytes, media: str) -> common_pb2.ArtifactRef:
        return convert.artifact_to_proto(self.store.put(data, media))


@dataclass
class Case:
    service: str
    backend: str
    options: dict[str, Any]
    direct: Callable[[Any, Scene], Any]
    remote: Callable[[grpc.aio.Channel, Scene], Awaitable[Any]]


def _scene(store: FileArtifactStore) -> Scene:
    splat = textured_object(seed=0, n=1500)
    camera = orbit_camera(0.0, 0.0, 2.7, width=SIZE, height=SIZE)
    rgba = render_image(splat, camera, background=(0.9, 0.9, 0.9), rgba=True)
    depth, alpha = render_depth_alpha(splat, camera)
    views = []
    for az in (90.0, 180.0, 270.0):
        cam = turned_about_up(camera, az)
        views.append(ExtraView(camera=cam, rgb=render_image(splat, cam, background=(1.0, 1.0, 1.0))[..., :3]))
    return Scene(store, rgba, rgba[..., :3].copy(), depth.astype(np.float32), alpha.astype(np.float32),
                 camera, views, splat)


def _cases() -> list[Case]:
    def depth_remote(ch, s):
        req = depth_pb2.EstimateDepthRequest(image=s.put(encode_png(s.rgba), "image/png"),
                                             camera=convert.camera_to_proto(s.camera))
        return depth_pb2_grpc.DepthStub(ch).Estimate(req)

    def recon_remote(with_views: bool):
        def call(ch, s):
            views = [reconstruction_pb2.ViewImage(camera=convert.camera_to_proto(v.camera),
                                                  rgb=s.put(encode_png(v.rgb), "image/png"))
                     for v in (s.views if with_views else [])]
            req = reconstruction_pb2.ReconstructRequest(
                image=s.put(encode_png(s.rgba), "image/png"), depth=s.put(encode_npy(s.depth), "application/x-npy"),
                mask=s.put(encode_npy(s.alpha), "application/x-npy"), camera=convert.camera_to_proto(s.camera),
                views=views)
            return reconstruction_pb2_grpc.ReconstructionStub(ch).Reconstruct(req)
        return call

    def recon_direct(with_views: bool):
        return lambda b, s: b.reconstruct(s.rgba, s.depth, s.alpha, s.camera, views=s.views if with_views else ())

    def mv_remote(ch, s):
        req = multiview_pb2.GenerateViewsRequest(
            image=s.put(encode_png(s.rgba), "image/png"), input_camera=convert.camera_to_proto(s.camera),
            views=[common_pb2.ViewSpec(camera=convert.camera_to_proto(s.views[0].camera))], seed=1, steps=STEPS)
        return multiview_pb2_grpc.MultiviewStub(ch).Generate(req)

    def diff_remote(ch, s):
        req = diffusion_pb2.EnhanceViewRequest(
            view=s.put(encode_png(s.rgb), "image/png"), depth=s.put(encode_npy(s.depth), "application/x-npy"),
            alpha=s.put(encode_npy(s.alpha), "application/x-npy"), strength=0.5, steps=STEPS, guidance=5.0, seed=1)
        return diffusion_pb2_grpc.DiffusionStub(ch).Enhance(req)

    def bp_remote(ch, s):
        req = backprojection_pb2.RefineRequest(
            splat=s.put(splat_to_ply_bytes(s.splat), "application/x-glimpse3d-splat+ply"),
            view=s.put(encode_png(s.rgb), "image/png"), camera=convert.camera_to_proto(s.camera),
            reference=s.put(encode_png(s.rgb), "image/png"),
            options=backprojection_pb2.RefineOptions(steps=STEPS, clip_check=True))
        return backprojection_pb2_grpc.BackprojectionStub(ch).Refine(req)

    return [
        Case("depth", "dpt", {"model": "depth/dpt-hybrid-midas"},
             lambda b, s: b.estimate(s.rgba, s.camera), depth_remote),
        Case("depth", "dpt", {"model": "depth/depth-anything-v2-small"},
             lambda b, s: b.estimate(s.rgba, s.camera), depth_remote),
        Case("reconstruction", "triposr", {"grid_resolution": 48, "max_gaussians": 3000}, recon_direct(False),
             recon_remote(False)),
        Case("reconstruction", "lgm", {}, recon_direct(True), recon_remote(True)),
        Case("multiview", "zero123", {"steps": STEPS},
             lambda b, s: b.generate(s.rgba, None, s.camera, None, [s.views[0].camera], seed=1, steps=STEPS),
             mv_remote),
        Case("diffusion", "sdxl", {"resolution": SIZE},
             lambda b, s: b.enhance(s.rgb, depth=s.depth, alpha=s.alpha, reference=None, prompt="",
                                    strength=0.5, steps=STEPS, guidance=5.0, seed=1),
             diff_remote),
        Case("backprojection", "mvcrm", {"clip_model": "clip/clip-vit-base-patch32", "clip_threshold": 0.0},
             lambda b, s: b.refine(s.splat, s.rgb, s.camera, options=RefineOptions(steps=STEPS, clip_check=True),
                                   reference=s.rgb),
             bp_remote),
    ]


MODULES = {"depth": depth_server, "reconstruction": recon_server, "multiview": multiview_server,
           "diffusion": diffusion_server, "backprojection": bp_server}


def _median(times: list[float]) -> float:
    return statistics.median(times)


async def _measure(case: Case, scene: Scene, model_dir: Path) -> tuple[float, float]:
    module = MODULES[case.service]
    settings = ServiceSettings(backend=case.backend, model_dir=model_dir, device="cpu",
                               backend_options=json.dumps(case.options))
    async with running_in_process(module.build, [module.SERVICE_NAME], settings, scene.store) as (port, reg):
        backend = reg[0][1].backend
        # Services act only for a tenant: the calls name the loopback default one (the scene's keys are its).
        with tenant_scope(LEGACY_TENANT):
            ch = create_channel(f"127.0.0.1:{port}", default_timeout_s=None)
            case.direct(backend, scene)  # warm up both paths once
            await case.remote(ch, scene)
            direct, remote = [], []
            for _ in range(REPEATS):  # interleaved, so drift in machine load hits both sides alike
                t0 = time.perf_counter()
                await asyncio.to_thread(case.direct, backend, scene)
                direct.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await case.remote(ch, scene)
                remote.append(time.perf_counter() - t0)
            await ch.close()
    return _median(direct), _median(remote)


def run() -> list[dict]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "models"
        t0 = time.perf_counter()
        write_all(model_dir, seed=0)
        rows.append({"name": "write every tiny model", "value": time.perf_counter() - t0, "unit": "s"})
        scene = _scene(FileArtifactStore(Path(tmp) / "artifacts"))
        for case in _cases():
            label = case.backend + (f"[{case.options['model'].split('/')[-1]}]" if "model" in case.options else "")
            direct, remote = asyncio.run(_measure(case, scene, model_dir))
            rows.append({"name": f"{case.service}/{label} direct (tiny, {SIZE} px)", "value": direct * 1e3,
                         "unit": "ms", "note": f"median of {REPEATS}"})
            rows.append({"name": f"{case.service}/{label} via gRPC service", "value": remote * 1e3, "unit": "ms"})
            rows.append({"name": f"{case.service}/{label} service / direct", "value": remote / direct, "unit": "x",
                         "note": "wrapper overhead ratio, same loaded backend, one run"})
            rows.append({"name": f"{case.service}/{label} service - direct", "value": (remote - direct) * 1e3,
                         "unit": "ms", "note": "the wrapper's fixed cost per call (artifact I/O, codecs, RPC)"})
    return rows

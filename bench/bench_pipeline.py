"""Pipeline benchmarks (issue targets on 2 cores: coarse reconstruction <= 5 s and one enhancement
round <= 5 s for a 512 px photo, gateway path / in-process path <= 1.10).

Both paths run the same backends on the same photo in this one run: in process (direct calls, the
way a library user would chain them) and through the gateway (CreateJob + Enhance over gRPC, across
the six processes started on loopback, artifacts through the file store).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import numpy as np

from glimpse3d.core.images import decode_image, resize_longest
from glimpse3d.gateway.cli import watch
from glimpse3d.gateway.demo import SAMPLE
from glimpse3d.gateway.pipeline import pick_least_confident_view
from glimpse3d.gateway.stack import start_stack
from glimpse3d.services.backprojection.api import make_backend as make_bp
from glimpse3d.services.depth.api import make_backend as make_depth
from glimpse3d.services.depth.server import default_camera
from glimpse3d.services.diffusion.api import apply_proto_defaults
from glimpse3d.services.diffusion.api import make_backend as make_diffusion
from glimpse3d.services.reconstruction.api import make_backend as make_recon
from glimpse3d.v1 import glimpse3d_pb2, glimpse3d_pb2_grpc

RESOLUTION = 512


def _in_process(photo: np.ndarray) -> tuple[float, float]:
    depth_b, recon_b = make_depth("silhouette"), make_recon("lift")
    diff_b, bp_b = make_diffusion("classical"), make_bp("mvcrm")
    for b in (depth_b, recon_b, diff_b, bp_b):
        b.load()
    t0 = time.perf_counter()
    cam = default_camera(photo.shape[1], photo.shape[0])
    d = depth_b.estimate(photo, cam)
    splat = recon_b.reconstruct(photo, d.depth, d.mask, cam).splat
    coarse = time.perf_counter() - t0
    t0 = time.perf_counter()
    view_cam = pick_least_confident_view(splat.means, None, RESOLUTION, [])
    r = recon_b.render(splat, [view_cam])[0]
    strength, steps, guidance = apply_proto_defaults(0.0, 0, 0.0)
    enhanced = diff_b.enhance((np.clip(r.rgb, 0, 1) * 255).astype(np.uint8), depth=r.depth, alpha=r.alpha,
                              reference=photo, prompt="", strength=strength, steps=steps, guidance=guidance, seed=0)
    vd = depth_b.estimate(enhanced, view_cam)
    bp_b.refine(splat, enhanced, view_cam, vd.depth, None, None, reference=photo)
    return coarse, time.perf_counter() - t0


async def _gateway(addr: str, data: bytes) -> tuple[float, float]:
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = glimpse3d_pb2_grpc.Glimpse3DStub(ch)
        t0 = time.perf_counter()
        job = await stub.CreateJob(glimpse3d_pb2.CreateJobRequest(
            image_data=data, request_id=str(uuid.uuid4()),
            options=glimpse3d_pb2.JobOptions(resolution=RESOLUTION)))
        job = await watch(stub, job.name, quiet=True)
        coarse = time.perf_counter() - t0
        t0 = time.perf_counter()
        await stub.Enhance(glimpse3d_pb2.EnhanceRequest(name=job.name, auto=True, request_id=str(uuid.uuid4())))
        job = await watch(stub, job.name, quiet=True)
        if job.state != glimpse3d_pb2.Job.SUCCEEDED or job.error.message:
            raise RuntimeError(f"benchmark job failed: {job.error.message}")
        return coarse, time.perf_counter() - t0


def run() -> list[dict]:
    data = SAMPLE.read_bytes()
    photo = resize_longest(decode_image(data), RESOLUTION)
    direct_coarse, direct_round = _in_process(photo)
    with tempfile.TemporaryDirectory() as tmp, start_stack(Path(tmp)) as stack:
        gw_coarse, gw_round = asyncio.run(_gateway(stack.gateway_addr, data))
    ratio = (gw_coarse + gw_round) / (direct_coarse + direct_round)
    return [
        {"name": "coarse reconstruction, 512 px (gateway)", "value": gw_coarse, "unit": "s", "note": "target <= 5 s"},
        {"name": "coarse reconstruction, 512 px (in process)", "value": direct_coarse, "unit": "s", "note": ""},
        {"name": "one enhancement round (gateway)", "value": gw_round, "unit": "s", "note": "target <= 5 s"},
        {"name": "one enhancement round (in process)", "value": direct_round, "unit": "s", "note": ""},
        {"name": "gateway path / in-process path", "value": ratio, "unit": "x", "note": "target <= 1.10"},
    ]


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:<48} {row['value']:8.3f} {row['unit']:<3} {row['note']}")

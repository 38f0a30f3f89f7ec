"""``make demo``: the main job end to end on the bundled sample photo.

Starts the five services and the gateway as local processes on free ports, runs the photo through
generate (with novel views), two "auto" enhancement clicks and export, then writes into --out:
model.<format> for each splat format (ply, splat, glb, ...), turntable.png (rows: version 1 and the
final version, seen from eight orbit views) and metrics.json. The mesh formats (obj, mesh-glb) are left
out: the reconstruction service spends 10-15 s of CPU meshing even a small splat on a loaded 2-core
machine (docs/mesh.md); `glimpse3d generate --formats obj mesh-glb` downloads them. A round the
gateway rejects (it would have made the model worse against the photo) is logged with its reason and
leaves the model as it was; any other failure stops the demo. Stops every process and prints where the
files are, and a table of each version's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format
from PIL import Image

from glimpse3d.core import convert
from glimpse3d.core.artifacts import open_store
from glimpse3d.core.images import decode_image
from glimpse3d.core.rpc.errors import reason_and_field
from glimpse3d.gateway.cli import FORMATS, SPLAT_FORMATS, download, summary_table, watch
from glimpse3d.gateway.jobs import DEFAULT_TENANT, TENANT_HEADER
from glimpse3d.gateway.stack import Stack, raise_on_sigterm, start_stack
from glimpse3d.v1 import common_pb2, glimpse3d_pb2, glimpse3d_pb2_grpc, reconstruction_pb2, reconstruction_pb2_grpc

log = logging.getLogger(__name__)
SAMPLE = Path(__file__).resolve().parents[4] / "assets" / "sample.png"
TURNTABLE_VIEWS = 8


async def _turntable_row(stack: Stack, artifacts_url: str, splat: common_pb2.ArtifactRef, size: int) -> np.ndarray:
    views = [common_pb2.ViewSpec(orbit=common_pb2.OrbitView(azimuth_deg=360.0 * i / TURNTABLE_VIEWS,
                                                            elevation_deg=10.0, width=size, height=size))
             for i in range(TURNTABLE_VIEWS)]
    async with grpc.aio.insecure_channel(stack.addr("reconstruction")) as ch:
        resp = await reconstruction_pb2_grpc.ReconstructionStub(ch).Render(
            reconstruction_pb2.RenderRequest(splat=splat, views=views, background=[1.0, 1.0, 1.0]), timeout=300,
            metadata=((TENANT_HEADER, DEFAULT_TENANT),))  # the demo's job runs as the loopback default tenant
    store = open_store(artifacts_url)
    tiles = [decode_image(store.get(convert.artifact_from_proto(v.rgb)))[..., :3] for v in resp.views]
    return np.concatenate(tiles, axis=1)


async def run_demo(stack: Stack, photo: Path, out: Path, artifacts_url: str, rounds: int, views: int,
                   resolution: int = 0) -> dict:
    metrics: dict = {"photo": photo.name, "timings_s": {}, "rejected_rounds": []}
    async with grpc.aio.insecure_channel(stack.gateway_addr) as ch:
        stub = glimpse3d_pb2_grpc.Glimpse3DStub(ch)
        t0 = time.perf_counter()
        job = await stub.CreateJob(glimpse3d_pb2.CreateJobRequest(
            image_data=photo.read_bytes(), request_id=str(uuid.uuid4()), display_name=photo.name,
            options=glimpse3d_pb2.JobOptions(num_views=views, resolution=resolution)))
        log.info("%s: generating (coarse splat + %d novel views)", job.name, views)
        job = await watch(stub, job.name)
        metrics["timings_s"]["generate"] = time.perf_counter() - t0
        for i in range(rounds):
            t0 = time.perf_counter()
            log.info("%s: enhancement round %d (auto view)", job.name, i + 1)
            await stub.Enhance(glimpse3d_pb2.EnhanceRequest(name=job.name, auto=True, seed=i,
                                                            request_id=str(uuid.uuid4())))
            job = await watch(stub, job.name)
            metrics["timings_s"][f"round_{i + 1}"] = time.perf_counter() - t0
            if job.error.message and reason_and_field(job.error)[0] == "ROUND_REJECTED":
                log.info("%s: round %d rejected: %s", job.name, i + 1, job.error.message)
                metrics["rejected_rounds"].append({"round": i + 1, "reason": job.error.message})
                job.ClearField("error")
        if job.state != glimpse3d_pb2.Job.SUCCEEDED or job.error.message:
            raise RuntimeError(f"{job.name} ended {glimpse3d_pb2.Job.State.Name(job.state)}: {job.error.message}")
        t0 = time.perf_counter()
        for fmt in SPLAT_FORMATS:
            resp = await stub.Export(glimpse3d_pb2.ExportRequest(name=job.name, format=FORMATS[fmt]))
            download(resp.download_url, out / f"model.{fmt}")
        metrics["timings_s"]["exports"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        size = job.versions[0].camera.intrinsics.width or 160
        rows = [await _turntable_row(stack, artifacts_url, v.splat, min(size, 160))
                for v in (job.versions[0], job.versions[-1])]
        Image.fromarray(np.concatenate(rows, axis=0)).save(out / "turntable.png")
        metrics["timings_s"]["turntable"] = time.perf_counter() - t0
    metrics["job"] = json_format.MessageToDict(job, preserving_proto_field_name=True)
    log.info("%s", summary_table(job))
    return metrics


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photo", type=Path, default=SAMPLE)
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--state", type=Path, default=Path("var/demo"), help="logs, job db and artifacts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=0, help="working resolution (0 = the gateway default)")
    ns = parser.parse_args(argv)
    raise_on_sigterm()
    shutil.rmtree(ns.state, ignore_errors=True)
    ns.out.mkdir(parents=True, exist_ok=True)
    artifacts_url = (ns.state.resolve() / "artifacts").as_uri()
    log.info("starting the five services and the gateway (logs in %s)", ns.state)
    t0 = time.perf_counter()
    with start_stack(ns.state, env={"GLIMPSE3D_ARTIFACTS_URL": artifacts_url}) as stack:
        started = time.perf_counter() - t0
        metrics = asyncio.run(run_demo(stack, ns.photo, ns.out, artifacts_url, ns.rounds, ns.views, ns.resolution))
        t0 = time.perf_counter()
    metrics["timings_s"]["stack_start"] = started
    metrics["timings_s"]["stack_stop"] = time.perf_counter() - t0
    (ns.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("all processes stopped. Files written:")
    for name in (*(f"model.{fmt}" for fmt in SPLAT_FORMATS), "turntable.png", "metrics.json"):
        log.info("  %s", (ns.out / name).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())

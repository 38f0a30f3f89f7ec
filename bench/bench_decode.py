"""Gateway memory under decompression bombs: idle RSS, peak RSS while 20 bombs arrive at once, RSS after.

A bomb is a legal upload, a PNG of about 8 KB declaring 8192 x 8192 pixels (made in memory). The
gateway runs in a child process (gRPC only, the real :class:`GatewayApp` with a pipeline that holds
its jobs, so only admission is measured), and this process samples the child's RSS every 5 ms while
it sends ``CreateJob`` calls concurrently. Two gateways are measured side by side in the same run:

- ``gated``: the shipped defaults (``GLIMPSE3D_DECODE_*`` unset: two full-size images at once,
  malloc_trim after large decodes), with 20 bombs;
- ``notrim``: the same budget without malloc_trim (``GLIMPSE3D_DECODE_TRIM_PIXELS=0``), with 20 bombs:
  what the trim gives back (measured: 680 to 1160 MiB above idle stay held without it, 2 MiB with it);
- ``ungated``: no pixel budget, no concurrency limit and no trim, with only 4 bombs (20 would need
  about 14 GiB on a machine with 16 cores, as many decodes as the thread pool has threads).

Reported: idle RSS, peak and after (1 s after the last answer), accepted and refused counts.
``python -m bench.bench_decode`` prints the table; ``make bench`` runs it with the other suites.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
from PIL import Image

MiB = 1024 * 1024
BOMBS = 20
UNGATED_BOMBS = 4
UNGATED_ENV = {
    "GLIMPSE3D_DECODE_MAX_PIXELS": str(1 << 40),
    "GLIMPSE3D_DECODE_MAX_CONCURRENT": "1024",
    "GLIMPSE3D_DECODE_TRIM_PIXELS": "0",
}


def bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (8192, 8192)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


# ---- the child: a gateway whose jobs never run -----------------------------------------------------


async def _serve(workdir: Path) -> None:
    from glimpse3d.core.artifacts import FileArtifactStore
    from glimpse3d.core.rpc import create_server
    from glimpse3d.gateway.app import GatewayApp
    from glimpse3d.gateway.config import GatewayConfig
    from glimpse3d.gateway.servicer import SERVICE_NAME, Glimpse3DServicer
    from glimpse3d.gateway.store import JobStore
    from glimpse3d.v1 import glimpse3d_pb2_grpc

    class HeldPipeline:
        async def run_initial(self, job: Any, report: Any) -> Any:
            await asyncio.Event().wait()

        async def run_round(self, job: Any, round_spec: Any, report: Any) -> Any:
            await asyncio.Event().wait()

    config = GatewayConfig(db_path=workdir / "jobs.sqlite3", artifacts_url=str(workdir / "artifacts"))
    store = JobStore(config.db_path)
    app = GatewayApp(config, store, FileArtifactStore(workdir / "artifacts"), HeldPipeline())
    await app.start()
    servicer = Glimpse3DServicer(app)
    server, port = create_server(
        [(glimpse3d_pb2_grpc.add_Glimpse3DServicer_to_server, servicer)], [SERVICE_NAME], metrics_port=None
    )
    await server.start()
    print(port, flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin
    await server.stop(0)
    await app.close()
    store.close()


# ---- the parent ---------------------------------------------------------------------------------------


async def _storm(port: int, data: bytes, count: int) -> tuple[int, int]:
    from glimpse3d.v1 import glimpse3d_pb2, glimpse3d_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = glimpse3d_pb2_grpc.Glimpse3DStub(channel)

        async def one(i: int) -> bool:
            try:
                await stub.CreateJob(
                    glimpse3d_pb2.CreateJobRequest(image_data=data),
                    metadata=(("x-glimpse3d-tenant", f"t{i}"),),
                    timeout=300,
                )
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                return False
            return True

        results = await asyncio.gather(*(one(i) for i in range(count)))
    return sum(results), count - sum(results)


def measure(env: dict[str, str], count: int, data: bytes) -> dict[str, float]:
    """Start a gateway with environment ``env``, send ``count`` copies of ``data`` at once, measure its RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_decode", "--serve", tmp],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdin is not None
            port = int(child.stdout.readline())
            proc = psutil.Process(child.pid)
            time.sleep(1.0)
            idle = proc.memory_info().rss
            peak = [idle]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], proc.memory_info().rss)
                    stop.wait(0.005)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            start = time.perf_counter()
            accepted, refused = asyncio.run(_storm(port, data, count))
            seconds = time.perf_counter() - start
            time.sleep(1.0)
            stop.set()
            sampler.join()
            after = proc.memory_info().rss
            child.stdin.close()
            child.wait(30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    return {
        "idle": idle / MiB,
        "peak": max(peak[0], after) / MiB,
        "after": after / MiB,
        "accepted": accepted,
        "refused": refused,
        "seconds": seconds,
    }


def run() -> list[dict]:
    data = bomb()
    rows: list[dict] = []
    base = {k: v for k, v in os.environ.items() if not k.startswith("GLIMPSE3D_DECODE_")}
    configs = (
        ("gated", {}, BOMBS),
        ("notrim", {"GLIMPSE3D_DECODE_TRIM_PIXELS": "0"}, BOMBS),
        ("ungated", UNGATED_ENV, UNGATED_BOMBS),
    )
    for label, env, count in configs:
        m = measure({**base, **env}, count, data)
        note = f"{count} bombs of {len(data)} B, 8192x8192"
        rows += [
            {"name": f"decode_{label}_idle_rss", "value": m["idle"], "unit": "MiB", "note": "before the bombs"},
            {"name": f"decode_{label}_peak_rss", "value": m["peak"], "unit": "MiB", "note": note},
            {
                "name": f"decode_{label}_after_rss",
                "value": m["after"],
                "unit": "MiB",
                "note": "1 s after the last answer",
            },
            {"name": f"decode_{label}_after_minus_idle", "value": m["after"] - m["idle"], "unit": "MiB", "note": ""},
            {
                "name": f"decode_{label}_accepted",
                "value": m["accepted"],
                "unit": "calls",
                "note": f"{m['refused']} refused RESOURCE_EXHAUSTED, {m['seconds']:.1f} s in all",
            },
        ]
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        asyncio.run(_serve(Path(sys.argv[2])))
    else:
        for row in run():
            print(f"{row['name']:<32} {row['value']:>10.4g} {row['unit']:<6} {row['note']}")

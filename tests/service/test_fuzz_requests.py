"""Property-based fuzzing of the gRPC request validation: the gateway's Glimpse3D API and the five
backend services, each behind a real in-process server on 127.0.0.1.

Requests are drawn from the messages' descriptors (any subset of fields, any values: NaN and infinite
floats, boundary integers, unknown enum numbers, arbitrary text), mixed with known-good pieces (a real
photo, stored artifacts, the job names that exist, valid cameras) so that validation is passed often
enough to reach the checks behind it. The property: every call either succeeds or fails with the status
of a domain error (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ...), never
INTERNAL or UNKNOWN (an exception the code did not expect) and never a hang (the call's deadline).

The backends are the weight-free defaults; the knobs that set how long a backend computes (steps, fit
steps, image sizes) are drawn from a cheap valid range or an invalid one, so that the tier stays bounded.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from fuzzing import TEXT, LoopThread, QuickPipeline, fuzz, loop_thread, messages, mutated, serving
from hypothesis import given
from hypothesis import strategies as st
from service_harness import MODULES

from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.convert import artifact_to_proto, camera_to_proto
from glimpse3d.core.formats import splat_to_ply_bytes
from glimpse3d.core.images import MAX_IMAGE_SIDE, encode_npy, encode_png
from glimpse3d.core.rpc import create_server
from glimpse3d.core.service import ServiceSettings, running_in_process
from glimpse3d.core.splat import Splat
from glimpse3d.gateway.app import GatewayApp
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.servicer import SERVICE_NAME, Glimpse3DServicer
from glimpse3d.gateway.store import JobStore
from glimpse3d.services.backprojection.api import MAX_STEPS as MAX_REFINE_STEPS
from glimpse3d.services.diffusion.api import MAX_STEPS as MAX_DIFFUSION_STEPS
from glimpse3d.services.multiview.api import MAX_STEPS as MAX_MULTIVIEW_STEPS
from glimpse3d.services.reconstruction.api import MAX_FIT_STEPS, MAX_GAUSSIANS
from glimpse3d.v1 import (
    backprojection_pb2,
    common_pb2,
    depth_pb2,
    diffusion_pb2,
    glimpse3d_pb2,
    glimpse3d_pb2_grpc,
    multiview_pb2,
    reconstruction_pb2,
)

CALL_TIMEOUT_S = 20.0
SIZE = 16  # the photo and the valid cameras: small, so that valid requests compute quickly
# What an unexpected exception becomes (glimpse3d.core.rpc.errors): the property is that none occurs.
UNEXPECTED = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}


@pytest.fixture(scope="module")
def background() -> Iterator[LoopThread]:
    with loop_thread() as thread:
        yield thread


@dataclass
class Server:
    channel: grpc.Channel
    extra: dict[str, Any]


def check_call(call: Callable[[], object]) -> None:
    """The property: success, or a domain error's status."""
    try:
        call()
    except grpc.RpcError as err:
        code = err.code()  # type: ignore[attr-defined]
        assert code not in UNEXPECTED, f"{code}: {err.details()}"  # type: ignore[attr-defined]


# ---- known-good pieces --------------------------------------------------------------------------------


def _photo() -> np.ndarray:
    """A disk on a grey background, RGBA with the disk opaque: every service accepts it."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    inside = (yy - SIZE / 2 + 0.5) ** 2 + (xx - SIZE / 2 + 0.5) ** 2 < (SIZE / 3) ** 2
    rgba = np.full((SIZE, SIZE, 4), 128, np.uint8)
    rgba[inside, :3] = (200, 60, 40)
    rgba[..., 3] = np.where(inside, 255, 0)
    return rgba


PHOTO = _photo()
PHOTO_PNG = encode_png(PHOTO)
RGB_PNG = encode_png(PHOTO[..., :3])
MASK_PNG = encode_png(PHOTO[..., 3])
CAMERA = orbit_camera(0.0, 0.0, 2.7, width=SIZE, height=SIZE)
SPLAT = Splat.from_colors(np.random.default_rng(0).normal(scale=0.3, size=(24, 3)), np.full((24, 3), 0.6), 0.1, 0.8)
IMAGE_BYTES = st.one_of(
    st.sampled_from([PHOTO_PNG, RGB_PNG]), mutated([PHOTO_PNG, RGB_PNG], max_ops=2), st.binary(max_size=64)
)
# Mostly the tenant that owns the jobs (so that requests get past the tenant check), sometimes any text.
TENANTS = st.one_of(
    st.just("acme"),
    st.just("acme"),
    st.just("beta"),
    st.text(string.ascii_letters + string.digits + string.punctuation + " ", max_size=70),
)


def sizes(valid_max: int = SIZE) -> st.SearchStrategy[int]:
    """A view side: small and valid, zero (the default), or beyond the limit."""
    return st.one_of(st.integers(1, valid_max), st.just(0), st.integers(MAX_IMAGE_SIDE + 1, 2**32 - 1))


def knob(cheap: int, limit: int) -> st.SearchStrategy[int]:
    """A compute knob (steps): 1..``cheap`` or above ``limit`` (0, the default, can be expensive)."""
    return st.one_of(st.integers(1, cheap), st.integers(limit + 1, 2**32 - 1))


CAMERA_OVERRIDES = {
    "glimpse3d.v1.Intrinsics.width": sizes(), "glimpse3d.v1.Intrinsics.height": sizes(),
    "glimpse3d.v1.OrbitView.width": sizes(), "glimpse3d.v1.OrbitView.height": sizes(),
}  # fmt: skip
CAMERAS = st.one_of(st.just(camera_to_proto(CAMERA)), messages(common_pb2.Camera, CAMERA_OVERRIDES))


# ---- the gateway ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(background: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("fuzz-gateway")
    extra: dict[str, Any] = {}

    async def body(stack: AsyncExitStack) -> int:
        config = GatewayConfig(db_path=root / "jobs.sqlite3", artifacts_url=str(root / "artifacts"), queue_size=8)
        store = JobStore(config.db_path)
        stack.callback(store.close)
        artifacts = FileArtifactStore(root / "artifacts")
        app = GatewayApp(config, store, artifacts, QuickPipeline(artifacts, SPLAT, CAMERA))
        await app.start()
        stack.push_async_callback(app.close)
        server, port = create_server(
            [(glimpse3d_pb2_grpc.add_Glimpse3DServicer_to_server, Glimpse3DServicer(app))],
            [SERVICE_NAME],
            metrics_port=None,
        )
        await server.start()
        stack.push_async_callback(server.stop, 0)
        job = await app.create_job("acme", PHOTO_PNG)
        for _ in range(200):  # the quick pipeline finishes in milliseconds
            if (job := await app.get_job("acme", job.name)).done:
                break
            await asyncio.sleep(0.02)
        extra["names"] = [job.name, f"{job.name}/versions/1", f"{job.name}/versions/2", "jobs/missing"]
        extra["image_ref"] = artifact_to_proto(job.input_image)
        return port

    with serving(background, body) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Server(channel, extra)


def gateway_requests(server: Server) -> st.SearchStrategy[tuple[str, Any, str]]:
    names = st.one_of(st.sampled_from(server.extra["names"]), TEXT)
    over = {
        **CAMERA_OVERRIDES,
        "glimpse3d.v1.CreateJobRequest.image_data": IMAGE_BYTES,
        "glimpse3d.v1.PreviewMatteRequest.image_data": IMAGE_BYTES,
        "glimpse3d.v1.CreateJobRequest.mask_data": st.one_of(st.just(MASK_PNG), IMAGE_BYTES),
        "glimpse3d.v1.CreateJobRequest.image": st.one_of(
            st.just(server.extra["image_ref"]), messages(common_pb2.ArtifactRef)
        ),
        "glimpse3d.v1.Camera": CAMERAS,
        **{
            f"glimpse3d.v1.{m}.name": names
            for m in ("GetJobRequest", "CancelJobRequest", "EnhanceRequest", "ExportRequest", "WatchJobRequest",
                      "AddPhotoRequest", "RestoreVersionRequest")
        },
    }
    methods = {
        "CreateJob": glimpse3d_pb2.CreateJobRequest,
        "GetJob": glimpse3d_pb2.GetJobRequest,
        "ListJobs": glimpse3d_pb2.ListJobsRequest,
        "CancelJob": glimpse3d_pb2.CancelJobRequest,
        "Enhance": glimpse3d_pb2.EnhanceRequest,
        "Export": glimpse3d_pb2.ExportRequest,
        "PreviewMatte": glimpse3d_pb2.PreviewMatteRequest,
        "WatchJob": glimpse3d_pb2.WatchJobRequest,
        "AddPhoto": glimpse3d_pb2.AddPhotoRequest,
        "RestoreVersion": glimpse3d_pb2.RestoreVersionRequest,
    }
    return st.sampled_from(sorted(methods)).flatmap(
        lambda m: st.tuples(st.just(m), messages(methods[m], over), TENANTS)
    )


def test_gateway_requests(gateway: Server) -> None:
    stub = glimpse3d_pb2_grpc.Glimpse3DStub(gateway.channel)

    @fuzz(300)
    @given(gateway_requests(gateway))
    def body(case: tuple[str, Any, str]) -> None:
        method, request, tenant = case
        metadata = (("x-glimpse3d-tenant", tenant),)
        if method == "WatchJob":  # the first event (the snapshot) or the error is enough
            check_call(lambda: next(iter(stub.WatchJob(request, metadata=metadata, timeout=CALL_TIMEOUT_S))))
        else:
            check_call(lambda: getattr(stub, method)(request, metadata=metadata, timeout=CALL_TIMEOUT_S))

    body()


def test_gateway_export_of_a_fuzzed_job_still_reads(gateway: Server) -> None:
    """After the fuzzing the server still answers, and the job it made first exports and parses."""
    stub = glimpse3d_pb2_grpc.Glimpse3DStub(gateway.channel)
    name = gateway.extra["names"][0]
    job = stub.GetJob(
        glimpse3d_pb2.GetJobRequest(name=name), metadata=(("x-glimpse3d-tenant", "acme"),), timeout=CALL_TIMEOUT_S
    )
    assert job.done and job.versions and job.versions[0].name == f"{name}/versions/1"
    with pytest.raises(grpc.RpcError) as err:
        stub.Export(
            glimpse3d_pb2.ExportRequest(name=name, format=99),  # pyright: ignore[reportArgumentType]
            metadata=(("x-glimpse3d-tenant", "acme"),),
            timeout=CALL_TIMEOUT_S,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


# ---- the five services ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[FileArtifactStore, dict[str, Any]]:
    """A store holding one valid input of every kind the services read."""
    store = FileArtifactStore(tmp_path_factory.mktemp("fuzz-services") / "artifacts")
    depth = np.where(PHOTO[..., 3] > 0, 2.5, 0.0).astype(np.float32)
    refs = {
        "image": store.put(PHOTO_PNG, "image/png"), "rgb": store.put(RGB_PNG, "image/png"),
        "depth": store.put(encode_npy(depth), "application/x-npy"),
        "mask": store.put(encode_npy((PHOTO[..., 3] > 0).astype(np.float32)), "application/x-npy"),
        "splat": store.put(splat_to_ply_bytes(SPLAT), "application/x-glimpse3d-splat+ply"),
        "confidence": store.put(encode_npy(np.full(len(SPLAT), 0.5, np.float32)), "application/x-npy"),
    }  # fmt: skip
    return store, {k: artifact_to_proto(v) for k, v in refs.items()}


SERVICE_RPCS: dict[str, list[tuple[str, type[Any]]]] = {
    "depth": [("Estimate", depth_pb2.EstimateDepthRequest), ("Matte", depth_pb2.MatteRequest)],
    "reconstruction": [
        ("Reconstruct", reconstruction_pb2.ReconstructRequest),
        ("Render", reconstruction_pb2.RenderRequest),
    ],
    "multiview": [("Generate", multiview_pb2.GenerateViewsRequest)],
    "diffusion": [("Enhance", diffusion_pb2.EnhanceViewRequest)],
    "backprojection": [("Refine", backprojection_pb2.RefineRequest), ("Pose", backprojection_pb2.PoseRequest)],
}
# The tenant the gateway names on every stage call; the fixture's artifacts (stored without a tenant) are its.
SERVICE_TENANT = (("x-glimpse3d-tenant", "default"),)
SERVICE_EXAMPLES = {"depth": 80, "reconstruction": 80, "multiview": 60, "diffusion": 60, "backprojection": 50}


def service_requests(rpcs: list[tuple[str, type[Any]]], refs: dict[str, Any]) -> st.SearchStrategy[tuple[str, Any]]:
    over = {
        **CAMERA_OVERRIDES,
        "glimpse3d.v1.ArtifactRef": st.one_of(st.sampled_from(list(refs.values())), messages(common_pb2.ArtifactRef)),
        "glimpse3d.v1.Camera": CAMERAS,
        "glimpse3d.v1.ReconstructRequest.fit_steps": knob(3, MAX_FIT_STEPS),
        "glimpse3d.v1.ReconstructRequest.max_gaussians": st.one_of(
            st.integers(0, 64), st.integers(MAX_GAUSSIANS + 1, 2**32 - 1)
        ),
        "glimpse3d.v1.GenerateViewsRequest.steps": knob(2, MAX_MULTIVIEW_STEPS),
        "glimpse3d.v1.EnhanceViewRequest.steps": knob(2, MAX_DIFFUSION_STEPS),
        "glimpse3d.v1.RefineOptions.steps": knob(3, MAX_REFINE_STEPS),
    }
    return st.sampled_from(rpcs).flatmap(lambda rpc: st.tuples(st.just(rpc[0]), messages(rpc[1], over)))


@pytest.mark.parametrize("name", sorted(SERVICE_RPCS))
def test_service_requests(
    name: str, background: LoopThread, artifacts: tuple[FileArtifactStore, dict[str, Any]]
) -> None:
    store, refs = artifacts
    module, stub_cls = MODULES[name]

    async def body(stack: AsyncExitStack) -> int:
        settings = ServiceSettings(backend="", max_concurrency=1, max_waiting=4)
        port, _ = await stack.enter_async_context(
            running_in_process(module.build, [module.SERVICE_NAME], settings, store)
        )
        return port

    with serving(background, body) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        _fuzz_service(name, stub_cls(channel), refs)


def _fuzz_service(name: str, stub: Any, refs: dict[str, Any]) -> None:
    @fuzz(SERVICE_EXAMPLES[name], deadline=None)
    @given(service_requests(SERVICE_RPCS[name], refs))
    def fuzz_service(case: tuple[str, Any]) -> None:
        method, request = case
        check_call(lambda: getattr(stub, method)(request, metadata=SERVICE_TENANT, timeout=CALL_TIMEOUT_S))

    fuzz_service()
    # Still serving, and a valid request still works after all that.
    valid = {
        "depth": ("Matte", depth_pb2.MatteRequest(image=refs["image"])),
        "reconstruction": (
            "Render",
            reconstruction_pb2.RenderRequest(
                splat=refs["splat"], views=[common_pb2.ViewSpec(camera=camera_to_proto(CAMERA))]
            ),
        ),
        "multiview": (
            "Generate",
            multiview_pb2.GenerateViewsRequest(
                image=refs["image"],
                input_camera=camera_to_proto(CAMERA),
                splat=refs["splat"],
                views=[common_pb2.ViewSpec(orbit=common_pb2.OrbitView(azimuth_deg=90, width=SIZE, height=SIZE))],
            ),
        ),
        "diffusion": ("Enhance", diffusion_pb2.EnhanceViewRequest(view=refs["rgb"], steps=1)),
        "backprojection": (
            "Refine",
            backprojection_pb2.RefineRequest(
                splat=refs["splat"],
                view=refs["rgb"],
                camera=camera_to_proto(CAMERA),
                options=backprojection_pb2.RefineOptions(steps=2),
            ),
        ),
    }[name]
    assert getattr(stub, valid[0])(valid[1], metadata=SERVICE_TENANT, timeout=CALL_TIMEOUT_S) is not None

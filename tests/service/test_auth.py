"""Authentication of the gateway: bearer tokens (JWT against a JWKS file), API keys, event-stream
tickets and the loopback rule, through a real gRPC server and the real HTTP facade on 127.0.0.1.

The tokens are minted here with a throwaway RSA key whose public half is the JWKS file the gateway
reads, so every expected answer is known: the right issuer, audience and key pass, anything else is
refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jwt.algorithms import RSAAlgorithm
from service_harness import gateway_listeners
from test_gateway_app import TestPipeline, expect_error, png

from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.config import ConfigError, ServerConfig
from glimpse3d.gateway import auth as auth_module
from glimpse3d.gateway import cli
from glimpse3d.gateway.app import GatewayApp
from glimpse3d.gateway.auth import (
    Authenticator,
    AuthInterceptor,
    TicketSigner,
    authenticator_from_config,
    gateway_hosts,
    hash_key,
    is_loopback,
)
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.http import HttpContext
from glimpse3d.gateway.server import serve
from glimpse3d.gateway.servicer import Glimpse3DServicer
from glimpse3d.gateway.store import JobStore
from glimpse3d.v1 import glimpse3d_pb2, glimpse3d_pb2_grpc

PB = glimpse3d_pb2
ISSUER = "https://login.example.test/realms/acme"
AUDIENCE = "glimpse3d-gateway"
API = "/api/v1"
TIMEOUT = 10.0


@dataclass
class Keys:
    private: Any
    other_private: Any  # not in the JWKS
    jwks_path: Path

    def token(
        self,
        tenant: str | None = "acme",
        *,
        iss: str = ISSUER,
        aud: str = AUDIENCE,
        exp_in: float = 300,
        key: Any = None,
        kid: str = "k1",
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": iss,
            "aud": aud,
            "sub": f"svc-{tenant}",
            "iat": now,
            "exp": now + int(exp_in),
            **claims,
        }
        if tenant is not None:
            body["tenant"] = tenant
        return jwt.encode(body, key or self.private, algorithm="RS256", headers={"kid": kid})


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk.update(kid="k1", use="sig", alg="RS256")
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return Keys(private, other, path)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def md(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(headers.items())


@dataclass
class Env:
    app: GatewayApp
    stub: glimpse3d_pb2_grpc.Glimpse3DStub
    channel: grpc.aio.Channel
    http: httpx.AsyncClient
    context: HttpContext
    grpc_addr: str


def auth_config(tmp_path: Path, keys: Keys, **overrides: Any) -> GatewayConfig:
    values: dict[str, Any] = dict(
        db_path=tmp_path / "jobs.sqlite3",
        artifacts_url=str(tmp_path / "artifacts"),
        auth_jwks=str(keys.jwks_path),
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
    )
    values.update(overrides)
    return GatewayConfig(**values)


@asynccontextmanager
async def gateway(config: GatewayConfig, tickets: TicketSigner | None = None) -> AsyncIterator[Env]:
    """The gateway as serve() wires it (auth from the config, loopback listeners), with a test pipeline."""
    auth = authenticator_from_config(config, ["127.0.0.1", "127.0.0.1"])
    store = JobStore(config.db_path)
    artifacts = FileArtifactStore(Path(config.artifacts_url))
    app = GatewayApp(config, store, artifacts, TestPipeline(artifacts))
    await app.start()
    tickets = tickets or TicketSigner()
    context = HttpContext(app, artifacts, heartbeat_s=0.2, auth=auth, tickets=tickets)
    try:
        async with gateway_listeners(Glimpse3DServicer(app, tickets), context,
                                     Path(config.db_path).parent / "no-web", TIMEOUT,
                                     [AuthInterceptor(auth)] if auth is not None else []) as listeners:
            yield Env(app, listeners.stub, listeners.channel, listeners.http, context, listeners.grpc_addr)
    finally:
        await app.close()
        store.close()


def cli_main(argv: list[str]) -> tuple[int, str, str]:
    """``glimpse3d ARGV`` in this thread: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


async def create(env: Env, headers: dict[str, str]) -> PB.Job:
    return await env.stub.CreateJob(PB.CreateJobRequest(image_data=png()), metadata=md(headers), timeout=TIMEOUT)


async def wait_done(env: Env, name: str, headers: dict[str, str]) -> PB.Job:
    deadline = time.monotonic() + TIMEOUT
    while True:
        job = await env.stub.GetJob(PB.GetJobRequest(name=name), metadata=md(headers), timeout=TIMEOUT)
        if job.done:
            return job
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


# ---- gRPC -----------------------------------------------------------------------------------------


def test_grpc_bearer_tokens_are_verified(tmp_path: Path, keys: Keys) -> None:
    async def body() -> None:
        async with gateway(auth_config(tmp_path, keys)) as env:
            listing = PB.ListJobsRequest()
            err = await expect_error(env.stub.ListJobs(listing, timeout=TIMEOUT), grpc.StatusCode.UNAUTHENTICATED)
            assert "requires authentication" in (err.details() or "")
            cases = {
                "expired": keys.token(exp_in=-120),  # beyond the 30 s leeway
                "audience": keys.token(aud="someone-else"),
                "issuer": keys.token(iss="https://evil.example.test"),
                "signature": keys.token(key=keys.other_private),
                "unknown kid": keys.token(kid="k9"),
                "tenant claim": keys.token(tenant=None),
                "garbage": "not.a.jwt",
            }
            messages = {}
            for case, token in cases.items():
                err = await expect_error(
                    env.stub.ListJobs(listing, metadata=md(bearer(token)), timeout=TIMEOUT),
                    grpc.StatusCode.UNAUTHENTICATED,
                )
                messages[case] = err.details() or ""
            assert "expired" in messages["expired"]
            assert "audience" in messages["audience"]
            assert "issuer" in messages["issuer"]
            assert "signature" in messages["signature"]
            assert "'tenant' claim" in messages["tenant claim"]
            # within the leeway an expired token still passes (clock skew)
            await env.stub.ListJobs(listing, metadata=md(bearer(keys.token(exp_in=-5))), timeout=TIMEOUT)

            # the tenant is the claim's: a job created without the tenant header belongs to acme
            acme = bearer(keys.token("acme"))
            job = await create(env, acme)
            jobs, _ = await env.app.list_jobs("acme", 10, "")
            assert [j.name for j in jobs] == [job.name]
            assert (await env.app.list_jobs("default", 10, ""))[0] == []
            # naming one's own tenant is fine; naming another is PERMISSION_DENIED
            same = {**acme, "x-glimpse3d-tenant": "acme"}
            assert (await env.stub.ListJobs(listing, metadata=md(same), timeout=TIMEOUT)).jobs[0].name == job.name
            other = {**acme, "x-glimpse3d-tenant": "globex"}
            await expect_error(
                env.stub.ListJobs(listing, metadata=md(other), timeout=TIMEOUT),
                grpc.StatusCode.PERMISSION_DENIED,
                "x-glimpse3d-tenant",
            )
            await expect_error(
                env.stub.CreateJob(PB.CreateJobRequest(image_data=png()), metadata=md(other), timeout=TIMEOUT),
                grpc.StatusCode.PERMISSION_DENIED,
            )
            # health stays open to probes
            health: Any = health_pb2_grpc.HealthStub(env.channel)  # the stubs type it for sync channels
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

    run(body())


def test_grpc_tenants_cannot_reach_each_others_jobs(tmp_path: Path, keys: Keys) -> None:
    async def body() -> None:
        async with gateway(auth_config(tmp_path, keys)) as env:
            acme, globex = bearer(keys.token("acme")), bearer(keys.token("globex"))
            job = await create(env, acme)
            await wait_done(env, job.name, acme)
            name = PB.GetJobRequest(name=job.name)
            NF = grpc.StatusCode.NOT_FOUND
            await expect_error(env.stub.GetJob(name, metadata=md(globex), timeout=TIMEOUT), NF)
            await expect_error(
                env.stub.CancelJob(PB.CancelJobRequest(name=job.name), metadata=md(globex), timeout=TIMEOUT), NF
            )
            await expect_error(
                env.stub.Export(
                    PB.ExportRequest(name=job.name, format=PB.ExportRequest.PLY), metadata=md(globex), timeout=TIMEOUT
                ),
                NF,
            )
            watch = env.stub.WatchJob(PB.WatchJobRequest(name=job.name), metadata=md(globex), timeout=TIMEOUT)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await watch.read()
            assert info.value.code() == NF
            assert (
                list((await env.stub.ListJobs(PB.ListJobsRequest(), metadata=md(globex), timeout=TIMEOUT)).jobs) == []
            )
            # the owner still gets all of it
            assert (await env.stub.GetJob(name, metadata=md(acme), timeout=TIMEOUT)).name == job.name
            export = await env.stub.Export(
                PB.ExportRequest(name=job.name, format=PB.ExportRequest.PLY), metadata=md(acme), timeout=TIMEOUT
            )
            assert export.download_url
            # the command-line client sends --token / --api-key (or GLIMPSE3D_TOKEN) as metadata
            addr = env.grpc_addr
            code, out, err = await asyncio.to_thread(cli_main, ["--addr", addr, "--token", keys.token("acme"), "jobs"])
            assert code == 0 and out.startswith(job.name), (out, err)
            code, out, _ = await asyncio.to_thread(cli_main, ["--addr", addr, "--token", keys.token("globex"), "jobs"])
            assert code == 0 and out == ""
            code, out, err = await asyncio.to_thread(cli_main, ["--addr", addr, "jobs"])
            assert code == 1 and "UNAUTHENTICATED" in err
            code, _, err = await asyncio.to_thread(
                cli_main, ["--addr", addr, "--token", keys.token("acme"), "--tenant", "globex", "jobs"]
            )
            assert code == 1 and "PERMISSION_DENIED" in err

    run(body())


# ---- HTTP -----------------------------------------------------------------------------------------


def test_http_requires_credentials_and_keeps_tenants_apart(tmp_path: Path, keys: Keys) -> None:
    async def body() -> None:
        async with gateway(auth_config(tmp_path, keys)) as env:
            c = env.http
            answer = await c.get(f"{API}/jobs")
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert answer.json()["error"]["code"] == "UNAUTHENTICATED"
            assert (await c.get(f"{API}/jobs", headers=bearer(keys.token(aud="x")))).status_code == 401
            assert (await c.get(f"{API}/jobs", headers={"authorization": "Basic dTpw"})).status_code == 401
            # probes, the spec and the web workspace stay open
            assert (await c.get(f"{API}/healthz")).status_code == 200
            assert (await c.get(f"{API}/openapi.json")).status_code == 200
            assert (await c.get("/")).status_code == 200

            acme, globex = bearer(keys.token("acme")), bearer(keys.token("globex"))
            created = await c.post(f"{API}/jobs", files={"photo": ("p.png", png(), "image/png")}, headers=acme)
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]
            await wait_done(env, f"jobs/{job_id}", acme)
            forbidden = await c.get(f"{API}/jobs", headers={**acme, "X-Glimpse3D-Tenant": "globex"})
            assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "PERMISSION_DENIED"
            assert (await c.get(f"{API}/jobs?tenant=globex", headers=acme)).status_code == 403
            assert [j["id"] for j in (await c.get(f"{API}/jobs", headers=acme)).json()["jobs"]] == [job_id]
            assert (await c.get(f"{API}/jobs", headers=globex)).json()["jobs"] == []
            for method, path in (
                ("GET", f"/jobs/{job_id}"),
                ("GET", f"/jobs/{job_id}/versions"),
                ("GET", f"/jobs/{job_id}/versions/1/download"),
                ("GET", f"/jobs/{job_id}/photo"),
                ("POST", f"/jobs/{job_id}/cancel"),
                ("POST", f"/jobs/{job_id}/events/ticket"),
            ):
                theirs = await c.request(method, API + path, headers=globex)
                assert theirs.status_code == 404, (path, theirs.status_code)
                nobody = await c.request(method, API + path)
                assert nobody.status_code == 401, (path, nobody.status_code)
            download = await c.get(f"{API}/jobs/{job_id}/versions/1/download", headers=acme)
            assert download.status_code == 200 and download.content.startswith(b"ply")

    run(body())


def test_api_keys_minted_by_the_cli(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    keys_file = tmp_path / "keys" / "api-keys.json"
    assert (
        auth_module.main(["create-key", "--tenant", "acme", "--name", "render-farm", "--keys-file", str(keys_file)])
        == 0
    )
    key = capsys.readouterr().out.strip()
    assert key.startswith("g3d_") and len(key) > 40
    stored = keys_file.read_text()
    assert key not in stored and key[4:] not in stored  # only the hash is kept
    assert json.loads(stored)["keys"][0]["sha256"] == hash_key(key)
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert auth_module.main(["create-key", "--tenant", "bad tenant!", "--keys-file", str(keys_file)]) == 2

    async def body() -> None:
        config = auth_config(tmp_path, keys, auth_mode="any", auth_api_keys_file=keys_file)
        async with gateway(config) as env:
            c = env.http
            assert (await c.get(f"{API}/jobs", headers={"X-API-Key": key})).status_code == 200
            assert (await c.get(f"{API}/jobs", headers={"Authorization": f"ApiKey {key}"})).status_code == 200
            wrong = await c.get(f"{API}/jobs", headers={"X-API-Key": key[:-2] + "xx"})
            assert wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
            job = await create(env, {"x-api-key": key})
            assert [j.name for j in (await env.app.list_jobs("acme", 10, ""))[0]] == [job.name]
            await expect_error(
                env.stub.ListJobs(PB.ListJobsRequest(), metadata=(("x-api-key", "g3d_nope"),), timeout=TIMEOUT),
                grpc.StatusCode.UNAUTHENTICATED,
            )
            # bearer tokens work next to keys in mode "any"
            assert (await c.get(f"{API}/jobs", headers=bearer(keys.token("acme")))).status_code == 200
            # a key minted while the gateway runs is accepted at once
            assert auth_module.main(["create-key", "--tenant", "globex", "--keys-file", str(keys_file)]) == 0
            second = capsys.readouterr().out.strip()
            listed = await c.get(f"{API}/jobs", headers={"X-API-Key": second})
            assert listed.status_code == 200 and listed.json()["jobs"] == []

    run(body())


async def read_events(response: httpx.Response) -> list[str]:
    kinds = []
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kinds.append(line.removeprefix("event: "))
            if kinds[-1] == "end":
                break
    return kinds


def test_event_stream_tickets(tmp_path: Path, keys: Keys) -> None:
    async def body() -> None:
        async with gateway(auth_config(tmp_path, keys), tickets=TicketSigner(ttl_s=1)) as env:
            c = env.http
            acme = bearer(keys.token("acme"))
            first = await create(env, acme)
            second = await create(env, acme)
            await wait_done(env, first.name, acme)
            first_id, second_id = first.name.removeprefix("jobs/"), second.name.removeprefix("jobs/")
            assert (await c.get(f"{API}/jobs/{first_id}/events")).status_code == 401
            minted = await c.post(f"{API}/jobs/{first_id}/events/ticket", headers=acme)
            assert minted.status_code == 200, minted.text
            ticket = minted.json()["ticket"]
            assert minted.json()["events_url"] == f"{API}/jobs/{first_id}/events?ticket={ticket}"
            async with c.stream("GET", minted.json()["events_url"]) as stream:  # no Authorization header
                assert stream.status_code == 200
                assert await read_events(stream) == ["job", "end"]
            wrong_job = await c.get(f"{API}/jobs/{second_id}/events?ticket={ticket}")
            assert wrong_job.status_code == 403
            other_tenant = await c.get(f"{API}/jobs/{first_id}/events?ticket={ticket}&tenant=globex")
            assert other_tenant.status_code == 403
            forged = TicketSigner("another replica's secret, 32 bytes or more", ttl_s=60).mint("acme", first_id)
            assert (await c.get(f"{API}/jobs/{first_id}/events?ticket={forged}")).status_code == 401
            await asyncio.sleep(2.1)
            expired = await c.get(f"{API}/jobs/{first_id}/events?ticket={ticket}")
            assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
            # the header still works for fetch-based readers
            async with c.stream("GET", f"{API}/jobs/{first_id}/events", headers=acme) as stream:
                assert stream.status_code == 200 and (await read_events(stream))[0] == "job"

    run(body())


# ---- the loopback rule ----------------------------------------------------------------------------


def test_loopback_without_auth_serves_the_named_tenant(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = GatewayConfig(db_path=tmp_path / "jobs.sqlite3", artifacts_url=str(tmp_path / "artifacts"))
    with caplog.at_level(logging.WARNING, logger="glimpse3d.gateway.auth"):
        assert authenticator_from_config(config, ["127.0.0.1", "localhost", "::1"]) is None
    assert "AUTHENTICATION IS OFF" in caplog.text and "loopback" in caplog.text

    async def body() -> None:
        async with gateway(config) as env:
            job = await create(env, {"x-glimpse3d-tenant": "acme"})
            assert [j.name for j in (await env.app.list_jobs("acme", 10, ""))[0]] == [job.name]
            answer = await env.http.get(f"{API}/jobs", headers={"X-Glimpse3D-Tenant": "acme"})
            assert [j["name"] for j in answer.json()["jobs"]] == [job.name]
            assert (await env.http.get(f"{API}/jobs")).json()["jobs"] == []  # the default tenant's

    run(body())


def test_non_loopback_without_auth_refuses_to_start(tmp_path: Path, keys: Keys) -> None:
    base: dict[str, Any] = dict(db_path=tmp_path / "jobs.sqlite3", artifacts_url=str(tmp_path / "artifacts"))
    assert [is_loopback(h) for h in ("127.0.0.1", "127.5.0.1", "::1", "[::1]", "localhost")] == [True] * 5
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "gateway.example.test")] == [False] * 4
    with pytest.raises(ConfigError, match=r"refusing to start without authentication on 0\.0\.0\.0"):
        authenticator_from_config(GatewayConfig(**base), ["127.0.0.1", "0.0.0.0"])
    with pytest.raises(ConfigError):  # loopback, but unauthenticated loopback switched off
        authenticator_from_config(GatewayConfig(**base, auth_allow_unauthenticated_on_loopback=False), ["127.0.0.1"])
    assert (
        authenticator_from_config(GatewayConfig(**base, auth_insecure_allow_unauthenticated=True), ["0.0.0.0"]) is None
    )
    hosts = gateway_hosts(ServerConfig(host="127.0.0.1"), GatewayConfig(**base, http_host="0.0.0.0"))
    assert hosts == ["127.0.0.1", "0.0.0.0"]
    assert gateway_hosts(ServerConfig(host="127.0.0.1"), GatewayConfig(**base, http_host="0.0.0.0", http_port=-1)) == [
        "127.0.0.1"
    ]
    # with auth configured, any address is fine
    configured = auth_config(tmp_path, keys)
    assert isinstance(authenticator_from_config(configured, ["0.0.0.0"]), Authenticator)
    # half-configured JWT settings name what is missing
    with pytest.raises(ConfigError, match="auth_issuer"):
        authenticator_from_config(auth_config(tmp_path, keys, auth_issuer=""), ["0.0.0.0"])
    with pytest.raises(ConfigError, match="https"):
        authenticator_from_config(auth_config(tmp_path, keys, auth_jwks="http://idp.example.test/jwks"), ["::1"])
    with pytest.raises(ConfigError, match="auth_api_keys_file"):
        authenticator_from_config(auth_config(tmp_path, keys, auth_mode="api_key"), ["::1"])
    # the gateway process itself stops before serving anything
    with pytest.raises(ConfigError, match="refusing to start"):
        asyncio.run(
            asyncio.wait_for(
                serve(ServerConfig(host="0.0.0.0", port=0, metrics_port=-1), GatewayConfig(**base, http_port=-1)), 20
            )
        )

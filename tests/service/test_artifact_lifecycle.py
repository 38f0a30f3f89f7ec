"""The S3 artifact store at start-up, against a real S3 server (moto on loopback): the bucket is created
when absent, start-up is idempotent and safe when replicas race, the lifecycle rule that expires
temporary artifacts is installed next to (never instead of) the bucket's other rules, and an
unreachable endpoint stops the gateway and the services at once with Unavailable naming it.

Moto stores lifecycle rules but does not expire objects by time, so the tests check the rule itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from s3_server import S3Server, free_port, s3_server_fixture  # noqa: F401  (registers the s3_server fixture)

from glimpse3d.core.artifacts import (
    DEFAULT_TEMP_EXPIRY_DAYS,
    ENV_ARTIFACTS_URL,
    ENV_S3_ACCESS_KEY,
    ENV_S3_ENDPOINT,
    ENV_S3_SECRET_KEY,
    ENV_S3_TEMP_EXPIRY_DAYS,
    FileArtifactStore,
    S3ArtifactStore,
    content_key,
    store_from_env,
)
from glimpse3d.core.config import ServerConfig
from glimpse3d.core.errors import InvalidInput, Unavailable
from glimpse3d.core.service import ServiceSettings
from glimpse3d.core.service import serve as serve_service

PREFIX = "glimpse/artifacts"
FOREIGN = Rule(ENABLED, rule_filter=Filter(prefix="logs/"), rule_id="keep-logs-30d", expiration=Expiration(days=30))
RACE_REGION = "eu-west-1"
QUICK_S = 3.0  # an unreachable endpoint must be reported within this


def new_bucket() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


def raw_client(server: S3Server) -> Minio:
    return Minio(server.endpoint, access_key=server.access_key, secret_key=server.secret_key, secure=False,
                 region=server.region)


def make_store(server: S3Server, bucket: str, prefix: str = PREFIX, **options: object) -> S3ArtifactStore:
    options = {"region": server.region, **options}
    return S3ArtifactStore(server.endpoint, server.access_key, server.secret_key, bucket, prefix=prefix,
                           **options)  # type: ignore[arg-type]


def rules_by_id(client: Minio, bucket: str) -> dict[str | None, Rule]:
    config = client.get_bucket_lifecycle(bucket)
    return {rule.rule_id: rule for rule in (config.rules if config is not None else [])}


def s3_env(server: S3Server | None, bucket: str, **extra: str) -> dict[str, str]:
    endpoint = server.url if server is not None else f"127.0.0.1:{free_port()}"
    return {ENV_ARTIFACTS_URL: f"s3://{bucket}/{PREFIX}", ENV_S3_ENDPOINT: endpoint,
            ENV_S3_ACCESS_KEY: "testing-access-key", ENV_S3_SECRET_KEY: "testing-secret-key", **extra}


# ---- bucket and lifecycle rule at start-up -----------------------------------------------------------


def test_start_creates_the_bucket_and_the_expiry_rule(s3_server: S3Server) -> None:
    client, bucket = raw_client(s3_server), new_bucket()
    store = make_store(s3_server, bucket)
    assert not client.bucket_exists(bucket)
    store.ensure_ready()
    assert client.bucket_exists(bucket)
    rule = rules_by_id(client, bucket)[store.lifecycle_rule_id]
    assert store.lifecycle_rule_id == f"glimpse3d-temp-expiry:{PREFIX}"
    assert rule.status == ENABLED
    assert rule.rule_filter is not None and rule.rule_filter.prefix == f"{PREFIX}/tmp/" == store.temp_prefix
    assert rule.expiration is not None and rule.expiration.days == DEFAULT_TEMP_EXPIRY_DAYS == 7
    assert (rule.transition, rule.abort_incomplete_multipart_upload) == (None, None)


def test_start_is_idempotent_and_keeps_foreign_rules(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    client, bucket = raw_client(s3_server), new_bucket()
    client.make_bucket(bucket)
    client.set_bucket_lifecycle(bucket, LifecycleConfig([FOREIGN]))
    store = make_store(s3_server, bucket, temp_expiry_days=3)
    store.ensure_ready()
    rules = rules_by_id(client, bucket)
    assert set(rules) == {"keep-logs-30d", store.lifecycle_rule_id}
    assert rules["keep-logs-30d"] == FOREIGN
    assert rules[store.lifecycle_rule_id].expiration == Expiration(days=3)

    writes: list[str] = []
    for name in ("make_bucket", "set_bucket_lifecycle", "delete_bucket_lifecycle"):
        monkeypatch.setattr(store._client, name, lambda *_a, _n=name, **_k: writes.append(_n))
    store.ensure_ready()
    make_store(s3_server, bucket, temp_expiry_days=3).ensure_ready()  # a second replica starting
    assert writes == []  # everything already in place: nothing written
    assert rules_by_id(client, bucket) == rules


def test_changed_expiry_replaces_the_rule_and_zero_removes_it(s3_server: S3Server) -> None:
    client, bucket = raw_client(s3_server), new_bucket()
    make_store(s3_server, bucket).ensure_ready()
    other = make_store(s3_server, bucket, prefix="other-app", temp_expiry_days=1)  # another store, same bucket
    other.ensure_ready()
    client.set_bucket_lifecycle(bucket, LifecycleConfig([*rules_by_id(client, bucket).values(), FOREIGN]))

    longer = make_store(s3_server, bucket, temp_expiry_days=30)
    longer.ensure_ready()
    rules = rules_by_id(client, bucket)
    assert set(rules) == {longer.lifecycle_rule_id, other.lifecycle_rule_id, "keep-logs-30d"}
    assert rules[longer.lifecycle_rule_id].expiration == Expiration(days=30)
    assert rules[other.lifecycle_rule_id].rule_filter == Filter(prefix="other-app/tmp/")

    make_store(s3_server, bucket, temp_expiry_days=0).ensure_ready()
    assert set(rules_by_id(client, bucket)) == {other.lifecycle_rule_id, "keep-logs-30d"}

    only_ours = new_bucket()
    make_store(s3_server, only_ours).ensure_ready()
    make_store(s3_server, only_ours, temp_expiry_days=0).ensure_ready()
    assert client.get_bucket_lifecycle(only_ours) is None  # no rule left: the configuration is deleted


def test_replicas_racing_to_create_the_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # Outside us-east-1 creating an existing bucket answers BucketAlreadyOwnedByYou (there it succeeds).
    client, bucket = raw_client(s3_server), new_bucket()
    stores = [make_store(s3_server, bucket, region=RACE_REGION) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def start(store: S3ArtifactStore) -> None:
        try:
            barrier.wait(timeout=10)
            store.ensure_ready()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert list(rules_by_id(client, bucket)) == [stores[0].lifecycle_rule_id]

    # The loser of the race: the bucket appears between the existence check and the creation.
    late = make_store(s3_server, bucket, region=RACE_REGION)
    monkeypatch.setattr(late._client, "bucket_exists", lambda _bucket: False)
    late.ensure_ready()
    assert late.get(late.put(b"after the race", "text/plain")) == b"after the race"


def test_a_rule_the_sdk_cannot_round_trip_is_left_alone(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A legacy rule (top-level Prefix, no Filter) would lose its prefix through the minio SDK and then
    expire the whole bucket: the store leaves such a configuration as it is and says so."""
    bucket = new_bucket()
    legacy = {"ID": "legacy-logs", "Prefix": "logs/", "Status": "Enabled", "Expiration": {"Days": 30}}
    s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name=s3_server.region,
                      aws_access_key_id=s3_server.access_key, aws_secret_access_key=s3_server.secret_key)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [legacy]})
    store = make_store(s3_server, bucket)
    with caplog.at_level(logging.WARNING, logger="glimpse3d.core.artifacts.s3"):
        store.ensure_ready()
    assert s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"] == [legacy]
    assert "legacy-logs" in caplog.text and f"{PREFIX}/tmp/" in caplog.text
    assert store.get(store.put(b"still usable", "text/plain")) == b"still usable"


# ---- where temporary and durable artifacts land ------------------------------------------------------


def test_temporary_objects_match_the_rule_and_durable_ones_do_not(s3_server: S3Server) -> None:
    client, bucket = raw_client(s3_server), new_bucket()
    store = make_store(s3_server, bucket)
    store.ensure_ready()
    durable = store.put(b"splat bytes", "application/x-glimpse3d-splat+ply")
    temporary = store.put(b"rendered view", "image/png", temporary=True)
    names = {obj.object_name for obj in client.list_objects(bucket, recursive=True)}
    temp_name = f"{PREFIX}/tmp/{content_key(temporary.sha256)}"
    durable_name = f"{PREFIX}/{content_key(durable.sha256)}"
    assert names == {temp_name, durable_name}
    rule_prefix = rules_by_id(client, bucket)[store.lifecycle_rule_id].rule_filter.prefix  # type: ignore[union-attr]
    assert temp_name.startswith(rule_prefix) and not durable_name.startswith(rule_prefix)
    assert temporary.uri == f"s3://{bucket}/{temp_name}" and durable.uri == f"s3://{bucket}/{durable_name}"

    reader = make_store(s3_server, bucket)  # another process reading by URI
    assert reader.get(temporary.uri) == b"rendered view" and reader.get(durable.uri) == b"splat bytes"
    assert reader.stat(temporary.uri).media_type == "image/png"
    assert "/tmp/sha256/" in reader.presign(temporary.uri)


def test_a_store_at_the_bucket_root(s3_server: S3Server) -> None:
    client, bucket = raw_client(s3_server), new_bucket()
    store = make_store(s3_server, bucket, prefix="")
    ref = store.put(b"x", "text/plain", temporary=True)  # the first upload also readies the bucket
    assert ref.uri == f"s3://{bucket}/tmp/{content_key(ref.sha256)}"
    rule = rules_by_id(client, bucket)["glimpse3d-temp-expiry"]
    assert rule.rule_filter == Filter(prefix="tmp/")


def test_rule_id_stays_within_the_s3_limit() -> None:
    store = S3ArtifactStore("127.0.0.1:9", "k", "s", "bucket", prefix="/".join(["segment"] * 40))
    assert len(store.lifecycle_rule_id) <= 255 and store.lifecycle_rule_id.startswith("glimpse3d-temp-expiry:")


# ---- configuration -----------------------------------------------------------------------------------


def test_expiry_days_from_the_environment(s3_server: S3Server) -> None:
    default = store_from_env(s3_env(s3_server, new_bucket()))
    assert isinstance(default, S3ArtifactStore) and default.temp_expiry_days == DEFAULT_TEMP_EXPIRY_DAYS
    for raw, days in (("3", 3), (" 0 ", 0), ("", DEFAULT_TEMP_EXPIRY_DAYS)):
        store = store_from_env(s3_env(s3_server, new_bucket(), **{ENV_S3_TEMP_EXPIRY_DAYS: raw}))
        assert store.temp_expiry_days == days  # type: ignore[attr-defined]
    for raw in ("-1", "7.5", "a week"):
        with pytest.raises(InvalidInput) as info:
            store_from_env(s3_env(s3_server, new_bucket(), **{ENV_S3_TEMP_EXPIRY_DAYS: raw}))
        assert info.value.field == ENV_S3_TEMP_EXPIRY_DAYS and repr(raw) in info.value.message
    for bad in (-1, True, "7"):
        with pytest.raises(InvalidInput) as info:
            S3ArtifactStore("127.0.0.1:9", "k", "s", "bucket", temp_expiry_days=bad)  # type: ignore[arg-type]
        assert info.value.field == "temp_expiry_days"


def test_url_argument_overrides_the_environment(s3_server: S3Server, tmp_path: Path) -> None:
    env = s3_env(s3_server, new_bucket())
    other = new_bucket()
    store = store_from_env(env, url=f"s3://{other}/elsewhere")
    assert isinstance(store, S3ArtifactStore) and (store.bucket, store.prefix) == (other, "elsewhere")
    assert store.endpoint == s3_server.url
    local = store_from_env(env, url=str(tmp_path / "local"))  # a directory URL ignores the S3 variables
    assert isinstance(local, FileArtifactStore) and local.root == (tmp_path / "local").resolve()


# ---- unreachable S3 at start-up ----------------------------------------------------------------------


def test_unreachable_endpoint_at_start_is_unavailable_quickly() -> None:
    store = store_from_env(s3_env(None, new_bucket()))
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        store.ensure_ready()
    assert time.monotonic() - started < QUICK_S
    assert store.endpoint in info.value.message and "unreachable" in info.value.message  # type: ignore[attr-defined]


def test_service_start_stops_on_unreachable_s3_before_serving() -> None:
    store = store_from_env(s3_env(None, new_bucket()))

    def build(_runtime: object) -> object:
        raise AssertionError("the service must not be built when its artifact store is unreachable")

    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        asyncio.run(asyncio.wait_for(serve_service(  # bounded: a service that did start would serve on
            "depth", ["glimpse3d.v1.Depth"], build,  # type: ignore[arg-type]
            server_config=ServerConfig(metrics_port=-1), settings=ServiceSettings(), store=store), 10))
    assert time.monotonic() - started < QUICK_S
    assert store.endpoint in info.value.message  # type: ignore[attr-defined]


def test_gateway_start_stops_on_unreachable_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from glimpse3d.gateway.config import GatewayConfig
    from glimpse3d.gateway.server import serve as serve_gateway

    env = s3_env(None, new_bucket())
    for name in (ENV_S3_ENDPOINT, ENV_S3_ACCESS_KEY, ENV_S3_SECRET_KEY):
        monkeypatch.setenv(name, env[name])
    config = GatewayConfig(artifacts_url=env[ENV_ARTIFACTS_URL], db_path=tmp_path / "jobs.sqlite3",
                           http_port=-1)
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        asyncio.run(asyncio.wait_for(serve_gateway(ServerConfig(metrics_port=-1), config), 10))
    assert time.monotonic() - started < QUICK_S
    assert env[ENV_S3_ENDPOINT] in info.value.message
    assert not (tmp_path / "jobs.sqlite3").exists()  # stopped before opening anything else

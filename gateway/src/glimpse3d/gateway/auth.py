"""Who is calling the gateway: OIDC/JWT bearer tokens, per-tenant API keys, event-stream tickets.

:class:`Authenticator` turns a call's headers (gRPC metadata or HTTP headers, lower-case names) into a
:class:`Principal` whose ``tenant`` is the only tenant the call may use:

- ``authorization: Bearer <jwt>``: a token of the organisation's OIDC provider, verified with PyJWT
  against a JWKS (a file, re-read when it changes, or an ``https://`` URL through ``PyJWKClient``) for
  its signature, ``iss``, ``aud`` and ``exp`` (with a small leeway); the tenant is a claim
  (``tenant`` unless configured otherwise);
- ``x-api-key: <key>`` or ``authorization: ApiKey <key>``: a service account's key, looked up by its
  SHA-256 in the keys file (only hashes are stored; ``python -m glimpse3d.gateway.auth create-key``
  mints one and prints it once).

:func:`resolve_tenant` applies the one tenant rule: a call may name its tenant in
``x-glimpse3d-tenant`` (or ``?tenant=``) but only its own (PERMISSION_DENIED otherwise); without
authentication (loopback only, see :func:`authenticator_from_config`) the named tenant is used as is.
:class:`AuthInterceptor` authenticates every gRPC call of the gateway (health and reflection stay
open); the HTTP facade does the same in its tenant dependency. :class:`TicketSigner` mints the short-
lived, job-bound tickets that let a browser's ``EventSource`` (which cannot send headers) watch a job
without a long-lived credential in the URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import hashlib
import hmac
import inspect
import ipaddress
import json
import logging
import os
import secrets
import sys
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import grpc
import jwt

from glimpse3d.core.artifacts import store_from_env
from glimpse3d.core.config import ConfigError, ServerConfig, load_config
from glimpse3d.core.errors import FailedPrecondition, InvalidInput, PermissionDenied, Unauthenticated, Unavailable
from glimpse3d.core.rpc.interceptors import UNOBSERVED_PREFIXES
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.jobs import DEFAULT_TENANT, TENANT_HEADER, check_tenant
from glimpse3d.gateway.store import open_job_store
from glimpse3d.gateway.tenants import (
    TenantDeletion,  # noqa: F401  (re-exported for the admin tools)
    delete_tenant_data,
    migrate_legacy_artifacts,
)

logger = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
API_KEY_HEADER = "x-api-key"
API_KEY_PREFIX = "g3d_"
KEY_BYTES = 32  # 256 random bits per API key
TICKET_TTL_S = 60.0
TICKET_AUDIENCE = "glimpse3d-event-stream"
LINK_TTL_S = 900.0
LINK_AUDIENCE = "glimpse3d-download"
LINK_PARAM = "sig"
"""Query parameter of a signed link (a job's photo or a version's download), see :meth:`TicketSigner.mint_link`."""
CHALLENGE = 'Bearer realm="glimpse3d"'
_LOOPBACK_NAMES = ("localhost", "localhost.", "ip6-localhost")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its tenant, who it is (token subject or key name) and how it proved it."""

    tenant: str
    subject: str
    method: str  # "jwt", "api_key" or "ticket"


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("glimpse3d_principal", default=None)


def current_principal() -> Principal | None:
    """The principal of the gRPC call being served (None when the gateway runs without authentication)."""
    return _current.get()


def resolve_tenant(principal: Principal | None, requested: str | None) -> str:
    """The tenant a call works in: the authenticated one (naming another is PERMISSION_DENIED), or,
    without authentication, the named one (``default`` when none)."""
    if principal is None:
        return DEFAULT_TENANT if requested is None else check_tenant(requested)
    if requested is not None and requested != principal.tenant:
        raise PermissionDenied(
            f"{TENANT_HEADER} names tenant {requested[:63]!r}, but the caller is authenticated "
            f"for tenant {principal.tenant!r}",
            field=TENANT_HEADER,
        )
    return principal.tenant


# ---- JWT ------------------------------------------------------------------------------------------


class _JwksFile:
    """The keys of a JWKS file, re-read when the file changes (key rotation without a restart)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: jwt.PyJWKSet | None = None
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> jwt.PyJWKSet:
        with self._lock:
            try:
                stat = self._path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
                if self._keys is None or stamp != self._stamp:
                    self._keys = jwt.PyJWKSet.from_dict(json.loads(self._path.read_text(encoding="utf-8")))
                    self._stamp = stamp
            except (OSError, ValueError, jwt.PyJWKSetError) as err:
                if self._keys is None:
                    raise ConfigError(
                        f"auth_jwks: cannot read the JWKS file {self._path}: {err}", field="auth_jwks"
                    ) from None
                logger.warning("cannot re-read the JWKS file %s, keeping the keys read before: %s", self._path, err)
            return self._keys

    def key_for(self, token: str) -> jwt.PyJWK:
        keys = self._load().keys
        kid = jwt.get_unverified_header(token).get("kid")
        if kid is None and len(keys) == 1:
            return keys[0]
        for key in keys:
            if key.key_id == kid:
                return key
        raise Unauthenticated(f"the bearer token's signing key (kid {kid!r}) is not in the configured JWKS")


class JwtVerifier:
    """Verifies bearer tokens (signature, ``iss``, ``aud``, ``exp``) and reads the tenant claim."""

    def __init__(
        self,
        jwks: str,
        *,
        issuer: str,
        audience: str,
        tenant_claim: str = "tenant",
        algorithms: Sequence[str] = ("RS256",),
        leeway_s: float = 30.0,
    ) -> None:
        self.remote = jwks.startswith("https://")
        self._client = jwt.PyJWKClient(jwks, cache_keys=True, lifespan=300) if self.remote else None
        self._file = None if self.remote else _JwksFile(Path(jwks))
        self._issuer, self._audience, self._claim = issuer, audience, tenant_claim
        self._algorithms = list(algorithms)
        self._leeway = leeway_s

    def _key(self, token: str) -> Any:
        if self._client is not None:
            try:
                return self._client.get_signing_key_from_jwt(token)
            except jwt.PyJWKClientConnectionError as err:
                logger.warning("cannot fetch the JWKS: %s", err)
                raise Unauthenticated("the token's signing keys cannot be fetched right now; retry later") from None
            except jwt.PyJWKClientError as err:
                raise Unauthenticated(f"the bearer token's signing key is unknown: {err}") from None
        assert self._file is not None
        return self._file.key_for(token)

    def verify(self, token: str) -> Principal:
        try:
            key = self._key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the bearer token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"the bearer token is not for this audience (expected {self._audience!r})") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"the bearer token is not from the expected issuer {self._issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the bearer token's signature does not verify") from None
        except jwt.PyJWTError as err:
            raise Unauthenticated(f"the bearer token is not valid: {err}") from None
        tenant = claims.get(self._claim)
        if not isinstance(tenant, str):
            raise Unauthenticated(f"the bearer token has no {self._claim!r} claim naming the tenant")
        try:
            check_tenant(tenant)
        except InvalidInput:
            raise Unauthenticated(f"the bearer token's {self._claim!r} claim is not a valid tenant name") from None
        return Principal(tenant=tenant, subject=str(claims.get("sub", "")), method="jwt")


# ---- API keys -------------------------------------------------------------------------------------


def hash_key(key: str) -> str:
    """The hex SHA-256 stored for ``key``.

    A fast unsalted hash is enough here, unlike for passwords: every key is 256 bits from ``secrets``,
    so a stolen keys file cannot be brute-forced or looked up in a table; a slow hash (scrypt) would
    only cost time on every call. Comparisons use :func:`hmac.compare_digest` (constant time)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyEntry:
    tenant: str
    name: str
    sha256: str


def read_keys_file(path: Path) -> list[KeyEntry]:
    """The entries of a keys file: JSON or TOML (by suffix) with a ``keys`` list of {tenant, name,
    sha256}; ConfigError naming ``auth_api_keys_file`` when it is malformed."""
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as err:
        raise ConfigError(f"auth_api_keys_file: cannot read {path}: {err}", field="auth_api_keys_file") from None
    raw = data.get("keys", []) if isinstance(data, dict) else None
    if not isinstance(raw, list):
        raise ConfigError(f"auth_api_keys_file: {path} must hold a 'keys' list", field="auth_api_keys_file")
    entries = []
    for i, item in enumerate(raw):
        digest = item.get("sha256", "") if isinstance(item, dict) else ""
        tenant = item.get("tenant", "") if isinstance(item, dict) else ""
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise ConfigError(
                f"auth_api_keys_file: keys[{i}] needs 'sha256', 64 lower-case hex digits", field="auth_api_keys_file"
            )
        try:
            check_tenant(tenant)
        except InvalidInput:
            raise ConfigError(
                f"auth_api_keys_file: keys[{i}] has no valid 'tenant'", field="auth_api_keys_file"
            ) from None
        entries.append(KeyEntry(tenant=tenant, name=str(item.get("name", "")), sha256=digest))
    return entries


class ApiKeys:
    """The keys file, re-read when it changes (keys minted or revoked while the gateway runs)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._entries: list[KeyEntry] = []
        self._lock = threading.Lock()
        self._load(initial=True)

    def _load(self, initial: bool = False) -> list[KeyEntry]:
        with self._lock:
            try:
                stat = self._path.stat()
            except OSError as err:
                if initial:
                    raise ConfigError(
                        f"auth_api_keys_file: cannot read {self._path}: {err.strerror or err}",
                        field="auth_api_keys_file",
                    ) from None
                logger.warning("cannot read the API keys file %s: %s", self._path, err)
                return self._entries
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                try:
                    self._entries = read_keys_file(self._path)
                    self._stamp = stamp
                except ConfigError:
                    if initial:
                        raise
                    logger.warning("the API keys file %s is malformed; keeping the keys read before", self._path)
            return self._entries

    def verify(self, key: str) -> Principal:
        digest = hash_key(key)
        found: KeyEntry | None = None
        for entry in self._load():  # every entry is compared, so the time does not depend on which matched
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        if found is None:
            raise Unauthenticated("the API key is not valid")
        return Principal(tenant=found.tenant, subject=found.name, method="api_key")


def _write_keys_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def check_keys_writable(path: Path) -> None:
    """FailedPrecondition naming ``auth_api_keys_file`` unless :func:`delete_keys` can rewrite ``path``
    (a JSON file in a writable folder), checked before anything is deleted."""
    if path.suffix == ".toml":
        raise FailedPrecondition(f"the keys file {path.name} is TOML, which is not rewritten; remove the keys by "
                                 "hand, or keep them", field="auth_api_keys_file")
    if path.exists() and not os.access(path.parent, os.W_OK):
        raise FailedPrecondition(f"the keys file {path.name} is in a read-only folder (a mounted Secret?); keep "
                                 "the keys, or revoke them where the file is managed", field="auth_api_keys_file")


def delete_keys(path: Path, tenant: str) -> int:
    """Revoke every key of ``tenant`` in the keys file (a JSON file; FailedPrecondition naming
    ``auth_api_keys_file`` for TOML or one that cannot be written); how many were removed."""
    check_tenant(tenant)
    if not path.exists():
        return 0
    entries = read_keys_file(path)  # refuse to rewrite a malformed file
    if not any(entry.tenant == tenant for entry in entries):
        return 0
    if path.suffix == ".toml":
        raise FailedPrecondition(f"the keys file {path.name} is TOML, which is not rewritten; remove the keys of "
                                 f"tenant {tenant!r} by hand", field="auth_api_keys_file")
    data = json.loads(path.read_text(encoding="utf-8"))
    kept = [item for item in data["keys"] if not (isinstance(item, dict) and item.get("tenant") == tenant)]
    removed = len(data["keys"]) - len(kept)
    try:
        _write_keys_json(path, {**data, "keys": kept})
    except OSError as err:
        raise FailedPrecondition(f"cannot rewrite the keys file {path.name}: {err.strerror or err}",
                                 field="auth_api_keys_file") from None
    logger.warning("revoked %d API keys of tenant %s", removed, tenant)
    return removed


def create_key(path: Path, tenant: str, name: str) -> str:
    """Mint a key for ``tenant``, add its hash to the keys file (JSON, created 0600 when missing), and
    return the key itself, which is stored nowhere."""
    check_tenant(tenant)
    if path.suffix == ".toml":
        raise ConfigError("create-key writes JSON keys files; use a .json file", field="keys_file")
    data: dict[str, Any] = {"keys": []}
    if path.exists():
        read_keys_file(path)  # refuse to rewrite a malformed file
        data = json.loads(path.read_text(encoding="utf-8"))
    key = API_KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    data["keys"].append(
        {
            "tenant": tenant,
            "name": name,
            "sha256": hash_key(key),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    _write_keys_json(path, data)
    return key


# ---- the authenticator ----------------------------------------------------------------------------


Headers = Mapping[str, str] | Iterable[tuple[str, Any]]


def _items(headers: Headers) -> list[tuple[str, Any]]:
    if isinstance(headers, Mapping):
        return list(cast(Mapping[str, Any], headers).items())
    return list(cast(Iterable[tuple[str, Any]], headers))


def _header(headers: Headers, name: str) -> str | None:
    for key, value in _items(headers):
        if key.lower() == name:
            return value if isinstance(value, str) else None
    return None


class Authenticator:
    """Checks a call's credentials with the configured methods (at least one of ``jwt``, ``api_keys``)."""

    def __init__(self, *, jwt_verifier: JwtVerifier | None = None, api_keys: ApiKeys | None = None) -> None:
        if jwt_verifier is None and api_keys is None:
            raise ValueError("an Authenticator needs a JWT verifier or API keys")
        self.jwt = jwt_verifier
        self.api_keys = api_keys

    @property
    def may_block(self) -> bool:
        """Whether a check may wait on the network (a JWKS URL): callers on an event loop use a thread."""
        return self.jwt is not None and self.jwt.remote

    def authenticate(self, headers: Headers) -> Principal:
        """The caller, or Unauthenticated saying what is missing or wrong."""
        authorization = _header(headers, AUTHORIZATION)
        api_key = _header(headers, API_KEY_HEADER)
        if authorization is not None:
            scheme, _, credentials = authorization.strip().partition(" ")
            credentials = credentials.strip()
            if scheme.lower() == "bearer" and credentials and self.jwt is not None:
                return self.jwt.verify(credentials)
            if scheme.lower() == "apikey" and credentials and self.api_keys is not None:
                return self.api_keys.verify(credentials)
            raise Unauthenticated(f"unsupported authorization header; send {self._expected()}")
        if api_key is not None and self.api_keys is not None:
            return self.api_keys.verify(api_key.strip())
        raise Unauthenticated(f"this gateway requires authentication; send {self._expected()}")

    async def authenticate_async(self, headers: Headers) -> Principal:
        if self.may_block:
            return await asyncio.to_thread(self.authenticate, _items(headers))
        return self.authenticate(headers)

    def _expected(self) -> str:
        ways = []
        if self.jwt is not None:
            ways.append("'authorization: Bearer <token>'")
        if self.api_keys is not None:
            ways.append("'x-api-key: <key>'")
        return " or ".join(ways)


# ---- event-stream tickets -------------------------------------------------------------------------


_PROCESS_TICKET_KEY = secrets.token_bytes(32)
"""The key of signers made without a secret: random per process, shared by its gRPC and HTTP sides."""


class TicketSigner:
    """Short-lived HS256 tokens bound to one tenant and job: tickets for ``EventSource`` URLs (``ttl_s``)
    and signed links to a job's photo and downloads (``link_ttl_s``), for ``<img src>`` and download
    links, which cannot send headers either. The two have different audiences, so neither passes for
    the other."""

    def __init__(self, secret: str = "", ttl_s: float = TICKET_TTL_S, link_ttl_s: float = LINK_TTL_S) -> None:
        self._key = secret.encode("utf-8") if secret else _PROCESS_TICKET_KEY
        self.ttl_s = ttl_s
        self.link_ttl_s = link_ttl_s

    def _encode(self, audience: str, tenant: str, job_id: str, subject: str, ttl_s: float, step_s: int = 1) -> str:
        """``step_s``: ``iat`` is rounded down to a multiple of it, so that tokens minted within one step
        are the same string (HS256 is deterministic) and live between ``ttl_s - step_s`` and ``ttl_s``."""
        now = int(time.time()) // step_s * step_s
        claims = {"aud": audience, "tenant": tenant, "job": job_id, "sub": subject, "iat": now,
                  "exp": now + int(ttl_s)}
        return jwt.encode(claims, self._key, algorithm="HS256")

    def _decode(self, token: str, audience: str, job_id: str, what: str, field: str) -> Principal:
        try:
            claims = jwt.decode(
                token, self._key, algorithms=["HS256"], audience=audience, options={"require": ["exp", "aud"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(f"the {what} has expired; ask for a new one") from None
        except jwt.PyJWTError:
            raise Unauthenticated(f"the {what} is not valid") from None
        if claims.get("job") != job_id:
            raise PermissionDenied(f"the {what} is for another job", field=field)
        return Principal(tenant=str(claims["tenant"]), subject=str(claims.get("sub", "")), method="ticket")

    def mint(self, tenant: str, job_id: str, subject: str = "") -> str:
        return self._encode(TICKET_AUDIENCE, tenant, job_id, subject, self.ttl_s)

    def verify(self, ticket: str, job_id: str) -> Principal:
        return self._decode(ticket, TICKET_AUDIENCE, job_id, "event-stream ticket", "ticket")

    def mint_link(self, tenant: str, job_id: str) -> str:
        """The ``sig`` of links to the job's photo and downloads: valid for two thirds to all of
        ``link_ttl_s`` seconds, and the same for a third of it, so that a job's links (and the browser's
        cache of the splat behind them) do not change with every progress event."""
        step = max(1, int(self.link_ttl_s) // 3)
        return self._encode(LINK_AUDIENCE, tenant, job_id, "", self.link_ttl_s, step)

    @staticmethod
    def expiry(token: str) -> datetime:
        """When a token this signer minted expires (read without checking it: only for tokens it just made)."""
        return datetime.fromtimestamp(int(jwt.decode(token, options={"verify_signature": False})["exp"]), UTC)

    def verify_link(self, sig: str, job_id: str) -> Principal:
        return self._decode(sig, LINK_AUDIENCE, job_id, "signed link", LINK_PARAM)


# ---- gRPC -----------------------------------------------------------------------------------------


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call (except health and reflection) before its handler runs and makes the
    principal available to the handler (:func:`current_principal`). Install it after the observing
    interceptor, so that its refusals are mapped to UNAUTHENTICATED, counted and logged."""

    def __init__(self, authenticator: Authenticator, *, open_prefixes: Sequence[str] = UNOBSERVED_PREFIXES) -> None:
        self._auth = authenticator
        self._open = tuple(open_prefixes)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._open):
            return handler
        metadata = tuple(handler_call_details.invocation_metadata or ())
        return _authenticated(handler, self._auth, metadata)


def _authenticated(
    handler: grpc.RpcMethodHandler, auth: Authenticator, metadata: tuple[Any, ...]
) -> grpc.RpcMethodHandler:
    kind = {
        (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
        (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
        (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
        (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
    }
    attribute, factory = kind[(handler.request_streaming, handler.response_streaming)]
    behavior = getattr(handler, attribute)
    pairs = [(str(k), v) for k, v in metadata]

    if inspect.isasyncgenfunction(behavior):

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _current.set(await auth.authenticate_async(pairs))
            async for response in behavior(request, context):
                yield response

        wrapped: Any = streaming
    elif inspect.iscoroutinefunction(behavior):

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = _current.set(await auth.authenticate_async(pairs))
            try:
                return await behavior(request, context)
            finally:
                _current.reset(token)

        wrapped = unary
    else:  # synchronous handlers run in a thread pool: check there

        def blocking(request: Any, context: grpc.ServicerContext) -> Any:
            token = _current.set(auth.authenticate(pairs))
            try:
                return behavior(request, context)
            finally:
                _current.reset(token)

        wrapped = blocking
    return factory(
        wrapped, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


# ---- start-up -------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    host = host.strip().strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_jwt_settings(config: GatewayConfig) -> None:
    for name in ("auth_jwks", "auth_issuer", "auth_audience", "auth_tenant_claim"):
        if not getattr(config, name).strip():
            raise ConfigError(f"{name} must be set to check bearer tokens (GLIMPSE3D_{name.upper()})", field=name)
    scheme = urlsplit(config.auth_jwks).scheme
    if scheme and len(scheme) > 1 and scheme != "https":
        raise ConfigError(f"auth_jwks must be a file path or an https:// URL, got a {scheme}:// URL", field="auth_jwks")
    if not config.auth_algorithms or any(a.upper().startswith("HS") or a == "none" for a in config.auth_algorithms):
        raise ConfigError(
            "auth_algorithms must list public-key algorithms only (RS256, ES256, ...)", field="auth_algorithms"
        )


def authenticator_from_config(config: GatewayConfig, hosts: Sequence[str]) -> Authenticator | None:
    """The gateway's authenticator (None: calls are not authenticated), after applying the start-up
    rule: without authentication every listener in ``hosts`` must be loopback (and
    auth_allow_unauthenticated_on_loopback set), unless auth_insecure_allow_unauthenticated is set.
    ConfigError names the setting to change."""
    mode = config.auth_mode
    if mode == "auto":
        use_jwt, use_keys = bool(config.auth_jwks.strip()), config.auth_api_keys_file is not None
    else:
        use_jwt, use_keys = mode in ("jwt", "any"), mode in ("api_key", "any")
    if use_jwt:
        _check_jwt_settings(config)
    if use_keys and config.auth_api_keys_file is None:
        raise ConfigError(
            f"auth_mode {mode} needs auth_api_keys_file (GLIMPSE3D_AUTH_API_KEYS_FILE)", field="auth_api_keys_file"
        )
    if use_jwt or use_keys:
        verifier = (
            JwtVerifier(
                config.auth_jwks,
                issuer=config.auth_issuer,
                audience=config.auth_audience,
                tenant_claim=config.auth_tenant_claim,
                algorithms=config.auth_algorithms,
                leeway_s=config.auth_leeway_s,
            )
            if use_jwt
            else None
        )
        keys = ApiKeys(config.auth_api_keys_file) if use_keys and config.auth_api_keys_file is not None else None
        logger.info("authentication on", extra={"jwt": use_jwt, "api_keys": use_keys})
        return Authenticator(jwt_verifier=verifier, api_keys=keys)
    exposed = [host for host in hosts if not is_loopback(host)]
    if not exposed and config.auth_allow_unauthenticated_on_loopback:
        logger.warning(
            "AUTHENTICATION IS OFF: the gateway listens on loopback only (%s) and accepts "
            "unauthenticated calls, whose tenant is the one they name; set GLIMPSE3D_AUTH_JWKS or "
            "GLIMPSE3D_AUTH_API_KEYS_FILE to require credentials",
            ", ".join(hosts),
        )
        return None
    if config.auth_insecure_allow_unauthenticated:
        logger.warning(
            "AUTHENTICATION IS OFF on %s (auth_insecure_allow_unauthenticated): anyone who can "
            "reach the gateway can act as any tenant",
            ", ".join(hosts),
        )
        return None
    where = ", ".join(exposed) or ", ".join(hosts)
    raise ConfigError(
        f"refusing to start without authentication on {where}: configure GLIMPSE3D_AUTH_JWKS (with "
        "GLIMPSE3D_AUTH_ISSUER and GLIMPSE3D_AUTH_AUDIENCE) or GLIMPSE3D_AUTH_API_KEYS_FILE, listen on "
        "127.0.0.1, or set GLIMPSE3D_AUTH_INSECURE_ALLOW_UNAUTHENTICATED=true",
        field="auth_mode",
    )


def gateway_hosts(server_config: ServerConfig, config: GatewayConfig) -> list[str]:
    """The hosts the gateway's listeners bind (gRPC, and HTTP unless it is switched off)."""
    return [server_config.host, *([config.http_host] if config.http_port >= 0 else [])]


# ---- tenant deletion ------------------------------------------------------------------------------


def _delete_tenant_command(ns: argparse.Namespace) -> int:
    """``delete-tenant``: the gateway's job store, artifact store and keys file from its configuration
    (GLIMPSE3D_*), through the same :func:`~glimpse3d.gateway.tenants.delete_tenant_data` as the
    tenant's own ``DeleteTenantData`` call."""
    tenant = ns.tenant
    check_tenant(tenant)
    if ns.confirm != tenant:
        print(f"error: this deletes every job and artifact of tenant {tenant!r}; repeat the tenant with "
              f"--confirm {tenant} to go ahead", file=sys.stderr)
        return 2
    config = load_config(GatewayConfig)
    keys_file = None if ns.keep_keys else (ns.keys_file or config.auth_api_keys_file)
    store = open_job_store(config)
    try:
        result = delete_tenant_data(store, store_from_env(url=config.artifacts_url), tenant,
                                    cancel=ns.cancel_jobs, keys_file=keys_file)
    finally:
        store.close()
    print(f"deleted tenant {tenant!r}: {len(result.jobs)} jobs, {result.artifacts} artifacts, "
          f"{result.versions} versions, {len(result.cancelled)} jobs cancelled first, {result.api_keys} API keys")
    return 0


def _migrate_artifacts_command(tenant: str, dry_run: bool) -> int:
    """``migrate-artifacts``: move the artifacts without a tenant under ``tenant`` (see
    :func:`~glimpse3d.gateway.tenants.migrate_legacy_artifacts`)."""
    check_tenant(tenant)
    config = load_config(GatewayConfig)
    store = open_job_store(config)
    try:
        result = migrate_legacy_artifacts(store, store_from_env(url=config.artifacts_url), tenant, dry_run=dry_run)
    finally:
        store.close()
    if dry_run:
        print(f"dry run: {result.found} artifacts without a tenant would move under tenants/{tenant}/ "
              f"({result.copied} to copy), {result.records} job records to rewrite")
    else:
        print(f"moved {result.found} artifacts under tenants/{tenant}/ ({result.copied} copied now), "
              f"rewrote {result.records} job records, deleted {result.deleted} originals")
    return 0


# ---- command line ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m glimpse3d.gateway.auth", description="Manage the gateway's API keys (docs/auth.md)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create-key", help="mint a key for a tenant; prints it once, stores its hash")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="", help="who the key is for (a service account's name)")
    create.add_argument("--keys-file", required=True, type=Path, help="the JSON keys file (auth_api_keys_file)")
    listing = sub.add_parser("list-keys", help="tenants and names of the stored keys (never the keys)")
    listing.add_argument("--keys-file", required=True, type=Path)
    delete = sub.add_parser("delete-tenant", help="delete every job, artifact and API key of a tenant (the "
                            "gateway's job and artifact stores and keys file, from GLIMPSE3D_* settings)")
    delete.add_argument("--tenant", required=True)
    delete.add_argument("--confirm", help="the tenant again, to confirm")
    delete.add_argument("--cancel-jobs", action="store_true",
                        help="cancel the tenant's queued and running jobs first (without it they stop the deletion)")
    delete.add_argument("--keys-file", type=Path, help="the keys file to revoke its keys in "
                        "(default: GLIMPSE3D_AUTH_API_KEYS_FILE)")
    delete.add_argument("--keep-keys", action="store_true", help="leave the tenant's API keys in place")
    migrate = sub.add_parser("migrate-artifacts", help="move the artifacts stored before tenancy (keys without "
                             "tenants/<t>/) under a tenant and rewrite the job records that refer to them")
    migrate.add_argument("--tenant", default=DEFAULT_TENANT, help=f"the tenant they belong to ({DEFAULT_TENANT})")
    migrate.add_argument("--dry-run", action="store_true", help="count what would move; change nothing")
    ns = parser.parse_args(argv)
    try:
        if ns.command == "delete-tenant":
            return _delete_tenant_command(ns)
        if ns.command == "migrate-artifacts":
            return _migrate_artifacts_command(ns.tenant, ns.dry_run)
        if ns.command == "create-key":
            key = create_key(ns.keys_file, ns.tenant, ns.name)
            print(key)
            print(
                f"stored the SHA-256 of this key for tenant {ns.tenant!r} in {ns.keys_file}; "
                "the key is not shown again",
                file=sys.stderr,
            )
        else:
            for entry in read_keys_file(ns.keys_file):
                print(f"{entry.tenant}\t{entry.name}\t{entry.sha256[:12]}")
    except (ConfigError, InvalidInput, FailedPrecondition) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Unavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

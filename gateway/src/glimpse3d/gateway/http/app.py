"""The FastAPI application of the HTTP/JSON facade: API routes, error handlers, the web workspace.

:func:`create_app` builds it around an :class:`HttpContext`, the objects the routes need: the
process's one :class:`~glimpse3d.gateway.app.GatewayApp` (the same instance the gRPC servicer
uses, in the same event loop) and the artifact store the downloads read from. Without a context
the app still serves the web workspace and its spec (``openapi.json`` is generated this way), and
the API routes answer 503.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException

from glimpse3d.core.errors import NotFound
from glimpse3d.gateway.http.context import HttpContext
from glimpse3d.gateway.http.errors import http_error, validation_error
from glimpse3d.gateway.http.mapping import API_PREFIX
from glimpse3d.gateway.http.routes import ApiRoute, api_router
from glimpse3d.gateway.http.static import WebFiles
from glimpse3d.gateway.http.uploads import BodyLimit

TITLE = "Glimpse3D HTTP API"
API_VERSION = "1"
DESCRIPTION = (
    "HTTP/JSON and server-sent-events facade of the Glimpse3D gateway, for the web workspace. It calls "
    "the same application layer as the gRPC API glimpse3d.v1.Glimpse3D. Authentication (docs/auth.md): "
    "Authorization: Bearer <JWT> or X-API-Key; the tenant is the credentials' (X-Glimpse3D-Tenant or the "
    "tenant query parameter may name it, no other). A gateway on loopback without authentication uses the "
    "tenant named there, 'default' when absent."
)


def _openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's spec without its 422 validation answers (this API answers 400 in its own shape)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=TITLE, version=API_VERSION, description=DESCRIPTION, routes=app.routes)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(context: HttpContext | None = None, *, web_dir: Path | None = None) -> FastAPI:
    """The facade's ASGI app; ``web_dir``: the built web workspace (served when it exists)."""
    app = FastAPI(title=TITLE, version=API_VERSION, description=DESCRIPTION,
                  openapi_url=f"{API_PREFIX}/openapi.json", docs_url=f"{API_PREFIX}/docs", redoc_url=None)
    app.state.context = context
    app.router.route_class = ApiRoute
    app.include_router(api_router())
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)

    async def no_such_endpoint(request: Request) -> None:
        raise NotFound(f"no such endpoint: {request.method} {request.url.path}")

    app.add_api_route("/api/{rest:path}", no_such_endpoint, include_in_schema=False,
                      methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
    app.add_api_route("/{path:path}", WebFiles(web_dir).serve, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_middleware(BodyLimit, upload_path=(f"{API_PREFIX}/jobs", f"{API_PREFIX}/matte"),
                       upload_pattern=re.escape(f"{API_PREFIX}/jobs/") + r"[^/]+/photos")
    app.openapi = lambda: _openapi_schema(app)  # type: ignore[method-assign]
    return app


def openapi_text() -> str:
    """The committed ``gateway/openapi.json``: the spec of :func:`create_app`, formatted stably."""
    return json.dumps(create_app().openapi(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"

"""The gateway's HTTP/JSON + server-sent-events facade, for the web workspace.

It serves ``/api/v1`` (jobs, enhancement rounds, downloads; documented in ``docs/http-api.md``, spec
in ``gateway/openapi.json``) and the built web workspace at ``/``, from the gateway process itself,
calling the same :class:`~glimpse3d.gateway.app.GatewayApp` as the gRPC API:

- :mod:`.app`: :func:`create_app`, the FastAPI application; :mod:`.routes`: the endpoints;
- :mod:`.schemas` / :mod:`.mapping`: JSON shapes, domain records to JSON, look-at cameras;
- :mod:`.errors`: the one error shape and status mapping; :mod:`.uploads`: the bounded photo upload;
- :mod:`.sse`: job watches as event streams; :mod:`.static`: the single-page workspace;
- :mod:`.server`: uvicorn on the gateway's event loop.

``python -m glimpse3d.gateway.http --write-openapi`` regenerates the committed spec.
"""

from glimpse3d.gateway.http.app import create_app, openapi_text
from glimpse3d.gateway.http.context import HttpContext
from glimpse3d.gateway.http.mapping import API_PREFIX
from glimpse3d.gateway.http.server import HttpServer

__all__ = ["API_PREFIX", "HttpContext", "HttpServer", "create_app", "openapi_text"]

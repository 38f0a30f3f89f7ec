"""The web workspace's files at ``/``, as a single-page application.

A request for a file of the build folder gets that file. Any other path that does not look like a file
(no ``.`` in its last segment) gets ``index.html``, so the workspace's client-side routes
(``/jobs/abc``) survive a reload; a missing file (``/assets/missing.js``) is a plain 404. Paths are
resolved inside the folder only. The folder is looked up on every request, so a workspace built
while the gateway runs is served at once; without a build, ``/`` answers a short page that says how
to build it.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from glimpse3d.core.errors import NotFound
from glimpse3d.gateway.http.mapping import API_PREFIX

INDEX = "index.html"

NOT_BUILT_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Glimpse3D</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>Glimpse3D</h1>
<p>The web workspace is not built. Run <code>make web</code> in the repository, then reload this page.</p>
<p>Looked for it in <code>{web_dir}</code>. The HTTP API is up: <a href="{api}/healthz">{api}/healthz</a>,
spec at <a href="{api}/openapi.json">{api}/openapi.json</a>.</p>
</body>
</html>
"""


def _looks_like_file(path: str) -> bool:
    return "." in path.rsplit("/", 1)[-1]


def _inside(root: Path, path: str) -> Path | None:
    """``root / path`` if it is a file inside ``root`` (after resolving links and ``..``)."""
    try:
        candidate = (root / path.lstrip("/")).resolve()
    except (OSError, ValueError):
        return None
    if candidate.is_relative_to(root) and candidate.is_file():
        return candidate
    return None


class WebFiles:
    """Serves ``web_dir`` (see the module docstring)."""

    def __init__(self, web_dir: Path | None) -> None:
        self.web_dir = web_dir

    def _root(self) -> Path | None:
        if self.web_dir is None:
            return None
        root = self.web_dir.resolve()
        return root if (root / INDEX).is_file() else None

    async def serve(self, request: Request, path: str) -> Response:
        if path == "api" or path.startswith("api/"):
            raise NotFound(f"no such endpoint: {request.method} {request.url.path}")
        root = self._root()
        if root is None:
            if path and _looks_like_file(path):
                raise NotFound(f"{request.url.path} not found (the web workspace is not built)")
            page = NOT_BUILT_PAGE.format(web_dir=html.escape(str(self.web_dir)), api=API_PREFIX)
            return HTMLResponse(page, status_code=200)
        file = _inside(root, path) if path else None
        if file is not None:
            headers = {"Cache-Control": "no-cache"} if file.name == INDEX else None
            return FileResponse(file, headers=headers)
        if path and _looks_like_file(path):
            raise NotFound(f"{request.url.path} not found")
        return FileResponse(root / INDEX, headers={"Cache-Control": "no-cache"})

"""The gateway's web dashboard: static pages (vanilla HTML/CSS/JS, no build step) and their routes.

    routes = dashboard_routes()      # GET / and GET /dashboard/<file>

The pages read only public JSON (`/v1/providers`, `/v1/stats`, `/v1/market`,
`/v1/providers/{id}/earnings|reputation`) and, on the account page, `/v1/account`
with the key the user pastes (kept in the tab's sessionStorage, never sent elsewhere).
Files are served from `static/` next to this module (found relative to this module, which
works for editable and wheel installs alike once the package data includes it).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"


def dashboard_routes() -> list[BaseRoute]:
    async def index(_request: Request) -> Response:
        # no-cache: a restarted gateway with new pages is seen at once (files are small).
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    return [Route("/", index), Mount("/dashboard", StaticFiles(directory=STATIC), name="dashboard")]

"""The app ``bench/api.py`` serves: Stockade's real app plus a bare FastAPI "floor".

Requests whose path starts with ``/__floor`` go to a bare ``FastAPI()`` with one
hello-world route (no middleware, no dependencies); everything else, and the lifespan
(migrations, first admin), goes to ``stockade.api.app.create_app(Settings())``.
Settings come from the ``STOCKADE_*`` variables ``bench/api.py`` sets.

Not a test and not part of the package. uvicorn loads it with
``--app-dir bench --factory floor_app:build``.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from stockade import logs
from stockade.api.app import create_app
from stockade.settings import Settings

FLOOR_PREFIX = "/__floor"


def floor_app() -> FastAPI:
    """The cheapest FastAPI app: the ceiling any FastAPI route can reach on this machine."""
    app = FastAPI()

    @app.get(f"{FLOOR_PREFIX}/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    return app


class Dispatcher:
    """Send ``/__floor…`` to the floor app and everything else (lifespan included)
    to Stockade's app."""

    def __init__(self, stockade: ASGIApp, floor: ASGIApp) -> None:
        self.stockade = stockade
        self.floor = floor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(FLOOR_PREFIX):
            await self.floor(scope, receive, send)
        else:
            await self.stockade(scope, receive, send)


def build() -> Dispatcher:
    """uvicorn's ``--factory`` entry point."""
    settings = Settings()
    # As `stockade daemon` does: stockade's own logging, at the level the bench chose.
    logs.configure(settings.log_format, settings.log_level)
    return Dispatcher(create_app(settings), floor_app())

"""The route class every HTTP route of the app uses.

Before FastAPI parses the body or solves any dependency, it identifies the caller and
charges the rate limit (``deps.identify``), and on every route not declared public it
refuses a request without a valid credential. Doing this in the route rather than as an
app-wide dependency keeps the guarantee (every route, no exceptions) while skipping a
round of FastAPI's dependency machinery on every request, and means an unauthenticated
or rate-limited request is refused before its body is read.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from stockade.api.deps import identify, is_public, require_principal

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class StockadeRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handle = super().get_route_handler()
        protected = not is_public(self)

        async def identified(request: Request) -> Response:
            await identify(request)
            if protected:
                await require_principal(request)
            return await handle(request)

        return identified

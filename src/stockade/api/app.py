"""The FastAPI app factory: one app, five seed dialects, one set of services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.requests import Request

from stockade.api import errors
from stockade.api.deps import identify, is_public, require_principal
from stockade.api.links import add_links
from stockade.api.middleware import Cors, RequestContext
from stockade.api.ratelimit import RateLimiter
from stockade.api.routes import (
    api_keys,
    auth,
    daemon,
    environments,
    events,
    health,
    plans,
    tasks,
    vms,
)
from stockade.api.routing import StockadeRoute
from stockade.services import Services
from stockade.settings import Settings
from stockade.version import __version__

DESCRIPTION = """\
Stockade runs AI agents and the commands they choose inside disposable sandboxes, and
stops every risky action until a person approves it. One daemon serves the APIs of
LuminaGuard, Luna, OmniMind, SentinelStacks and AgentBox.

**Authentication.** Every route except `/`, `/health`, `/api/v1/health`, `/docs` and
`/openapi.json` needs one of: `Authorization: Bearer <jwt>` (from `POST /api/v1/auth/login`),
`Authorization: Bearer stk_…` (an API key), or HTTP Basic with a username and password.
WebSockets also accept the browser form: the subprotocol pair
`['Authorization', 'Bearer <token>']`; the server answers with the `Authorization`
subprotocol.

**Errors** are `application/problem+json` (RFC 7807) with `error`, `message` and `code`
added. **Rate limits** are reported on every response in `X-RateLimit-Limit`,
`X-RateLimit-Remaining` and `X-RateLimit-Reset`; a 429 adds `Retry-After`.

**WebSocket `/api/v1/events/ws`** sends one JSON event per text message:
`{id, type, timestamp, data}`. The same events stream as SSE from `GET /api/v1/events`.

**WebSocket `/api/v1/environments/{id}/attach`** runs `/bin/sh` in the environment (or
`?command=` repeated once per argument). Send `{"type": "stdin", "data": "ls\\n"}`; receive
`{"type": "stdout" | "stderr", "data": …}` and, at the end, `{"type": "exit", "exit_code": n}`.
A caller who may not attach is refused before the upgrade with the problem+json status
(404, 403 or 409) where the server supports it, else by a close with code 4000 + status.
"""

EXPOSED_HEADERS = [
    "X-Request-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
]


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> FastAPI:
    """Build the daemon's app. Nothing is opened until the app's lifespan starts."""
    settings = settings or Settings()
    services = services or Services.build(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="Stockade",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Declared after the API's own routes (below): routing tries routes in order, and
        # every API request would otherwise try the documentation's paths first.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.router.route_class = StockadeRoute
    app.state.settings = settings
    app.state.services = services
    app.state.limiter = limiter = RateLimiter(settings)

    errors.install(app)
    for module in (health, auth, api_keys, events, environments, vms, tasks, plans, daemon):
        _add_routes(app, module.router)
    _add_documentation(app)

    app.add_middleware(
        RequestContext,
        metrics=services.metrics,
        limiter=limiter,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        vary_origin=bool(settings.cors_origins),
    )
    if settings.cors_origins:
        app.add_middleware(
            Cors,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
        )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


# What an APIRoute was declared with, to declare it again on the app.
_ROUTE_FIELDS = (
    "response_model",
    "status_code",
    "tags",
    "dependencies",
    "summary",
    "description",
    "response_description",
    "responses",
    "deprecated",
    "methods",
    "operation_id",
    "include_in_schema",
    "response_class",
    "name",
    "openapi_extra",
)


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """Declare the router's routes on the app itself.

    ``include_router`` in current FastAPI keeps each router as a nested matcher, which
    cost ~60 µs per request here before the first route was even tried (bench/stack.py
    measures the stack in-process). Declaring the same routes flat gives the same routes,
    dependencies and OpenAPI, and every HTTP route gets ``StockadeRoute``.
    """
    for route in router.routes:
        if isinstance(route, APIRoute):
            fields = {name: getattr(route, name) for name in _ROUTE_FIELDS}
            app.router.add_api_route(
                route.path, route.endpoint, route_class_override=StockadeRoute, **fields
            )
        elif isinstance(route, APIWebSocketRoute):
            # A WebSocket has no request handler to wrap: it identifies through a dependency.
            app.router.add_api_websocket_route(
                route.path,
                route.endpoint,
                name=route.name,
                dependencies=[
                    Depends(identify),
                    *([] if is_public(route) else [Depends(require_principal)]),
                    *route.dependencies,
                ],
            )
        else:
            raise TypeError(f"unexpected route type {type(route).__name__}")


def _add_documentation(app: FastAPI) -> None:
    """``/openapi.json`` and ``/docs`` (Swagger UI), public, as FastAPI would add them."""

    async def openapi(_: Request) -> JSONResponse:
        return JSONResponse(app.openapi())

    async def docs(_: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Stockade API")

    app.add_route("/openapi.json", openapi, include_in_schema=False)
    app.add_route("/docs", docs, include_in_schema=False)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with the security each route really enforces."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT or stk_ key"},
        "basicAuth": {"type": "http", "scheme": "basic"},
    }
    for route in app.routes:
        if isinstance(route, APIWebSocketRoute) or not isinstance(route, APIRoute):
            continue
        security: list[dict[str, list[str]]] = (
            [{"bearerAuth": []}, {"basicAuth": []}] if not is_public(route) else []
        )
        for method in route.methods or ():
            operation = schema["paths"].get(route.path_format, {}).get(method.lower())
            if operation is not None:
                operation["security"] = security
    for path in schema["paths"].values():
        for operation in path.values():
            _describe_responses(operation["responses"])
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)
    add_links(schema)
    app.openapi_schema = schema
    return schema


_HEADERS = {
    "X-Request-ID": "The request's id: the client's own if it sent a sane one.",
    "X-RateLimit-Limit": "Requests allowed in the current window.",
    "X-RateLimit-Remaining": "Requests left in the current window.",
    "X-RateLimit-Reset": "Unix time at which the window resets.",
}


def _describe_responses(responses: dict[str, Any]) -> None:
    """Declare the headers every response carries, and give FastAPI's default 422 the
    problem+json body the app really sends."""
    for status, response in responses.items():
        if status == "422":
            response.clear()
            response.update(errors.responses(422)[422])
            response.pop("model")
        headers = response.setdefault("headers", {})
        for name, description in _HEADERS.items():
            headers[name] = {
                "description": description,
                "required": True,
                "schema": {"type": "string"},
            }
        if status == "429":
            headers["Retry-After"] = {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "string"},
            }

"""Who is asking, and the services to ask.

Every route is authenticated unless it is declared public (``openapi_extra=PUBLIC``):
secure by default, so a new route cannot be left open by forgetting something.
``api/routing.py`` runs ``identify`` (resolve the credentials, charge the rate limit)
and, on a protected route, ``require_principal`` before FastAPI reads the body or solves
anything; WebSocket routes get the same two as dependencies. Routes then read the caller
with ``principal_of(request)`` and the services with ``services_of(request)``: plain
calls, because each FastAPI dependency costs ~10 µs on every request.
"""

from __future__ import annotations

from fastapi import WebSocketException
from starlette.requests import HTTPConnection
from starlette.status import WS_1008_POLICY_VIOLATION

from stockade.api.middleware import client_address
from stockade.api.ratelimit import RateLimiter, RateLimitExceeded, category_of
from stockade.errors import AuthenticationFailed
from stockade.services import Services
from stockade.services.principal import Principal

# Seed 004's browser form: new WebSocket(url, ['Authorization', 'Bearer <token>']).
WS_AUTH_PROTOCOL = "Authorization"


PUBLIC_KEY = "x-stockade-public"
# `openapi_extra` of a route anyone may call.
PUBLIC: dict[str, object] = {PUBLIC_KEY: True}


def is_public(route: object) -> bool:
    extra = getattr(route, "openapi_extra", None) or {}
    return bool(extra.get(PUBLIC_KEY))


def services_of(conn: HTTPConnection) -> Services:
    """The daemon's services."""
    services: Services = conn.app.state.services
    return services


def principal_of(conn: HTTPConnection) -> Principal:
    """The authenticated caller of a protected route."""
    principal: Principal | None = conn.scope["state"].get("principal")
    if principal is None:  # only a public route can get here, and it must not ask
        raise AuthenticationFailed()
    return principal


def authorization_of(conn: HTTPConnection) -> str | None:
    """The credential a request carries: the Authorization header, or on a WebSocket
    the ``Authorization, Bearer <token>`` subprotocol pair. Several Authorization
    headers are refused: a proxy in front may read another one than we would."""
    found = conn.headers.getlist("authorization")
    if len(found) > 1:
        raise AuthenticationFailed("Several Authorization headers; send exactly one")
    header = found[0] if found else None
    if header or conn.scope["type"] != "websocket":
        return header
    offered = [p.strip() for p in conn.headers.get("sec-websocket-protocol", "").split(",")]
    if len(offered) >= 2 and offered[0] == WS_AUTH_PROTOCOL:
        return offered[1]
    return None


async def identify(conn: HTTPConnection) -> None:
    """Resolve the caller, if credentials were sent, and charge the rate limit."""
    services = services_of(conn)
    limiter: RateLimiter = conn.app.state.limiter
    state = conn.scope["state"]
    address = f"ip:{client_address(conn.scope)}"
    principal: Principal | None = None
    try:
        try:
            header = authorization_of(conn)
            if header:
                principal = await services.auth.authenticate(header)
        except AuthenticationFailed as exc:
            state["auth_error"] = exc
            # Guessing credentials costs from the same budget as logging in.
            state["rate_quota"] = await limiter.hit("auth", address)
        state["principal"] = principal
        state["principal_id"] = principal.user_id if principal else None
        category = category_of(conn.scope.get("method", "GET"), conn.scope.get("route"))
        key = principal.rate_key if principal else address
        state["rate_quota"] = await limiter.hit(category, key, per_token=principal is not None)
    except RateLimitExceeded as exc:
        state["rate_quota"] = exc.quota
        services.metrics.rate_limited.labels(exc.category).inc()
        if conn.scope["type"] == "websocket":
            raise WebSocketException(WS_1008_POLICY_VIOLATION, exc.message) from exc
        raise


async def require_principal(conn: HTTPConnection) -> Principal:
    """The authenticated caller, or 401 (a policy-violation close on a WebSocket)."""
    principal: Principal | None = conn.scope["state"].get("principal")
    if principal is not None:
        return principal
    error = conn.scope["state"].get("auth_error") or AuthenticationFailed()
    if conn.scope["type"] == "websocket":
        raise WebSocketException(WS_1008_POLICY_VIOLATION, error.message)
    raise error

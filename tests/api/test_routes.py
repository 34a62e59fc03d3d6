"""Every route identifies its caller and charges the rate limit, and every route is
authenticated unless it is declared public: no route escapes."""

from __future__ import annotations

from fastapi.routing import APIRoute, APIWebSocketRoute

from stockade.api.deps import PUBLIC, identify, is_public, require_principal
from stockade.api.routing import StockadeRoute
from stockade.testing import TestApp


def test_every_route_identifies_the_caller(stockade: TestApp) -> None:
    http = [r for r in stockade.app.routes if isinstance(r, APIRoute)]
    sockets = [r for r in stockade.app.routes if isinstance(r, APIWebSocketRoute)]
    assert len(http) >= 12
    assert sockets
    assert all(isinstance(route, StockadeRoute) for route in http)
    for route in sockets:
        calls = [d.call for d in route.dependant.dependencies]
        assert calls[:2] == [identify, require_principal], route.path


def test_only_the_documented_routes_are_public(stockade: TestApp) -> None:
    public = {
        (method, route.path)
        for route in stockade.app.routes
        if isinstance(route, APIRoute) and is_public(route)
        for method in route.methods
    }
    assert public == {
        ("GET", "/"),
        ("GET", "/health"),
        ("GET", "/api/v1/health"),
        ("POST", "/api/v1/auth/login"),
        ("POST", "/v1/auth/login"),
    }


async def test_a_new_route_is_protected_unless_declared_public(stockade: TestApp) -> None:
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    stockade.app.add_api_route("/hello", hello)
    stockade.app.add_api_route("/hello-public", hello, openapi_extra=PUBLIC)
    assert (await stockade.client.get("/hello")).status_code == 401
    assert (await stockade.client.get("/hello-public")).status_code == 200


async def test_unauthenticated_requests_are_refused_before_the_body_is_read(
    stockade: TestApp,
) -> None:
    response = await stockade.client.post(
        "/api/v1/users", content=b"{broken", headers={"content-type": "application/json"}
    )
    assert response.status_code == 401

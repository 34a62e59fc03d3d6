"""Every route identifies its caller and charges the rate limit: no route escapes."""

from __future__ import annotations

from fastapi.routing import APIRoute, APIWebSocketRoute

from stockade.api.deps import identify
from stockade.api.routing import StockadeRoute
from stockade.testing import TestApp


def test_every_route_identifies_the_caller(stockade: TestApp) -> None:
    http = [r for r in stockade.app.routes if isinstance(r, APIRoute)]
    sockets = [r for r in stockade.app.routes if isinstance(r, APIWebSocketRoute)]
    assert len(http) >= 12
    assert sockets
    assert all(isinstance(route, StockadeRoute) for route in http)
    for route in sockets:
        assert any(d.call is identify for d in route.dependant.dependencies), route.path


async def test_unauthenticated_requests_are_refused_before_the_body_is_read(
    stockade: TestApp,
) -> None:
    response = await stockade.client.post(
        "/api/v1/users", content=b"{broken", headers={"content-type": "application/json"}
    )
    assert response.status_code == 401

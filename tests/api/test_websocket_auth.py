"""Seed 004's browser credential form on WebSockets: the subprotocol pair."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from stockade.api.app import create_app
from stockade.services import Services
from stockade.testing import ADMIN_PASSWORD, fast_passwords, make_settings


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = make_settings(tmp_path / "home")
    app = create_app(settings, services=Services.build(settings, passwords=fast_passwords()))
    return TestClient(app)


def test_subprotocol_pair_authenticates_and_is_answered(client: TestClient) -> None:
    with client:
        login = client.post(
            "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
        )
        token = login.json()["token"]
        with client.websocket_connect(
            "/api/v1/events/ws?type=apikey.", subprotocols=["Authorization", f"Bearer {token}"]
        ) as ws:
            assert ws.accepted_subprotocol == "Authorization"
            created = client.post(
                "/api/v1/api-keys", json={}, headers={"Authorization": f"Bearer {token}"}
            ).json()
            event = ws.receive_json()
            assert event["type"] == "apikey.created"
            assert event["data"] == {"id": created["id"]}


@pytest.mark.parametrize(
    "subprotocols", [[], ["Authorization", "Bearer not-a-token"], ["chat", "Bearer x"]]
)
def test_missing_or_bad_credentials_close_the_socket(
    client: TestClient, subprotocols: list[str]
) -> None:
    with (
        client,
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect("/api/v1/events/ws", subprotocols=subprotocols) as ws,
    ):
        ws.receive_json()
    assert closed.value.code == 1008


def test_a_websocket_refused_with_a_status_is_counted_with_it(client: TestClient) -> None:
    """A refusal sent as an HTTP answer before the upgrade (a missing environment's 404)
    is counted and logged with its own status; it read 500 (issue 7)."""
    with client:
        token = client.post(
            "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
        ).json()["token"]
        with (
            pytest.raises(WebSocketDenialResponse) as refused,
            client.websocket_connect(
                "/api/v1/environments/env-000000000000/attach",
                headers={"Authorization": f"Bearer {token}"},
            ),
        ):
            pass
        assert refused.value.status_code == 404
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
    route = 'route="/api/v1/environments/{env_id}/attach"'
    counted = [line for line in metrics.splitlines() if route in line and "_total{" in line]
    assert counted, metrics
    assert all('status="404"' in line for line in counted), counted

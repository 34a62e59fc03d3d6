"""The daemon as a real process: start-up, first admin, TLS, the metrics listener, the
event streams over real sockets, and shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import subprocess
from pathlib import Path

import httpx
import pytest
import websockets

from stockade.testing import ADMIN_PASSWORD, bearer, daemon_process, free_port
from tests.conftest import postgres_url, reset_postgres

# uvicorn finishes a graceful shutdown, then re-raises the SIGTERM it caught, so the
# process ends "killed by SIGTERM" as service managers expect.
CLEAN_EXIT = (0, -signal.SIGTERM)


def _login(url: str, password: str, **kwargs: object) -> str:
    response = httpx.post(
        f"{url}/api/v1/auth/login", json={"username": "admin", "password": password}, **kwargs
    )
    response.raise_for_status()
    token: str = response.json()["token"]
    return token


def test_first_start_makes_an_admin_and_prints_its_password_once(tmp_path: Path) -> None:
    home = tmp_path / "state"
    with daemon_process(home) as daemon:
        health = httpx.get(f"{daemon.url}/health").json()
        assert health["status"] == "healthy"
        assert set(health) >= {
            "status",
            "timestamp",
            "version",
            "uptime_seconds",
            "active_vms",
            "services",
            "capacity",
        }
        credentials = home / "admin-credentials.json"
        saved = json.loads(credentials.read_text())
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert saved["password"] in daemon.output()
        assert _login(daemon.url, saved["password"])
    with daemon_process(home) as again:
        assert saved["password"] not in again.output()
        assert _login(again.url, saved["password"])


def test_admin_password_from_the_environment(tmp_path: Path) -> None:
    home = tmp_path / "state"
    env = {"STOCKADE_ADMIN_PASSWORD": "from-the-environment"}
    with daemon_process(home, env=env) as daemon:
        assert _login(daemon.url, "from-the-environment")
        assert not (home / "admin-credentials.json").exists()


def test_metrics_port_serves_without_auth(tmp_path: Path) -> None:
    port = free_port()
    env = {"STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with daemon_process(tmp_path / "state", "--metrics-port", str(port), env=env) as daemon:
        httpx.get(f"{daemon.url}/health")
        assert httpx.get(f"{daemon.url}/metrics").status_code == 401
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'stockade_http_requests_total{method="GET",route="/health",status="200"}' in text


def test_tls_and_json_logs(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    args = ["--tls-cert", str(cert), "--tls-key", str(key), "--log-format", "json"]
    env = {"STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with daemon_process(tmp_path / "state", *args, env=env, scheme="https") as daemon:
        token = _login(daemon.url, ADMIN_PASSWORD, verify=False)
        me = httpx.get(f"{daemon.url}/api/v1/auth/me", headers=bearer(token), verify=False)
        assert me.status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(daemon.url.replace("https://", "http://") + "/health")
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=15) in CLEAN_EXIT
        output = daemon.output()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "stockade.access"]
    assert any(line["path"] == "/api/v1/auth/me" and line["status"] == 200 for line in access)
    assert all(line["request_id"] for line in access)


def test_sigterm_shuts_down_cleanly(tmp_path: Path) -> None:
    with daemon_process(tmp_path / "state", env={"STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD}) as d:
        d.process.send_signal(signal.SIGTERM)
        assert d.process.wait(timeout=15) in CLEAN_EXIT
        assert "Application shutdown complete" in d.output()
        assert "Traceback" not in d.output()


def test_events_stream_over_sse_and_websocket(tmp_path: Path) -> None:
    with daemon_process(tmp_path / "state", env={"STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD}) as d:
        token = _login(d.url, ADMIN_PASSWORD)
        asyncio.run(_receive_events(d.url, token))


async def _receive_events(url: str, token: str) -> None:
    ws_url = url.replace("http://", "ws://") + "/api/v1/events/ws?type=apikey."
    async with (
        httpx.AsyncClient(base_url=url, headers=bearer(token), timeout=10) as client,
        websockets.connect(ws_url, additional_headers=bearer(token)) as ws,
        client.stream("GET", "/api/v1/events", params={"type": "apikey."}) as sse,
    ):
        assert sse.status_code == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
        created = (await client.post("/api/v1/api-keys", json={})).json()
        async with asyncio.timeout(10):
            message = json.loads(await ws.recv())
            assert message["type"] == "apikey.created"
            assert message["data"] == {"id": created["id"]}
            async for line in sse.aiter_lines():
                if line.startswith("data: "):
                    assert json.loads(line[6:])["data"] == {"id": created["id"]}
                    break


def test_websocket_without_credentials_is_refused(tmp_path: Path) -> None:
    async def attempt(url: str) -> None:
        ws_url = url.replace("http://", "ws://") + "/api/v1/events/ws"
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(ws_url):
                pass
        assert refused.value.response.status_code == 403

    with daemon_process(tmp_path / "state", env={"STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD}) as d:
        asyncio.run(attempt(d.url))


@pytest.mark.postgres
def test_daemon_on_postgresql(tmp_path: Path) -> None:
    url = postgres_url()
    asyncio.run(reset_postgres(url))
    env = {"STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD, "STOCKADE_DATABASE_URL": url}
    with daemon_process(tmp_path / "state", env=env) as daemon:
        assert httpx.get(f"{daemon.url}/health").json()["services"]["store"] == "postgresql"
        auth = bearer(_login(daemon.url, ADMIN_PASSWORD))
        key = httpx.post(f"{daemon.url}/api/v1/api-keys", headers=auth, json={}).json()
        me = httpx.get(f"{daemon.url}/api/v1/auth/me", headers=bearer(key["key"]))
        assert me.json()["auth_method"] == "api_key"
        revoked = httpx.delete(f"{daemon.url}/api/v1/api-keys/{key['id']}", headers=auth)
        assert revoked.status_code == 204
        again = httpx.get(f"{daemon.url}/api/v1/auth/me", headers=bearer(key["key"]))
        assert again.status_code == 401
    assert not (tmp_path / "state" / "stockade.db").exists()

"""The seed's "coming" WebSocket (``/daemon/ws``), and a job whose body is a task for the
agent. Job bodies are data for the daemon; they run only inside sandboxes."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from stockade.api.app import create_app
from stockade.api.routes import daemon as daemon_routes
from stockade.services import Services
from stockade.testing import ADMIN_PASSWORD, bearer, fast_passwords, make_settings, running_app

BASIC = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
CODE = 'def execute():\n    return {"n": 1}\n'


def job(task_id: str, **body: Any) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "name": task_id.title(),
        "description": "a test job",
        "priority": "CRITICAL",
    } | body


def test_the_status_socket_sends_the_status_then_each_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No periodic push during the test: every message after the first is a change's.
    monkeypatch.setattr(daemon_routes, "STATUS_PUSH_SECONDS", 3600.0)
    settings = make_settings(tmp_path / "home")
    app = create_app(settings, services=Services.build(settings, passwords=fast_passwords()))
    with (
        TestClient(app) as client,
        client.websocket_connect("/daemon/ws", headers={"Authorization": BASIC}) as ws,
    ):
        first = ws.receive_json()
        assert first["state"] in ("idle", "working")
        assert first["running"] is True
        assert first["tasks_registered"] == 0
        assert set(first["metrics"]) == {
            "cpu_percent",
            "memory_percent",
            "is_idle",
            "is_sleep_time",
        }
        added = client.post(
            "/daemon/tasks/add", json=job("pushed", code=CODE), headers={"Authorization": BASIC}
        )
        assert added.status_code == 200, added.text
        # The add, then the run's start and end, each push a fresh status.
        seen = [ws.receive_json() for _ in range(3)]
        assert [s["tasks_registered"] for s in seen] == [1, 1, 1]
        # The last push follows the run's end.
        assert seen[-1]["active_runs"] == 0


def test_the_status_socket_needs_credentials(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    app = create_app(settings, services=Services.build(settings, passwords=fast_passwords()))
    with (
        TestClient(app) as client,
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect("/daemon/ws") as ws,
    ):
        ws.receive_json()
    assert closed.value.code == 1008


async def test_a_job_can_be_a_task_for_the_agent(tmp_path: Path) -> None:
    async with running_app(make_settings(tmp_path / "home")) as app:
        auth = bearer(await app.login())
        events = app.services.events.subscribe(["job.run."])
        added = await app.client.post(
            "/daemon/tasks/add", json=job("agentic", agent_task="disk usage"), headers=auth
        )
        assert added.status_code == 200, added.text
        with anyio.fail_after(30):
            async for event in events:
                if event.type in ("job.run.completed", "job.run.failed"):
                    break
        events.close()
        assert event.type == "job.run.completed", event
        [run] = (await app.client.get("/daemon/tasks/agentic/history", headers=auth)).json()["runs"]
        # The run's result is the task's: its id, output and exit code.
        task = await app.client.get(f"/api/v1/tasks/{run['result']['task']}", headers=auth)
        assert task.json()["status"] == "completed"
        assert task.json()["metadata"] == {"job": "agentic"}
        assert run["result"]["exit_code"] == 0
        assert "Ran 2 steps" in run["result"]["output"]


async def test_an_agent_job_waits_for_approvals_like_any_task(tmp_path: Path) -> None:
    async with running_app(make_settings(tmp_path / "home")) as app:
        auth = bearer(await app.login())
        events = app.services.events.subscribe(["approval.", "job.run."])
        await app.client.post(
            "/daemon/tasks/add",
            json=job("red", agent_task="run rm -f /home/sandbox/nothing"),
            headers=auth,
        )
        with anyio.fail_after(30):
            async for event in events:
                if event.type == "approval.requested":
                    break
        # The run lasts while the task waits for a person; a denial ends both.
        assert (await app.client.get("/daemon/status", headers=auth)).json()["active_runs"] == 1
        denied = await app.client.post(
            f"/api/v1/approvals/{event.data['id']}", json={"approved": False}, headers=auth
        )
        assert denied.status_code == 200
        with anyio.fail_after(30):
            async for event in events:
                if event.type in ("job.run.completed", "job.run.failed"):
                    break
        events.close()
        [run] = (await app.client.get("/daemon/tasks/red/history", headers=auth)).json()["runs"]
        assert run["status"] == "completed"
        assert "denied" in run["result"]["output"] or "refused" in run["result"]["output"]

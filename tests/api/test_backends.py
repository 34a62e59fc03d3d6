"""Choosing a sandbox backend: ``/health`` lists them, ``isolation.runtime_class`` picks
one per sandbox, ``STOCKADE_BACKEND`` the daemon's default, and a backend that cannot run
here says why. Real sandboxes, on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from stockade.testing import (
    ADMIN_PASSWORD,
    TestApp,
    basic_auth,
    make_settings,
    running_app,
    task_event,
)
from tests.problems import assert_problem

AUTH = basic_auth("admin", ADMIN_PASSWORD)
HOST_KERNEL = Path("/proc/version").read_text()


async def create(app: TestApp, **body: Any) -> dict[str, Any]:
    answer = await app.client.post(
        "/api/v1/environments", json={"name": "pick", **body}, headers=AUTH
    )
    assert answer.status_code in (200, 201), answer.text
    found: dict[str, Any] = answer.json()
    return found


async def kernel(app: TestApp, sandbox_id: str) -> str:
    """What the sandbox's kernel says it is (gVisor answers as its own kernel)."""
    answer = await app.client.post(
        f"/api/v1/environments/{sandbox_id}/exec",
        json={"command": ["cat", "/proc/version"]},
        headers=AUTH,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["exit_code"] == 0, answer.json()
    return str(answer.json()["stdout"])


@pytest.fixture
async def stockade(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[TestApp]:
    overrides: dict[str, Any] = getattr(request, "param", {})
    async with running_app(make_settings(tmp_path / "home", **overrides)) as app:
        yield app


async def test_health_lists_every_backend(stockade: TestApp) -> None:
    body = (await stockade.client.get("/health")).json()
    assert body["backends"] == {"namespace": "ok", "gvisor": "ok"}
    assert body["services"]["backend"] == "namespace: ok"


async def test_runtime_class_picks_the_backend_of_each_sandbox(stockade: TestApp) -> None:
    default = await create(stockade)
    runc = await create(stockade, isolation={"runtime_class": "runc"})
    gvisor = await create(stockade, isolation={"runtime_class": "gvisor"})
    assert await kernel(stockade, default["id"]) == HOST_KERNEL
    assert await kernel(stockade, runc["id"]) == HOST_KERNEL
    assert await kernel(stockade, gvisor["id"]) != HOST_KERNEL
    metrics = (await stockade.client.get("/metrics", headers=AUTH)).text
    assert 'vm_spawn_time_seconds_count{backend="namespace"} 2.0' in metrics
    assert 'vm_spawn_time_seconds_count{backend="gvisor"} 1.0' in metrics
    for made in (default, runc, gvisor):
        deleted = await stockade.client.delete(
            f"/api/v1/environments/{made['id']}", params={"force": "true"}, headers=AUTH
        )
        assert deleted.status_code in (200, 202, 204), deleted.text


@pytest.mark.parametrize("stockade", [{"backend": "gvisor"}], indirect=True)
async def test_stockade_backend_sets_the_default(stockade: TestApp) -> None:
    body = (await stockade.client.get("/health")).json()
    assert body["services"]["backend"] == "gvisor: ok"
    made = await create(stockade)
    assert await kernel(stockade, made["id"]) != HOST_KERNEL
    runc = await create(stockade, isolation={"runtime_class": "runc"})
    assert await kernel(stockade, runc["id"]) == HOST_KERNEL


async def test_an_unknown_runtime_class_is_refused(stockade: TestApp) -> None:
    answer = await stockade.client.post(
        "/api/v1/environments",
        json={"name": "pick", "isolation": {"runtime_class": "kata"}},
        headers=AUTH,
    )
    body = assert_problem(answer, 400, error="bad_request")
    assert "'gvisor'" in str(body["detail"])
    assert "'runc'" in str(body["detail"])


async def test_a_backend_that_cannot_run_here_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stockade.sandbox.gvisor.RUNSC", "runsc-not-on-this-host")
    async with running_app(make_settings(tmp_path / "home")) as app:
        body = (await app.client.get("/health")).json()
        assert body["status"] == "healthy"
        assert body["backends"]["namespace"] == "ok"
        assert body["backends"]["gvisor"].startswith("unavailable (runsc not installed")
        answer = await app.client.post(
            "/api/v1/environments",
            json={"name": "pick", "isolation": {"runtime_class": "gvisor"}},
            headers=AUTH,
        )
        problem = assert_problem(answer, 503, error="unavailable")
        assert "runsc not installed" in str(problem["detail"])
        # The default backend is unaffected.
        await create(app)


async def test_tasks_and_jobs_run_on_the_backend_they_name(stockade: TestApp) -> None:
    events = stockade.services.events.subscribe(["task.", "job."])
    try:
        made = await stockade.client.post(
            "/api/v1/tasks",
            json={"description": "run cat /proc/version", "runtime_class": "gvisor"},
            headers=AUTH,
        )
        assert made.status_code == 201, made.text
        assert made.json()["runtime_class"] == "gvisor"
        await task_event(events, "task.completed", made.json()["id"], within=60)
        task_url = f"/api/v1/tasks/{made.json()['id']}"
        task = (await stockade.client.get(task_url, headers=AUTH)).json()
        assert task["result"]["exit_code"] == 0, task
        assert "Linux version" in task["result"]["output"], task
        assert HOST_KERNEL.strip() not in task["result"]["output"], task

        job = {
            "task_id": "kernel",
            "name": "kernel",
            "priority": "CRITICAL",
            "code": "def execute():\n    return {'kernel': open('/proc/version').read()}",
            "runtime_class": "gvisor",
        }
        added = await stockade.client.post("/daemon/tasks/add", json=job, headers=AUTH)
        assert added.status_code == 200, added.text
        await task_event(events, "job.run.completed", "kernel", within=60)
        (run,) = (await stockade.client.get("/daemon/tasks/kernel/history", headers=AUTH)).json()[
            "runs"
        ]
        assert run["result"]["kernel"] != HOST_KERNEL
        detail = (await stockade.client.get("/daemon/tasks/kernel", headers=AUTH)).json()
        assert detail["runtime_class"] == "gvisor"
    finally:
        events.close()


async def test_tasks_and_jobs_refuse_an_unknown_runtime_class(stockade: TestApp) -> None:
    task = await stockade.client.post(
        "/api/v1/tasks", json={"description": "run true", "runtime_class": "kata"}, headers=AUTH
    )
    assert_problem(task, 400, error="bad_request")
    job = {"task_id": "k", "name": "k", "priority": "LOW", "command": "true"}
    added = await stockade.client.post(
        "/daemon/tasks/add", json={**job, "runtime_class": "kata"}, headers=AUTH
    )
    assert_problem(added, 400, error="bad_request")
    assert (await stockade.client.get("/api/v1/tasks", headers=AUTH)).json()["total"] == 0
    assert (await stockade.client.get("/daemon/tasks", headers=AUTH)).json()["total_tasks"] == 0

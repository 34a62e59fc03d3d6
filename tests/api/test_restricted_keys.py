"""A key limited to named environments reaches those environments and nothing else:
not its owner's tasks, approvals or jobs (issue 7's authorization matrix found that it
could read, cancel, run and delete them). Each answers 404, as for a missing id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stockade.testing import TestApp, bearer, make_settings, old_files, running_app
from tests.api.test_tasks import LOGS, waiting
from tests.problems import assert_problem


@pytest.fixture
async def stockade(tmp_path: Path) -> AsyncIterator[TestApp]:
    template = old_files(tmp_path / "template", LOGS)
    settings = make_settings(tmp_path / "home", task_template=template, jobs_autostart=False)
    async with running_app(settings) as app:
        yield app


async def limited_key(stockade: TestApp, token: str) -> str:
    env = await stockade.client.post(
        "/api/v1/environments", json={"name": "only-this"}, headers=bearer(token)
    )
    assert env.status_code == 201, env.text
    key = await stockade.client.post(
        "/api/v1/api-keys",
        json={"permissions": [{"environment_id": env.json()["id"], "permission": "admin"}]},
        headers=bearer(token),
    )
    assert key.status_code == 201, key.text
    return str(key.json()["key"])


async def test_a_limited_key_reaches_none_of_its_owners_tasks_or_approvals(
    stockade: TestApp, admin_token: str
) -> None:
    events = stockade.services.events.subscribe(["task.", "approval."])
    try:
        task, approval = await waiting(stockade, admin_token, events, "Delete old logs")
    finally:
        events.close()
    key = bearer(await limited_key(stockade, admin_token))
    client = stockade.client
    listed = await client.get("/api/v1/tasks", headers=key)
    assert listed.json() == {"tasks": [], "total": 0, "limit": 20, "offset": 0}
    assert (await client.get("/api/v1/approvals", headers=key)).json() == []
    for method, path, body in [
        ("GET", f"/api/v1/tasks/{task['id']}", None),
        ("DELETE", f"/api/v1/tasks/{task['id']}", None),
        ("GET", f"/api/v1/approvals/{approval['id']}", None),
        ("POST", f"/api/v1/approvals/{approval['id']}", {"approved": True}),
    ]:
        response = await client.request(method, path, headers=key, json=body)
        assert_problem(response, 404, error="not_found")
    # The owner's own credential still reaches both, untouched.
    still = await client.get(f"/api/v1/tasks/{task['id']}", headers=bearer(admin_token))
    assert still.json()["pending_approval_id"] == approval["id"]


async def test_a_limited_key_reaches_none_of_its_owners_jobs(
    stockade: TestApp, admin_token: str
) -> None:
    added = await stockade.client.post(
        "/daemon/tasks/add",
        json={"task_id": "nightly", "name": "Nightly", "priority": "LOW", "command": "true"},
        headers=bearer(admin_token),
    )
    assert added.status_code == 200, added.text
    key = bearer(await limited_key(stockade, admin_token))
    listed = await stockade.client.get("/daemon/tasks", headers=key)
    assert listed.json() == {"tasks": [], "total_tasks": 0}
    for method, path in [
        ("GET", "/daemon/tasks/nightly"),
        ("GET", "/daemon/tasks/nightly/history"),
        ("POST", "/daemon/tasks/nightly/run"),
        ("DELETE", "/daemon/tasks/nightly"),
    ]:
        response = await stockade.client.request(method, path, headers=key)
        assert_problem(response, 404, error="not_found")
    kept = await stockade.client.get("/daemon/tasks/nightly", headers=bearer(admin_token))
    assert kept.status_code == 200
    assert kept.json()["execution_count"] == 0

"""The lifecycle the sandbox service owns: the reaper, a sandbox that dies by itself, the
capacity limit, and a daemon that stops."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stockade.events import Subscription
from stockade.testing import TestApp, bearer, make_settings, running_app, sandbox_event
from tests.problems import assert_problem


async def status_after(
    app: TestApp, token: str, env_id: str, kind: str, events: Subscription
) -> dict[str, object]:
    """The environment as it reads once its ``kind`` event has been published."""
    await sandbox_event(events, kind, env_id)
    body: dict[str, object] = (
        await app.client.get(f"/api/v1/environments/{env_id}", headers=bearer(token))
    ).json()
    return body


async def kill_everything_in_a_sandbox(app: TestApp, token: str) -> tuple[str, httpx.Response]:
    """A new sandbox, and the answer to a ``kill -9 -1`` in it. Everything in the sandbox,
    the agent included, runs as the sandbox's user, so the sandbox is lost."""
    env_id = str(
        (
            await app.client.post(
                "/api/v1/environments", json={"name": "doomed"}, headers=bearer(token)
            )
        ).json()["id"]
    )
    killed = await app.client.post(
        f"/api/v1/environments/{env_id}/exec",
        json={"command": ["kill", "-9", "-1"]},
        headers=bearer(token),
    )
    return env_id, killed


@pytest.fixture
def events(stockade: TestApp) -> Iterator[Subscription]:
    """Sandbox events, subscribed before the test acts."""
    subscription = stockade.services.events.subscribe(["sandbox."])
    yield subscription
    subscription.close()


async def test_the_reaper_ends_a_sandbox_whose_timeout_passed(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    created = await stockade.client.post(
        "/api/v1/environments", json={"name": "short", "timeout": 1}, headers=bearer(admin_token)
    )
    assert created.json()["status"] == "running"
    env_id = created.json()["id"]
    body = await status_after(stockade, admin_token, env_id, "sandbox.terminated", events)
    assert body["status"] == "terminated"
    assert body["status_reason"] == "Its timeout passed."
    assert await stockade.services.sandboxes.active_count() == 0


async def test_a_sandbox_whose_processes_all_die_is_failed(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    env_id, killed = await kill_everything_in_a_sandbox(stockade, admin_token)
    assert_problem(killed, 409, error="conflict")
    assert "stopped during the command" in killed.json()["detail"]
    body = await status_after(stockade, admin_token, env_id, "sandbox.failed", events)
    assert body["status"] == "failed"
    assert "stopped unexpectedly" in str(body["status_reason"])


async def test_a_stop_lets_a_failure_under_way_finish_and_be_recorded(
    stockade: TestApp, admin_token: str
) -> None:
    """A sandbox lost just before the daemon stops: its clean-up (kill, reap, release)
    was cancelled by the stop, which left its log file open and its row reading
    `running`."""
    env_id, killed = await kill_everything_in_a_sandbox(stockade, admin_token)
    assert killed.status_code == 409  # the sandbox is lost; its failure is under way
    await stockade.services.sandboxes.stop()
    record = await stockade.services.store.sandboxes.get(env_id)
    assert record is not None
    assert record.status == "failed"
    assert "stopped unexpectedly" in str(record.status_reason)
    late = await stockade.client.post(
        f"/api/v1/environments/{env_id}/exec",
        json={"command": ["true"]},
        headers=bearer(admin_token),
    )
    assert_problem(late, 409, error="conflict")
    assert await stockade.services.sandboxes.active_count() == 0


async def test_past_the_capacity_a_create_is_refused_with_503(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", sandbox_max=1)
    async with running_app(settings) as app:
        token = await app.login()
        first = await app.client.post(
            "/api/v1/environments", json={"name": "one"}, headers=bearer(token)
        )
        assert first.status_code == 201
        second = await app.client.post(
            "/api/v1/environments", json={"name": "two"}, headers=bearer(token)
        )
        assert_problem(second, 503, error="unavailable")
        assert "maximum of 1" in second.json()["detail"]


async def test_a_clean_stop_marks_running_sandboxes_terminated(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    async with running_app(settings) as app:
        token = await app.login()
        env_id = (
            await app.client.post(
                "/api/v1/environments", json={"name": "kept"}, headers=bearer(token)
            )
        ).json()["id"]
    async with running_app(settings) as app:
        token = await app.login()
        body = (
            await app.client.get(f"/api/v1/environments/{env_id}", headers=bearer(token))
        ).json()
        assert body["status"] == "terminated"
        assert body["status_reason"] == "The daemon stopped."


async def test_a_delete_answers_while_the_host_is_cleaned(
    stockade: TestApp, admin_token: str
) -> None:
    """The DELETE answers once the sandbox's processes are killed; it says `terminating`
    until its remains are gone, then `terminated`. (This client has no hook that waits.)"""
    env_id = (
        await stockade.client.post(
            "/api/v1/environments", json={"name": "going"}, headers=bearer(admin_token)
        )
    ).json()["id"]
    transport = httpx.ASGITransport(app=stockade.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stockade.test") as raw:
        deleted = await raw.delete(
            f"/api/v1/environments/{env_id}?force=true", headers=bearer(admin_token)
        )
        assert deleted.status_code == 204
        during = await raw.get(f"/api/v1/environments/{env_id}", headers=bearer(admin_token))
        assert during.json()["status"] == "terminating"
        refused = await raw.post(
            f"/api/v1/environments/{env_id}/exec",
            json={"command": ["true"]},
            headers=bearer(admin_token),
        )
        assert_problem(refused, 409, error="conflict")
        again = await raw.delete(f"/api/v1/environments/{env_id}", headers=bearer(admin_token))
        assert again.status_code == 204
        await stockade.services.sandboxes.settled()
        after = await raw.get(f"/api/v1/environments/{env_id}", headers=bearer(admin_token))
        assert after.json()["status"] == "terminated"
        assert after.json()["status_reason"] == "Deleted."
    assert await stockade.services.sandboxes.active_count() == 0


async def test_a_daemon_starting_on_a_shared_store_leaves_other_daemons_sandboxes_alone(
    tmp_path: Path,
) -> None:
    """Two daemons (two homes, so two instances) on one database: the second's start
    settles only sandboxes of its own instance."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    first = make_settings(tmp_path / "one", database_url=url)
    second = make_settings(tmp_path / "two", database_url=url, run_dir=tmp_path / "run-two")
    async with running_app(first) as one:
        token = await one.login()
        created = await one.client.post(
            "/api/v1/environments", json={"name": "mine"}, headers=bearer(token)
        )
        assert created.status_code == 201
        env_id = created.json()["id"]
        async with running_app(second) as two:
            seen = await two.client.get(
                f"/api/v1/environments/{env_id}", headers=bearer(await two.login())
            )
            assert seen.json()["status"] == "running"
        after = await one.client.get(f"/api/v1/environments/{env_id}", headers=bearer(token))
        assert after.json()["status"] == "running"
        ran = await one.client.post(
            f"/api/v1/environments/{env_id}/exec", json={"command": ["true"]}, headers=bearer(token)
        )
        assert ran.json()["exit_code"] == 0


async def test_a_delete_answered_before_a_crash_reads_terminated_after_the_restart(
    tmp_path: Path,
) -> None:
    """Found by the crash loop: a DELETE answers 204 once the row says ``terminating``;
    a daemon killed before it wrote ``terminated`` left a row that the next start read as
    a sandbox that was running, and marked ``failed``."""
    settings = make_settings(tmp_path / "home")
    async with running_app(settings) as app:
        token = await app.login()
        ids = [
            (
                await app.client.post(
                    "/api/v1/environments", json={"name": name}, headers=bearer(token)
                )
            ).json()["id"]
            for name in ("deleted", "running")
        ]
    # What a kill -9 leaves: one row as its delete's answer left it, one running.
    with sqlite3.connect(settings.home / "stockade.db") as db:
        for env_id, status in zip(ids, ("terminating", "running"), strict=True):
            db.execute(
                "UPDATE sandboxes SET status = ?, status_reason = NULL, finished_at = NULL "
                "WHERE id = ?",
                (status, env_id),
            )
    db.close()
    async with running_app(settings) as app:
        token = await app.login()
        deleted, running = [
            (await app.client.get(f"/api/v1/environments/{i}", headers=bearer(token))).json()
            for i in ids
        ]
    assert deleted["status"] == "terminated", deleted
    assert deleted["finished_at"] is not None
    assert running["status"] == "failed", running
    assert "daemon stopped" in str(running["status_reason"])

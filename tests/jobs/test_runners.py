"""Warm job runners (``services/runners.py``), in real sandboxes: a run takes the runner
its owner's previous run warmed, in a sandbox no code has touched, under the job's own
name, environment and timeout; a runner serves one run; it is never another owner's;
and it is destroyed when nobody takes it, when the scheduler stops, or when turned off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from stockade.events import Event, Subscription
from stockade.testing import (
    ADMIN_PASSWORD,
    TestApp,
    basic_auth,
    bearer,
    make_settings,
    running_app,
    sandbox_event,
)

AUTH = basic_auth("admin", ADMIN_PASSWORD)
ENDED = ("job.run.completed", "job.run.failed", "job.run.interrupted")
# What the code sees of its sandbox, before it leaves a mark there.
LOOK = """
import os

def execute():
    home = os.environ["OMNIMIND_WORKSPACE"]
    found = sorted(os.listdir(home))
    with open(os.path.join(home, "mark"), "w") as f:
        f.write("touched")
    return {"job": os.environ["STOCKADE_JOB"], "home": found}
"""
SPIN = "def execute():\n    while True:\n        pass\n"


@pytest.fixture
async def stockade(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[TestApp]:
    overrides: dict[str, Any] = getattr(request, "param", {})
    async with running_app(make_settings(tmp_path / "home", **overrides)) as app:
        yield app


@pytest.fixture
def events(stockade: TestApp) -> Iterator[Subscription]:
    subscription = stockade.services.events.subscribe(["job.", "sandbox."])
    yield subscription
    subscription.close()


async def run_job(
    app: TestApp,
    events: Subscription,
    task_id: str,
    code: str = LOOK,
    headers: dict[str, str] = AUTH,
    **fields: Any,
) -> tuple[dict[str, Any], list[Event]]:
    """Add a CRITICAL job, wait for its run to end; the run as its history shows it, and
    the sandbox events seen meanwhile."""
    job = {"task_id": task_id, "name": task_id, "description": "runner test"}
    job |= {"priority": "CRITICAL", "code": code, **fields}
    added = await app.client.post("/daemon/tasks/add", json=job, headers=headers)
    assert added.status_code == 200, added.text
    seen: list[Event] = []
    with anyio.fail_after(60):
        async for event in events:
            if event.type.startswith("sandbox."):
                seen.append(event)
            elif event.type in ENDED and event.data.get("task_id") == task_id:
                break
    history = await app.client.get(f"/daemon/tasks/{task_id}/history", headers=headers)
    (run,) = history.json()["runs"]
    await app.services.jobs.runners.settled()
    await app.services.sandboxes.settled()
    return run, seen


async def environment(app: TestApp, sandbox_id: str) -> dict[str, Any]:
    answer = await app.client.get(f"/api/v1/environments/{sandbox_id}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def warmed(seen: list[Event], events: Subscription) -> str:
    """The id of the warm runner started after a run: from the events already seen, or
    the next ones (it may be reported running after the run ended)."""
    for event in seen:
        if event.type == "sandbox.running" and event.data["name"] == "job-runner":
            return str(event.data["id"])
    with anyio.fail_after(30):
        async for event in events:
            if event.type == "sandbox.running" and event.data["name"] == "job-runner":
                return str(event.data["id"])
    raise AssertionError("no warm runner was started")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_the_next_run_takes_the_warm_runner_in_an_untouched_sandbox(
    stockade: TestApp, events: Subscription
) -> None:
    first, _ = await run_job(stockade, events, "first")
    assert (first["status"], first["result"]) == ("completed", {"job": "first", "home": []})
    (warm,) = stockade.services.jobs.runners.waiting()
    waiting = await environment(stockade, warm)
    assert (waiting["name"], waiting["labels"]) == ("job-runner", {"stockade.job-runner": "warm"})
    assert waiting["status"] == "running"

    second, seen = await run_job(stockade, events, "second")
    # The runner's sandbox was up before the run was due, and the run's code ran there:
    # under the job's own STOCKADE_JOB, in a home the first run's mark never reached.
    assert (second["status"], second["result"]) == ("completed", {"job": "second", "home": []})
    assert at(waiting["created_at"]) < at(second["claimed_at"])
    renamed = [e.data for e in seen if e.type == "sandbox.updated"]
    (job,) = await stockade.services.store.jobs.named("second", owner_id=None)
    job_id = job.id
    assert [(r["id"], r["name"]) for r in renamed] == [(warm, "job-second")]
    assert not [e for e in seen if e.type == "sandbox.running" and e.data["name"] == "job-second"]
    # It served that one run and is gone; the next run's runner is another sandbox.
    after = await environment(stockade, warm)
    assert (after["name"], after["status"]) == ("job-second", "terminated")
    assert after["labels"] == {"stockade.job": job_id}
    (following,) = stockade.services.jobs.runners.waiting()
    assert following != warm


async def test_a_runner_is_never_another_owners(stockade: TestApp, events: Subscription) -> None:
    await run_job(stockade, events, "admins")
    (admins,) = stockade.services.jobs.runners.waiting()
    made = await stockade.client.post(
        "/api/v1/users", headers=AUTH, json={"username": "alice", "password": "alice-password"}
    )
    assert made.status_code == 201, made.text
    alice = bearer(await stockade.login("alice", "alice-password"))
    run, seen = await run_job(stockade, events, "alices", headers=alice)
    assert (run["status"], run["result"]) == ("completed", {"job": "alices", "home": []})
    # Alice's run started a runner of her own; the admin's still waits, untouched. (The
    # admin's runner may have been reported running only after the first run ended.)
    assert "job-alices" in [e.data["name"] for e in seen if e.type == "sandbox.running"]
    assert [e.data for e in seen if e.type == "sandbox.updated"] == []
    assert admins in stockade.services.jobs.runners.waiting()
    assert (await environment(stockade, admins))["name"] == "job-runner"
    foreign = await stockade.client.get(f"/api/v1/environments/{admins}", headers=alice)
    assert foreign.status_code == 404


async def test_a_warm_run_past_its_timeout_is_killed(
    stockade: TestApp, events: Subscription
) -> None:
    await run_job(stockade, events, "before")
    (warm,) = stockade.services.jobs.runners.waiting()
    run, _ = await run_job(stockade, events, "spin", SPIN, timeout_seconds=1)
    assert run["status"] == "failed"
    assert run["error"] == "timed out after 1 s; its processes were killed"
    assert (await environment(stockade, warm))["status"] == "terminated"
    assert stockade.services.jobs.runners.waiting() != [warm]


async def test_a_runner_deleted_by_its_owner_is_passed_over(
    stockade: TestApp, events: Subscription
) -> None:
    await run_job(stockade, events, "before")
    (warm,) = stockade.services.jobs.runners.waiting()
    deleted = await stockade.client.delete(
        f"/api/v1/environments/{warm}", params={"force": "true"}, headers=AUTH
    )
    assert deleted.status_code in (200, 202, 204), deleted.text
    run, seen = await run_job(stockade, events, "after")
    assert (run["status"], run["result"]) == ("completed", {"job": "after", "home": []})
    assert "job-after" in [e.data["name"] for e in seen if e.type == "sandbox.running"]


@pytest.mark.parametrize("stockade", [{"jobs_warm_idle": 0.5}], indirect=True)
async def test_a_runner_nobody_takes_is_destroyed_after_its_idle_time(
    stockade: TestApp, events: Subscription
) -> None:
    _, seen = await run_job(stockade, events, "once")
    warm = await warmed(seen, events)
    await sandbox_event(events, "sandbox.terminated", warm, within=30)
    assert stockade.services.jobs.runners.waiting() == []
    assert (await stockade.client.get("/health")).json()["active_vms"] == 0


async def test_stopping_the_scheduler_destroys_the_waiting_runners(
    stockade: TestApp, events: Subscription
) -> None:
    await run_job(stockade, events, "once")
    (warm,) = stockade.services.jobs.runners.waiting()
    stopped = await stockade.client.post("/daemon/stop", headers=AUTH)
    assert stopped.json()["status"] == "stopped"
    assert stockade.services.jobs.runners.waiting() == []
    await stockade.services.sandboxes.settled()
    assert (await environment(stockade, warm))["status"] == "terminated"


@pytest.mark.parametrize("stockade", [{"jobs_warm_runners": 0}], indirect=True)
async def test_without_warm_runners_each_run_starts_its_own(
    stockade: TestApp, events: Subscription
) -> None:
    for task_id in ("one", "two"):
        run, seen = await run_job(stockade, events, task_id)
        assert (run["status"], run["result"]) == ("completed", {"job": task_id, "home": []})
        assert [e.data["name"] for e in seen if e.type == "sandbox.running"] == [f"job-{task_id}"]
    assert stockade.services.jobs.runners.waiting() == []
    assert (await stockade.client.get("/health")).json()["active_vms"] == 0

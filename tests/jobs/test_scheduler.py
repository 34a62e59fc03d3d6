"""The job scheduler (seed 002) on an injected clock and load, in-process, with every run
in a real sandbox. The background loop is off (``jobs_autostart=False``) unless a test
starts it: each test drives ``tick()`` itself, so nothing waits for real time.

Job bodies are data for the daemon: they run only inside a sandbox, never on the host.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

from stockade.services.jobs import JobService
from stockade.store.tables import jobs as jobs_table
from stockade.testing import (
    FixedLoad,
    ManualClock,
    TestApp,
    bearer,
    make_settings,
    running_app,
)
from tests.problems import assert_problem

T0 = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)  # a Wednesday noon: not in sleep hours
CODE = 'def execute():\n    return {"n": 1}\n'
BOOM = 'def execute():\n    raise ValueError("boom")\n'
HOUR = 3600.0
IST = timezone(timedelta(hours=5, minutes=30))  # local time for tests that need one

Headers = dict[str, str]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def load() -> FixedLoad:
    return FixedLoad(cpu=5.0, memory=40.0)


@asynccontextmanager
async def scheduler_app(
    tmp_path: Path, clock: ManualClock, load: FixedLoad, **overrides: Any
) -> AsyncIterator[tuple[TestApp, Headers]]:
    """A started app whose scheduler loop does not run, and an admin's headers."""
    settings = make_settings(
        tmp_path / "home", jobs_autostart=False, rate_limit_enabled=False, **overrides
    )
    async with running_app(settings, clock=clock, load=load) as app:
        yield app, bearer(await app.login())


@pytest.fixture
async def daemon(
    tmp_path: Path, clock: ManualClock, load: FixedLoad
) -> AsyncIterator[tuple[TestApp, Headers]]:
    async with scheduler_app(tmp_path, clock, load) as started:
        yield started


async def add(app: TestApp, auth: Headers, task_id: str, priority: str, **extra: Any) -> None:
    """``POST /daemon/tasks/add``; a tiny ``execute()`` unless another body is given."""
    body: dict[str, Any] = {
        "task_id": task_id,
        "name": f"Job {task_id}",
        "description": "a test job",
        "priority": priority,
    }
    if not {"code", "command", "agent_task"} & extra.keys():
        body["code"] = CODE
    response = await app.client.post("/daemon/tasks/add", json=body | extra, headers=auth)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "task_added"


async def job(app: TestApp, auth: Headers, task_id: str) -> dict[str, Any]:
    response = await app.client.get(f"/daemon/tasks/{task_id}", headers=auth)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def next_run(app: TestApp, auth: Headers, task_id: str) -> datetime | None:
    value = (await job(app, auth, task_id))["next_run_at"]
    return None if value is None else datetime.fromisoformat(value)


async def history(app: TestApp, auth: Headers, task_id: str) -> list[dict[str, Any]]:
    """The job's runs, newest first."""
    response = await app.client.get(f"/daemon/tasks/{task_id}/history", headers=auth)
    assert response.status_code == 200, response.text
    runs: list[dict[str, Any]] = response.json()["runs"]
    return runs


async def run_count(app: TestApp, auth: Headers, task_id: str) -> int:
    return len(await history(app, auth, task_id))


async def status(app: TestApp, auth: Headers) -> dict[str, Any]:
    response = await app.client.get("/daemon/status", headers=auth)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def tick(app: TestApp) -> bool:
    """One scheduling pass, then wait for the runs it started to end."""
    waiting = await app.services.jobs.tick()
    await app.services.jobs.idle()
    return waiting


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


class Gate:
    """Holds every code run of ``jobs`` (after it was claimed, before its sandbox starts)
    until ``open()``: a run stays active for as long as a test needs, with no sleep."""

    def __init__(self, jobs: JobService, monkeypatch: pytest.MonkeyPatch) -> None:
        self._open = asyncio.Event()
        original: Callable[..., Awaitable[Any]] = jobs._run_code

        async def gated(*args: Any) -> Any:
            await self._open.wait()
            return await original(*args)

        monkeypatch.setattr(jobs, "_run_code", gated)

    def open(self) -> None:
        self._open.set()


# Priorities and windows.


async def test_critical_runs_at_any_load(daemon: tuple[TestApp, Headers], load: FixedLoad) -> None:
    app, auth = daemon
    load.cpu = 100.0
    await add(app, auth, "urgent", "CRITICAL")
    assert await tick(app) is False
    [run] = await history(app, auth, "urgent")
    assert run["status"] == "completed", run
    assert run["trigger"] == "schedule"
    assert run["result"] == {"n": 1}


async def test_high_runs_only_below_the_idle_cpu(
    daemon: tuple[TestApp, Headers], load: FixedLoad
) -> None:
    app, auth = daemon
    await add(app, auth, "high", "HIGH")
    for busy in (25.0, 20.0):  # 20 is the threshold: only below it is idle
        load.cpu = busy
        assert await tick(app) is True, busy
        assert await run_count(app, auth, "high") == 0
        assert await next_run(app, auth, "high") == T0
    load.cpu = 19.5
    assert await tick(app) is False
    assert [r["status"] for r in await history(app, auth, "high")] == ["completed"]


async def test_medium_runs_below_low_activity_while_high_waits(
    daemon: tuple[TestApp, Headers], load: FixedLoad
) -> None:
    app, auth = daemon
    await add(app, auth, "medium", "MEDIUM")
    for busy in (60.0, 50.0):
        load.cpu = busy
        assert await tick(app) is True, busy
        assert await run_count(app, auth, "medium") == 0
    await add(app, auth, "high", "HIGH")
    load.cpu = 25.0  # low activity, but not idle
    assert await tick(app) is True  # HIGH is left waiting
    assert [r["status"] for r in await history(app, auth, "medium")] == ["completed"]
    assert await run_count(app, auth, "high") == 0


async def test_low_runs_only_in_sleep_hours(
    daemon: tuple[TestApp, Headers], clock: ManualClock, load: FixedLoad
) -> None:
    app, auth = daemon
    load.cpu = 0.0
    await add(app, auth, "nightly", "LOW")
    for hour, minute in ((12, 0), (18, 0), (23, 59)):  # sleep hours are 00:00-06:00
        clock.set(T0.replace(hour=hour, minute=minute))
        assert await tick(app) is True, (hour, minute)
        assert await run_count(app, auth, "nightly") == 0
    clock.set(T0.replace(day=5, hour=0))
    assert await tick(app) is False
    [run] = await history(app, auth, "nightly")
    assert run["status"] == "completed"
    assert at(run["scheduled_for"]) == T0


async def test_allowed_and_sleep_time_follow_the_default_settings(
    daemon: tuple[TestApp, Headers],
) -> None:
    jobs = daemon[0].services.jobs
    table = [
        (0, 100.0, False, True),
        (1, 19.9, False, True),
        (1, 20.0, False, False),
        (1, 0.0, True, True),
        (2, 49.9, False, True),
        (2, 50.0, False, False),
        (3, 0.0, False, False),
        (3, 99.0, True, True),
    ]
    for priority, cpu, sleeping, expected in table:
        assert jobs.allowed(priority, cpu, sleeping) is expected, (priority, cpu, sleeping)
    hours = {(0, 0): True, (3, 0): True, (5, 59): True, (6, 0): False, (23, 59): False}
    for (hour, minute), expected in hours.items():
        when = T0.replace(hour=hour, minute=minute)
        assert jobs.is_sleep_time(when) is expected, (hour, minute)


async def test_thresholds_and_sleep_hours_are_settings(tmp_path: Path, load: FixedLoad) -> None:
    clock = ManualClock(T0, tz=IST)  # 12:00 UTC is 17:30 local
    async with scheduler_app(
        tmp_path,
        clock,
        load,
        jobs_idle_cpu=80,
        jobs_low_activity_cpu=90,
        jobs_sleep_hours="22:00-02:00",
    ) as (app, auth):
        load.cpu = 70.0
        for task_id, priority in (("high", "HIGH"), ("medium", "MEDIUM"), ("low", "LOW")):
            await add(app, auth, task_id, priority)
        assert await tick(app) is True  # LOW waits: 17:30 is outside 22:00-02:00
        assert await run_count(app, auth, "high") == 1
        assert await run_count(app, auth, "medium") == 1
        load.cpu = 85.0
        await add(app, auth, "high-busy", "HIGH")
        await add(app, auth, "medium-busy", "MEDIUM")
        assert await tick(app) is True
        assert await run_count(app, auth, "high-busy") == 0
        assert await run_count(app, auth, "medium-busy") == 1
        # 21:30 UTC is 03:00 local: sleep hours by the default, not by these settings.
        clock.set(T0.replace(hour=21, minute=30))
        assert await tick(app) is True
        assert await run_count(app, auth, "low") == 0
        clock.set(T0.replace(hour=16, minute=29))  # 21:59 local
        assert await tick(app) is True
        assert await run_count(app, auth, "low") == 0
        clock.set(T0.replace(hour=16, minute=30))  # 22:00 local
        load.cpu = 79.0
        assert await tick(app) is False
        assert await run_count(app, auth, "low") == 1
        assert await run_count(app, auth, "high-busy") == 1
        # The window crosses midnight: 01:59 local is in it, 02:00 is not.
        jobs = app.services.jobs
        assert jobs.is_sleep_time(datetime(2026, 3, 4, 20, 29, tzinfo=UTC)) is True
        assert jobs.is_sleep_time(datetime(2026, 3, 4, 20, 30, tzinfo=UTC)) is False


# Repeat intervals and cron.


async def test_repeat_hours_keeps_its_phase(
    daemon: tuple[TestApp, Headers], clock: ManualClock
) -> None:
    app, auth = daemon
    await add(app, auth, "every2h", "CRITICAL", repeat_hours=2)
    assert await next_run(app, auth, "every2h") == T0
    assert await tick(app) is False
    assert await next_run(app, auth, "every2h") == T0 + timedelta(hours=2)
    clock.advance(2 * HOUR - 60)
    assert await tick(app) is False
    assert await run_count(app, auth, "every2h") == 1
    clock.set(T0 + timedelta(hours=2, minutes=10))  # ten minutes late
    assert await tick(app) is False
    runs = await history(app, auth, "every2h")
    assert [at(r["scheduled_for"]) for r in runs] == [T0 + timedelta(hours=2), T0]
    assert [r["status"] for r in runs] == ["completed", "completed"]
    # The next occurrence keeps the phase of the first, not of the late run.
    assert await next_run(app, auth, "every2h") == T0 + timedelta(hours=4)


async def test_repeat_intervals_in_seconds_and_as_timedelta_text(
    daemon: tuple[TestApp, Headers], clock: ManualClock
) -> None:
    app, auth = daemon
    await add(app, auth, "secs", "CRITICAL", repeat_interval=90)
    await add(app, auth, "text", "CRITICAL", repeat_interval="2:00:00")
    await add(app, auth, "daily", "CRITICAL", repeat_interval="1 day, 0:00:00")
    await add(app, auth, "hours", "CRITICAL", repeat_hours=2)
    await add(app, auth, "quarterly", "CRITICAL", cron="*/15 * * * *")
    await add(app, auth, "once", "CRITICAL")
    listed = await app.client.get("/daemon/tasks", headers=auth)
    assert listed.status_code == 200, listed.text
    intervals = {t["task_id"]: t["repeat_interval"] for t in listed.json()["tasks"]}
    assert intervals == {
        "secs": "0:01:30",
        "text": "2:00:00",
        "daily": "1 day, 0:00:00",
        "hours": "2:00:00",
        "quarterly": None,
        "once": None,
    }
    assert listed.json()["total_tasks"] == 6
    # Five are due, four run at once (STOCKADE_JOBS_CONCURRENCY): the fifth waits a pass.
    assert await tick(app) is True
    assert await tick(app) is False
    expected = {
        "secs": T0 + timedelta(seconds=90),
        "text": T0 + timedelta(hours=2),
        "daily": T0 + timedelta(days=1),
        "hours": T0 + timedelta(hours=2),
        "quarterly": T0 + timedelta(minutes=15),  # a cron job waits for its first time
        "once": None,
    }
    for task_id, when in expected.items():
        assert await next_run(app, auth, task_id) == when, task_id
    clock.advance(90)
    assert await tick(app) is False
    counts = {task_id: await run_count(app, auth, task_id) for task_id in expected}
    assert counts == {"secs": 2, "text": 1, "daily": 1, "hours": 1, "quarterly": 0, "once": 1}
    assert await next_run(app, auth, "secs") == T0 + timedelta(seconds=180)


async def test_cron_runs_at_its_times_in_local_time(tmp_path: Path, load: FixedLoad) -> None:
    start = T0.replace(minute=7)  # 12:07 UTC, 17:37 local
    clock = ManualClock(start, tz=IST)
    async with scheduler_app(tmp_path, clock, load) as (app, auth):
        await add(app, auth, "quarter", "CRITICAL", cron="*/15 * * * *")
        await add(app, auth, "hourly", "CRITICAL", cron="0 * * * *")
        await add(app, auth, "at-three", "CRITICAL", cron="0 3 * * *")
        assert await next_run(app, auth, "quarter") == T0.replace(minute=15)
        # The top of a local hour is half past a UTC one.
        assert await next_run(app, auth, "hourly") == T0.replace(minute=30)
        # 03:00 local on the 5th is 21:30 UTC on the 4th.
        assert await next_run(app, auth, "at-three") == T0.replace(hour=21, minute=30)
        assert await tick(app) is False  # nothing is due yet
        assert await run_count(app, auth, "quarter") == 0
        clock.set(T0.replace(minute=15))
        assert await tick(app) is False
        assert await run_count(app, auth, "quarter") == 1
        assert await run_count(app, auth, "hourly") == 0
        assert await next_run(app, auth, "quarter") == T0.replace(minute=30)
        clock.set(T0.replace(minute=31))
        assert await tick(app) is False
        assert await run_count(app, auth, "quarter") == 2
        assert await run_count(app, auth, "hourly") == 1
        assert await next_run(app, auth, "quarter") == T0.replace(minute=45)
        assert await next_run(app, auth, "hourly") == T0.replace(hour=13, minute=30)
        [run] = await history(app, auth, "hourly")
        assert at(run["scheduled_for"]) == T0.replace(minute=30)


async def test_a_one_off_job_runs_once(daemon: tuple[TestApp, Headers], clock: ManualClock) -> None:
    app, auth = daemon
    await add(app, auth, "once", "CRITICAL", command="true")
    assert await tick(app) is False
    assert await next_run(app, auth, "once") is None
    clock.advance(3 * 24 * HOUR)
    assert await tick(app) is False
    [run] = await history(app, auth, "once")
    assert run["status"] == "completed"
    assert run["result"] == {"exit_code": 0, "stdout": ""}
    listed = await job(app, auth, "once")
    assert listed["execution_count"] == 1


# Misfires.


async def test_missed_occurrences_coalesce_into_one_run(
    daemon: tuple[TestApp, Headers], clock: ManualClock
) -> None:
    app, auth = daemon
    await add(app, auth, "hourly", "CRITICAL", repeat_hours=1)
    assert await tick(app) is False
    now = clock.advance(10 * HOUR + 300)  # ten occurrences missed, no tick meanwhile
    assert await tick(app) is False
    runs = await history(app, auth, "hourly")
    assert len(runs) == 2
    assert at(runs[0]["scheduled_for"]) == T0 + timedelta(hours=1)  # the first missed one
    assert await next_run(app, auth, "hourly") == T0 + timedelta(hours=11)
    assert T0 + timedelta(hours=11) > now
    assert await tick(app) is False
    assert await run_count(app, auth, "hourly") == 2
    assert (await job(app, auth, "hourly"))["execution_count"] == 2


# Stop and start.


async def test_start_and_stop_answer_omnimind_statuses(
    daemon: tuple[TestApp, Headers],
) -> None:
    app, auth = daemon
    assert (await status(app, auth))["running"] is False

    async def post(path: str) -> str:
        response = await app.client.post(path, headers=auth)
        assert response.status_code == 200, response.text
        answer: str = response.json()["status"]
        return answer

    assert await post("/daemon/start") == "started"
    assert await post("/daemon/start") == "already_running"
    assert (await status(app, auth))["running"] is True
    assert await post("/daemon/stop") == "stopped"
    assert await post("/daemon/stop") == "not_running"
    assert (await status(app, auth))["running"] is False
    assert await post("/daemon/start") == "started"
    assert (await status(app, auth))["running"] is True


async def test_only_admins_start_or_stop_the_scheduler(
    daemon: tuple[TestApp, Headers],
) -> None:
    app, auth = daemon
    made = await app.client.post(
        "/api/v1/users", headers=auth, json={"username": "alice", "password": "alice-password"}
    )
    assert made.status_code == 201, made.text
    alice = bearer(await app.login("alice", "alice-password"))
    refused = "Only an admin may start or stop the scheduler."
    answer = await app.client.post("/daemon/start", headers=alice)
    assert_problem(answer, 403, error="forbidden", detail=refused)
    assert app.services.jobs.running is False
    assert (await app.client.post("/daemon/start", headers=auth)).json()["status"] == "started"
    answer = await app.client.post("/daemon/stop", headers=alice)
    assert_problem(answer, 403, error="forbidden", detail=refused)
    assert app.services.jobs.running is True
    # A user may still read the status.
    assert (await status(app, alice))["running"] is True


async def test_the_started_scheduler_runs_due_jobs_and_a_stopped_one_does_not(
    daemon: tuple[TestApp, Headers],
) -> None:
    app, auth = daemon
    events = app.services.events.subscribe(["job."])

    async def completed(task_id: str) -> None:
        with anyio.fail_after(60):
            async for event in events:
                if event.type == "job.run.completed" and event.data["task_id"] == task_id:
                    return

    try:
        assert (await app.client.post("/daemon/start", headers=auth)).json()["status"] == "started"
        await add(app, auth, "first", "CRITICAL")  # nobody ticks but the scheduler's loop
        await completed("first")
        assert [r["status"] for r in await history(app, auth, "first")] == ["completed"]

        loop = app.services.jobs._scheduler
        assert loop is not None
        assert (await app.client.post("/daemon/stop", headers=auth)).json()["status"] == "stopped"
        # The loop has ended, so nothing can claim the next job until a start.
        assert loop.done()
        assert app.services.jobs._scheduler is None
        await add(app, auth, "second", "CRITICAL")
        assert (await status(app, auth))["tasks_pending"] == 1
        assert await run_count(app, auth, "second") == 0

        assert (await app.client.post("/daemon/start", headers=auth)).json()["status"] == "started"
        await completed("second")
        assert (await status(app, auth))["tasks_pending"] == 0
    finally:
        events.close()


# Concurrency.


async def test_no_more_runs_at_once_than_the_concurrency(
    tmp_path: Path, clock: ManualClock, load: FixedLoad, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with scheduler_app(tmp_path, clock, load, jobs_concurrency=2) as (app, auth):
        names = [f"job{i}" for i in range(5)]
        for name in names:
            await add(app, auth, name, "CRITICAL")
        gate = Gate(app.services.jobs, monkeypatch)

        async def claimed() -> int:
            return sum([await run_count(app, auth, name) for name in names])

        assert await app.services.jobs.tick() is True  # three are left for a free slot
        current = await status(app, auth)
        assert current["active_runs"] == 2
        assert current["tasks_pending"] == 3
        assert current["state"] == "working"
        assert await claimed() == 2
        assert await app.services.jobs.tick() is True  # still full: nothing more starts
        assert (await status(app, auth))["active_runs"] == 2
        assert await claimed() == 2

        gate.open()
        await app.services.jobs.idle()
        assert await claimed() == 2
        assert await tick(app) is True
        assert await claimed() == 4
        assert await tick(app) is False
        assert await claimed() == 5
        for name in names:
            listed = await job(app, auth, name)
            assert (listed["execution_count"], listed["success_count"]) == (1, 1), name
        assert (await status(app, auth))["tasks_pending"] == 0


# Statistics.


async def test_statistics_count_successes_and_failures(
    daemon: tuple[TestApp, Headers], clock: ManualClock
) -> None:
    app, auth = daemon
    await add(app, auth, "stats", "CRITICAL", repeat_hours=1)
    fresh = await job(app, auth, "stats")
    assert (fresh["execution_count"], fresh["success_count"], fresh["failure_count"]) == (0, 0, 0)
    assert fresh["last_execution"] is None
    assert fresh["last_result"] is None

    assert await tick(app) is False
    clock.advance(HOUR)
    assert await tick(app) is False
    after = await job(app, auth, "stats")
    assert (after["execution_count"], after["success_count"], after["failure_count"]) == (2, 2, 0)
    assert at(after["last_execution"]) == T0 + timedelta(hours=1)
    assert after["last_result"] == {"n": 1}

    # The job's code changes under it (as if edited in the database): the next run fails.
    async with app.services.store.db.begin() as conn:
        await conn.execute(
            jobs_table.update().where(jobs_table.c.task_id == "stats").values(body=BOOM)
        )
    clock.advance(HOUR)
    assert await tick(app) is False
    failed = await job(app, auth, "stats")
    assert (failed["execution_count"], failed["success_count"], failed["failure_count"]) == (
        3,
        2,
        1,
    )
    assert at(failed["last_execution"]) == T0 + timedelta(hours=2)
    assert failed["last_result"] is None  # the last run's result: a failed run has none
    newest, *older = await history(app, auth, "stats")
    assert newest["status"] == "failed"
    assert "Traceback (most recent call last)" in newest["error"]
    assert 'File "<job>", line 2, in execute' in newest["error"]
    assert newest["error"].rstrip().endswith("ValueError: boom")
    assert newest["result"] is None
    assert [r["status"] for r in older] == ["completed", "completed"]

    listed = await app.client.get("/daemon/tasks", headers=auth)
    [row] = listed.json()["tasks"]
    assert (row["execution_count"], row["success_count"], row["failure_count"]) == (3, 2, 1)
    assert row["last_execution"] == failed["last_execution"]


async def test_a_failing_command_counts_as_a_failure(daemon: tuple[TestApp, Headers]) -> None:
    app, auth = daemon
    await add(app, auth, "exit3", "CRITICAL", command="echo out; exit 3")
    assert await tick(app) is False
    [run] = await history(app, auth, "exit3")
    assert run["status"] == "failed"
    assert run["error"] == "exited with status 3"
    assert run["result"] == {"exit_code": 3, "stdout": "out\n"}
    listed = await job(app, auth, "exit3")
    assert (listed["execution_count"], listed["success_count"], listed["failure_count"]) == (
        1,
        0,
        1,
    )


# Status.


async def test_status_follows_the_load_the_clock_and_the_runs(
    daemon: tuple[TestApp, Headers],
    clock: ManualClock,
    load: FixedLoad,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, auth = daemon
    load.cpu, load.memory = 10.0, 42.5
    first = await status(app, auth)
    assert first["state"] == "idle"
    assert first["running"] is False
    assert first["metrics"] == {
        "cpu_percent": 10.0,
        "memory_percent": 42.5,
        "is_idle": True,
        "is_sleep_time": False,
    }
    assert (first["tasks_registered"], first["tasks_pending"], first["active_runs"]) == (0, 0, 0)
    assert first["workspace"] == str(app.services.settings.home)

    load.cpu = 30.0
    assert (await status(app, auth))["metrics"]["is_idle"] is False
    load.cpu = 0.0

    await add(app, auth, "a", "CRITICAL")
    await add(app, auth, "b", "CRITICAL")
    await add(app, auth, "new-year", "CRITICAL", cron="0 0 1 1 *")  # not due for months
    pending = await status(app, auth)
    assert (pending["tasks_registered"], pending["tasks_pending"]) == (3, 2)

    gate = Gate(app.services.jobs, monkeypatch)
    assert await app.services.jobs.tick() is False
    working = await status(app, auth)
    assert working["state"] == "working"
    assert (working["active_runs"], working["tasks_pending"]) == (2, 0)
    gate.open()
    await app.services.jobs.idle()
    assert (await status(app, auth))["state"] == "idle"

    clock.set(T0.replace(day=5, hour=3))
    night = await status(app, auth)
    assert night["metrics"]["is_sleep_time"] is True
    assert night["state"] == "idle"  # sleeping means the scheduler runs in sleep hours
    assert (await app.client.post("/daemon/start", headers=auth)).json()["status"] == "started"
    assert (await status(app, auth))["state"] == "sleeping"
    clock.set(T0.replace(day=5, hour=6))
    day = await status(app, auth)
    assert (day["state"], day["metrics"]["is_sleep_time"]) == ("idle", False)


async def test_a_manual_run_at_the_instant_of_a_due_occurrence_does_not_block_it(
    daemon: tuple[TestApp, Headers],
) -> None:
    app, auth = daemon
    await add(app, auth, "both", "CRITICAL", repeat_hours=1)
    # Due now (T0), and run by hand at the very same instant.
    ran = await app.client.post("/daemon/tasks/both/run", headers=auth)
    assert ran.status_code == 202, ran.text
    await app.services.jobs.idle()
    await tick(app)
    runs = await history(app, auth, "both")
    assert sorted(r["trigger"] for r in runs) == ["manual", "schedule"]
    assert {r["scheduled_for"] for r in runs} == {"2026-03-04T12:00:00Z"}
    assert all(r["status"] == "completed" for r in runs)
    # A second manual run at that instant is recorded too, a microsecond on.
    again = await app.client.post("/daemon/tasks/both/run", headers=auth)
    assert again.status_code == 202, again.text
    await app.services.jobs.idle()
    assert await run_count(app, auth, "both") == 3


async def test_a_failing_pass_reads_error_and_the_loop_goes_on(
    daemon: tuple[TestApp, Headers], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, auth = daemon
    real_due = app.services.store.jobs.due

    async def broken(at: datetime, *, limit: int = 500) -> Any:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(app.services.store.jobs, "due", broken)
    failures = app.services.events.subscribe(["scheduler.error"])
    assert (await app.client.post("/daemon/start", headers=auth)).json()["status"] == "started"
    with anyio.fail_after(10):
        failure = await failures.get()
    failures.close()
    assert failure.data == {"error": "the database went away"}
    assert (await status(app, auth))["state"] == "error"
    # Once passes succeed again, the state recovers and due jobs run.
    monkeypatch.setattr(app.services.store.jobs, "due", real_due)
    events = app.services.events.subscribe(["job.run."])
    await add(app, auth, "after", "CRITICAL")
    with anyio.fail_after(15):
        async for event in events:
            if event.type == "job.run.completed" and event.data["task_id"] == "after":
                break
    events.close()
    assert (await status(app, auth))["state"] in ("idle", "working")

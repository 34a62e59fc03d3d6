"""Exactly once across daemons (seed 002, acceptance 5): two daemons on one PostgreSQL,
each with its own home (so its own instance name and sandboxes), race for the same
occurrences; every occurrence runs once. The store's ``claim`` is also raced directly.

Job bodies are data for the daemon: they run only inside a sandbox, never on the host.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from stockade.sandbox.namespace import instance_name
from stockade.settings import Settings
from stockade.store import Store
from stockade.store.records import Job, JobRun, User
from stockade.store.tables import job_runs
from stockade.testing import FixedLoad, ManualClock, TestApp, bearer, make_settings, running_app
from tests.conftest import postgres_url, reset_postgres
from tests.jobs.test_scheduler import CODE, T0, add

JOBS = 20
ROUNDS = 10


@pytest.fixture
async def pg_url() -> str:
    url = postgres_url()
    await reset_postgres(url)
    return url


async def run_rows(app: TestApp) -> dict[str, list[tuple[datetime, str, str]]]:
    """Every job's runs as (scheduled_for, status, instance), read from the database."""
    query = sa.select(
        job_runs.c.job_id, job_runs.c.scheduled_for, job_runs.c.status, job_runs.c.instance
    )
    found: dict[str, list[tuple[datetime, str, str]]] = {}
    async with app.services.store.db.connect() as conn:
        for row in await conn.execute(query):
            found.setdefault(row.job_id, []).append((row.scheduled_for, row.status, row.instance))
    return found


async def race(daemons: list[TestApp], clock: ManualClock) -> None:
    """Both daemons tick at once, round after round, until nothing is due."""
    for _ in range(ROUNDS):
        await asyncio.gather(*(d.services.jobs.tick() for d in daemons))
        await asyncio.gather(*(d.services.jobs.idle() for d in daemons))
        if not await daemons[0].services.store.jobs.due(clock.now()):
            return
    raise AssertionError(f"jobs were still due after {ROUNDS} rounds")


@pytest.mark.postgres
async def test_two_daemons_run_each_occurrence_exactly_once(tmp_path: Path, pg_url: str) -> None:
    clock = ManualClock(T0)
    load = FixedLoad(cpu=5.0)

    def settings(name: str) -> Settings:
        # Its own home: its own instance name, run directory and sandboxes.
        return make_settings(
            tmp_path / name,
            database_url=pg_url,
            jobs_autostart=False,
            jobs_concurrency=8,  # fewer than the jobs: several rounds, each raced
            rate_limit_enabled=False,
        )

    assert instance_name(tmp_path / "one") != instance_name(tmp_path / "two")
    async with (
        running_app(settings("one"), clock=clock, load=load) as one,
        running_app(settings("two"), clock=clock, load=load) as two,
    ):
        auth = bearer(await one.login())
        assert one.services.jobs.instance != two.services.jobs.instance
        for number in range(JOBS):
            await add(one, auth, f"job{number:02}", "CRITICAL", repeat_hours=1)
        added = await one.services.store.jobs.listing(owner_id=None)
        assert len(added) == JOBS
        assert {j.next_run_at for j in added} == {T0}  # all due at the same instant
        # The second daemon sees them through the shared database.
        assert len(await two.services.store.jobs.due(T0)) == JOBS

        await race([one, two], clock)
        rows = await run_rows(one)
        assert set(rows) == {j.id for j in added}
        for job in added:
            assert [(at, status) for at, status, _ in rows[job.id]] == [(T0, "completed")], job
        instances = {instance for runs in rows.values() for _, _, instance in runs}
        assert instances <= {one.services.jobs.instance, two.services.jobs.instance}

        # The next occurrence, an hour on, is raced for again: one more run each.
        clock.advance(3600)
        await race([two, one], clock)
        rows = await run_rows(two)
        for job in added:
            runs = sorted(rows[job.id])
            assert [(at, status) for at, status, _ in runs] == [
                (T0, "completed"),
                (T0 + timedelta(hours=1), "completed"),
            ], job
        for job in await two.services.store.jobs.listing(owner_id=None):
            assert (job.execution_count, job.success_count, job.failure_count) == (2, 2, 0)
            assert job.next_run_at == T0 + timedelta(hours=2)
        await two.services.sandboxes.settled()
        await one.services.sandboxes.settled()


def job_record(owner: User, next_run_at: datetime) -> Job:
    return Job(
        id=str(uuid.uuid4()),
        owner_id=owner.id,
        task_id="raced",
        name="Raced",
        description="",
        priority=0,
        kind="code",
        body=CODE,
        repeat_seconds=3600.0,
        cron=None,
        idempotent=False,
        timeout_seconds=60,
        execution_count=0,
        success_count=0,
        failure_count=0,
        last_execution=None,
        last_result=None,
        next_run_at=next_run_at,
        created_at=next_run_at,
    )


def run_record(job: Job, instance: str) -> JobRun:
    assert job.next_run_at is not None
    return JobRun(
        id=str(uuid.uuid4()),
        job_id=job.id,
        scheduled_for=job.next_run_at,
        trigger="schedule",
        status="claimed",
        instance=instance,
        claimed_at=job.next_run_at,
        started_at=None,
        code_started_at=None,
        finished_at=None,
        result=None,
        error=None,
        logs=None,
    )


@pytest.fixture
async def two_stores(database_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores (two engines, two connection pools) on one database."""
    first, second = Store.from_url(database_url), Store.from_url(database_url)
    try:
        await first.open()
        await second.open()
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_of_fifty_concurrent_claims_of_one_occurrence_one_wins(
    two_stores: tuple[Store, Store],
) -> None:
    stores = two_stores
    owner = await stores[0].users.create(
        User(
            id="user-alice",
            username="alice",
            email=None,
            role="user",
            password_hash="x",
            created_at=T0,
        )
    )
    job = await stores[0].jobs.create(job_record(owner, T0))
    hour = timedelta(hours=1)

    async def claim_all(snapshot: Job, following: datetime) -> list[bool]:
        """50 claims of ``snapshot``'s occurrence at once, alternating the stores."""
        return await asyncio.gather(
            *(
                stores[i % 2].jobs.claim(snapshot, following, run_record(snapshot, f"d{i % 2}"))
                for i in range(50)
            )
        )

    assert sorted(await claim_all(job, T0 + hour)) == [False] * 49 + [True]
    [run] = await stores[1].jobs.runs(job.id)
    assert run.scheduled_for == T0
    moved = await stores[1].jobs.get(job.id)
    assert moved is not None
    assert moved.next_run_at == T0 + hour

    # Daemons still holding the old snapshot cannot claim that occurrence again.
    assert await claim_all(job, T0 + hour) == [False] * 50
    assert len(await stores[0].jobs.runs(job.id)) == 1

    # The next occurrence is again won exactly once.
    assert sorted(await claim_all(moved, T0 + 2 * hour)) == [False] * 49 + [True]
    runs = await stores[0].jobs.runs(job.id)
    assert sorted(r.scheduled_for for r in runs) == [T0, T0 + hour]
    after = await stores[0].jobs.get(job.id)
    assert after is not None
    assert after.next_run_at == T0 + 2 * hour

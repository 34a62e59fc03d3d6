"""Queries on jobs and their runs. ``claim`` is where daemons sharing a database race for
an occurrence, and the store decides it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from stockade.store.database import Database
from stockade.store.records import Job, JobRun
from stockade.store.tables import UTCDateTime, job_runs, jobs

ACTIVE_RUNS = ("claimed", "running")


class JobStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, record: Job) -> Job:
        """Store a new job; ``IntegrityError`` when its owner already has that task_id."""
        values = {f: getattr(record, f) for f in Job.__slots__}
        async with self._db.begin() as conn:
            await conn.execute(jobs.insert(), values)
        return record

    async def get(self, job_id: str) -> Job | None:
        async with self._db.connect() as conn:
            row = (await conn.execute(jobs.select().where(jobs.c.id == job_id))).first()
        return Job(**row._mapping) if row else None

    async def named(self, task_id: str, *, owner_id: str | None) -> list[Job]:
        """The jobs called ``task_id`` (one per owner; ``owner_id`` None: anyone's)."""
        query = jobs.select().where(jobs.c.task_id == task_id)
        if owner_id is not None:
            query = query.where(jobs.c.owner_id == owner_id)
        async with self._db.connect() as conn:
            return [Job(**row._mapping) for row in await conn.execute(query.order_by(jobs.c.id))]

    async def listing(self, *, owner_id: str | None) -> list[Job]:
        """Jobs by priority, then age (``owner_id`` None: everyone's)."""
        query = jobs.select().order_by(jobs.c.priority, jobs.c.created_at, jobs.c.id)
        if owner_id is not None:
            query = query.where(jobs.c.owner_id == owner_id)
        async with self._db.connect() as conn:
            return [Job(**row._mapping) for row in await conn.execute(query)]

    async def delete(self, job_id: str) -> bool:
        async with self._db.begin() as conn:
            return (await conn.execute(jobs.delete().where(jobs.c.id == job_id))).rowcount == 1

    async def due(self, at: datetime, *, limit: int = 500) -> list[Job]:
        """Jobs whose next occurrence is at or before ``at``: by priority, oldest first."""
        query = (
            jobs.select()
            .where(jobs.c.next_run_at.is_not(None), jobs.c.next_run_at <= at)
            .order_by(jobs.c.priority, jobs.c.next_run_at, jobs.c.id)
            .limit(limit)
        )
        async with self._db.connect() as conn:
            return [Job(**row._mapping) for row in await conn.execute(query)]

    async def next_due(self) -> datetime | None:
        """The earliest next occurrence of any job."""
        async with self._db.connect() as conn:
            query = sa.select(sa.func.min(jobs.c.next_run_at, type_=UTCDateTime()))
            found: datetime | None = (await conn.execute(query)).scalar()
        return found

    async def claim(self, job: Job, following: datetime | None, run: JobRun) -> bool:
        """Claim the occurrence ``job.next_run_at``: move the job's next run on to
        ``following`` only if nobody has moved it since ``job`` was read, and record the
        run, in one transaction. Of daemons racing for an occurrence exactly one gets
        True; the unique (job, scheduled_for) of runs is the second guard."""
        move = (
            jobs.update()
            .where(jobs.c.id == job.id, jobs.c.next_run_at == job.next_run_at)
            .values(next_run_at=following)
        )
        values = {f: getattr(run, f) for f in JobRun.__slots__}
        try:
            async with self._db.begin() as conn:
                if (await conn.execute(move)).rowcount != 1:
                    return False
                await conn.execute(job_runs.insert(), values)
        except IntegrityError:
            return False  # that occurrence already has its run; nothing was changed
        return True

    async def add_run(self, run: JobRun) -> JobRun:
        """Record a run asked for by hand (``trigger`` manual or retry). Two of one job at
        the very same microsecond are told apart by moving the second on by one."""
        for _ in range(8):
            values = {f: getattr(run, f) for f in JobRun.__slots__}
            try:
                async with self._db.begin() as conn:
                    await conn.execute(job_runs.insert(), values)
                return run
            except IntegrityError:
                later = run.scheduled_for + timedelta(microseconds=1)
                run = dataclasses.replace(run, scheduled_for=later)
        raise IntegrityError("job_runs insert", None, Exception("no free instant"))

    async def set_next(self, job_id: str, at: datetime | None) -> None:
        async with self._db.begin() as conn:
            await conn.execute(jobs.update().where(jobs.c.id == job_id).values(next_run_at=at))

    async def started(self, run_id: str, at: datetime) -> None:
        query = (
            job_runs.update()
            .where(job_runs.c.id == run_id, job_runs.c.status == "claimed")
            .values(status="running", started_at=at)
        )
        async with self._db.begin() as conn:
            await conn.execute(query)

    async def finish(
        self,
        run: JobRun,
        status: str,
        *,
        at: datetime,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        logs: str | None = None,
        code_started_at: datetime | None = None,
    ) -> bool:
        """End an active run as ``status`` and count it in its job's statistics, together.
        False when the run had already ended (it is counted once)."""
        end = (
            job_runs.update()
            .where(job_runs.c.id == run.id, job_runs.c.status.in_(ACTIVE_RUNS))
            .values(
                status=status,
                finished_at=at,
                result=result,
                error=error,
                logs=logs,
                code_started_at=code_started_at,
            )
        )
        async with self._db.begin() as conn:
            if (await conn.execute(end)).rowcount != 1:
                return False
            await conn.execute(_count(run.job_id, status, at, result))
        return True

    async def interrupt(self, instance: str, at: datetime) -> list[JobRun]:
        """Fail every run ``instance`` had claimed or started (it died meanwhile) as
        ``interrupted``; returns them as they now stand."""
        mine = sa.and_(job_runs.c.instance == instance, job_runs.c.status.in_(ACTIVE_RUNS))
        async with self._db.begin() as conn:
            found = [
                JobRun(**r._mapping) for r in await conn.execute(job_runs.select().where(mine))
            ]
            for run in found:
                changed = await conn.execute(
                    job_runs.update()
                    .where(job_runs.c.id == run.id, job_runs.c.status.in_(ACTIVE_RUNS))
                    .values(
                        status="interrupted",
                        finished_at=at,
                        error="interrupted: the daemon stopped during this run",
                    )
                )
                if changed.rowcount == 1:
                    await conn.execute(_count(run.job_id, "interrupted", at, None))
        return [
            JobRun(**{**{f: getattr(r, f) for f in JobRun.__slots__}, "status": "interrupted"})
            for r in found
        ]

    async def runs(self, job_id: str, *, limit: int = 100) -> list[JobRun]:
        """A job's runs, newest first."""
        query = (
            job_runs.select()
            .where(job_runs.c.job_id == job_id)
            .order_by(job_runs.c.claimed_at.desc(), job_runs.c.id)
            .limit(limit)
        )
        async with self._db.connect() as conn:
            return [JobRun(**row._mapping) for row in await conn.execute(query)]

    async def get_run(self, run_id: str) -> JobRun | None:
        async with self._db.connect() as conn:
            row = (await conn.execute(job_runs.select().where(job_runs.c.id == run_id))).first()
        return JobRun(**row._mapping) if row else None

    async def active_runs(self, *, owner_ids: Sequence[str] | None = None) -> int:
        query = (
            sa.select(sa.func.count())
            .select_from(job_runs)
            .where(job_runs.c.status.in_(ACTIVE_RUNS))
        )
        if owner_ids is not None:
            query = query.join(jobs, jobs.c.id == job_runs.c.job_id).where(
                jobs.c.owner_id.in_(list(owner_ids))
            )
        async with self._db.connect() as conn:
            return int((await conn.execute(query)).scalar_one())


def _count(job_id: str, status: str, at: datetime, result: dict[str, Any] | None) -> sa.Update:
    """One more execution of ``job_id`` in its statistics."""
    succeeded = status == "completed"
    values: dict[str, Any] = {
        "execution_count": jobs.c.execution_count + 1,
        "success_count": jobs.c.success_count + (1 if succeeded else 0),
        "failure_count": jobs.c.failure_count + (0 if succeeded else 1),
        "last_execution": at,
        "last_result": result,
    }
    return jobs.update().where(jobs.c.id == job_id).values(**values)

"""Queries on tasks and their steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from stockade.store.database import Database
from stockade.store.records import Approval, Task, TaskStep
from stockade.store.tables import approvals, task_steps, tasks

_INSERT = tasks.insert()


class TaskStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, record: Task) -> Task:
        values = {f: getattr(record, f) for f in Task.__slots__}
        async with self._db.begin() as conn:
            await conn.execute(_INSERT, values)
        return record

    async def get(self, task_id: str) -> Task | None:
        async with self._db.connect() as conn:
            row = (await conn.execute(tasks.select().where(tasks.c.id == task_id))).first()
        return Task(**row._mapping) if row else None

    async def page(
        self,
        *,
        owner_id: str | None,
        statuses: Sequence[str] | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[list[Task], int]:
        """A page of tasks, newest first, and how many match in all (``owner_id`` None:
        everyone's)."""
        conditions: list[sa.ColumnElement[bool]] = []
        if owner_id is not None:
            conditions.append(tasks.c.owner_id == owner_id)
        if statuses:
            conditions.append(tasks.c.status.in_(list(statuses)))
        where = sa.and_(sa.true(), *conditions)
        page = (
            tasks.select()
            .where(where)
            .order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        count = sa.select(sa.func.count()).select_from(tasks).where(where)
        async with self._db.connect() as conn:
            rows = list(await conn.execute(page))
            total = (await conn.execute(count)).scalar_one()
        return [Task(**row._mapping) for row in rows], int(total)

    async def in_statuses(self, statuses: Sequence[str]) -> list[Task]:
        """Every task in one of ``statuses``, oldest first (what a restart resumes)."""
        query = (
            tasks.select()
            .where(tasks.c.status.in_(list(statuses)))
            .order_by(tasks.c.created_at, tasks.c.id)
        )
        async with self._db.connect() as conn:
            return [Task(**row._mapping) for row in await conn.execute(query)]

    async def update(
        self, task_id: str, *, only_from: Sequence[str] | None = None, **values: Any
    ) -> bool:
        """Change a task's columns; with ``only_from``, only while its status is one of
        those (a compare-and-set). True when the row changed."""
        query = tasks.update().where(tasks.c.id == task_id).values(**values)
        if only_from is not None:
            query = query.where(tasks.c.status.in_(list(only_from)))
        async with self._db.begin() as conn:
            return (await conn.execute(query)).rowcount == 1

    async def pause(self, task_id: str, pending: Sequence[Approval], **values: Any) -> bool:
        """A running task starts waiting: its approvals are stored and the task marked
        ``waiting`` (with ``values``: its history, its pending calls…) in one
        transaction, so no answer can arrive before the task waits for it. False, and
        nothing stored, when the task is no longer running (it was cancelled)."""
        waiting = (
            tasks.update()
            .where(tasks.c.id == task_id, tasks.c.status == "running")
            .values(status="waiting", pending_approval_id=pending[0].id, **values)
        )
        rows = [{f: getattr(record, f) for f in Approval.__slots__} for record in pending]
        async with self._db.begin() as conn:
            if (await conn.execute(waiting)).rowcount != 1:
                return False
            await conn.execute(approvals.insert(), rows)
        return True

    async def claim_resume(self, task_id: str) -> bool:
        """Claim a waiting task whose approvals are all answered: it becomes ``running``.
        Of concurrent claims exactly one wins (the conditional UPDATE), so a paused run
        is resumed once and never replayed (AGENT_LOOP.md pitfall 1)."""
        unanswered = (
            sa.select(approvals.c.id)
            .where(approvals.c.task_id == task_id, approvals.c.status == "pending")
            .exists()
        )
        claim = (
            tasks.update()
            .where(tasks.c.id == task_id, tasks.c.status == "waiting", ~unanswered)
            .values(status="running", pending_approval_id=None)
        )
        async with self._db.begin() as conn:
            return (await conn.execute(claim)).rowcount == 1

    async def counts(self) -> dict[str, int]:
        """How many tasks are in each status."""
        query = sa.select(tasks.c.status, sa.func.count()).group_by(tasks.c.status)
        async with self._db.connect() as conn:
            return {status: int(n) for status, n in await conn.execute(query)}

    async def add_step(self, step: TaskStep) -> TaskStep:
        """Append a step; its ``seq`` is given by the caller (the loop is sequential per
        task, and the primary key refuses a repeat)."""
        values = {f: getattr(step, f) for f in TaskStep.__slots__}
        async with self._db.begin() as conn:
            await conn.execute(task_steps.insert(), values)
        return step

    async def steps(self, task_id: str) -> list[TaskStep]:
        query = (
            task_steps.select().where(task_steps.c.task_id == task_id).order_by(task_steps.c.seq)
        )
        async with self._db.connect() as conn:
            return [TaskStep(**row._mapping) for row in await conn.execute(query)]

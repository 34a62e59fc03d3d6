"""Queries on approvals. The answer is the one place where the store decides a race."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import sqlalchemy as sa

from stockade.store.database import Database
from stockade.store.records import Approval
from stockade.store.tables import approvals, tasks

_INSERT = approvals.insert()

Refusal = Literal["missing", "answered", "expired"]


@dataclass(frozen=True, slots=True)
class Answer:
    """How an answer went: the approval as it now stands when this answer won, else why
    it lost (``missing``, ``answered`` already, or ``expired``)."""

    approval: Approval | None
    refused: Refusal | None = None

    @property
    def won(self) -> bool:
        return self.refused is None


class ApprovalStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, record: Approval) -> Approval:
        """Store a pending approval and mark its task as waiting on it, together."""
        values = {f: getattr(record, f) for f in Approval.__slots__}
        waiting = (
            tasks.update().where(tasks.c.id == record.task_id).values(pending_approval_id=record.id)
        )
        async with self._db.begin() as conn:
            await conn.execute(_INSERT, values)
            await conn.execute(waiting)
        return record

    async def get(self, approval_id: str) -> Approval | None:
        query = approvals.select().where(approvals.c.id == approval_id)
        async with self._db.connect() as conn:
            row = (await conn.execute(query)).first()
        return Approval(**row._mapping) if row else None

    async def listing(
        self, *, owner_id: str | None, statuses: Sequence[str] | None = None, limit: int = 1000
    ) -> list[Approval]:
        """Approvals, oldest first (``owner_id`` None: everyone's)."""
        conditions: list[sa.ColumnElement[bool]] = []
        if owner_id is not None:
            conditions.append(approvals.c.owner_id == owner_id)
        if statuses:
            conditions.append(approvals.c.status.in_(list(statuses)))
        query = (
            approvals.select()
            .where(sa.and_(sa.true(), *conditions))
            .order_by(approvals.c.created_at, approvals.c.id)
            .limit(limit)
        )
        async with self._db.connect() as conn:
            return [Approval(**row._mapping) for row in await conn.execute(query)]

    async def answer(
        self, approval_id: str, *, approved: bool, reason: str | None, by: str, at: datetime
    ) -> Answer:
        """Approve or deny, atomically. One conditional UPDATE claims the approval (it is
        pending and has not expired at ``at``); in the same transaction the task stops
        waiting on it, which is what lets exactly one resume of the task happen. Of many
        concurrent answers exactly one wins; the rest learn why they lost."""
        claim = (
            approvals.update()
            .where(
                approvals.c.id == approval_id,
                approvals.c.status == "pending",
                approvals.c.expires_at > at,
            )
            .values(
                status="approved" if approved else "denied",
                reason=reason,
                responded_at=at,
                responded_by=by,
            )
        )
        async with self._db.begin() as conn:
            won = (await conn.execute(claim)).rowcount == 1
            row = (
                await conn.execute(approvals.select().where(approvals.c.id == approval_id))
            ).first()
            if row is None:
                return Answer(None, "missing")
            record = Approval(**row._mapping)
            if not won:
                if record.status == "pending" and record.expires_at <= at:
                    return Answer(record, "expired")
                return Answer(record, "expired" if record.status == "expired" else "answered")
            await conn.execute(
                tasks.update()
                .where(tasks.c.id == record.task_id, tasks.c.pending_approval_id == approval_id)
                .values(pending_approval_id=None)
            )
        return Answer(record)

    async def for_task(self, task_id: str) -> list[Approval]:
        query = (
            approvals.select()
            .where(approvals.c.task_id == task_id)
            .order_by(approvals.c.created_at, approvals.c.id)
        )
        async with self._db.connect() as conn:
            return [Approval(**row._mapping) for row in await conn.execute(query)]

    async def cancel_pending(self, task_id: str, at: datetime) -> list[str]:
        """Withdraw the task's pending approvals (it was cancelled); their ids."""
        due = sa.and_(approvals.c.task_id == task_id, approvals.c.status == "pending")
        async with self._db.begin() as conn:
            ids = [row.id for row in await conn.execute(sa.select(approvals.c.id).where(due))]
            if ids:
                await conn.execute(
                    approvals.update()
                    .where(approvals.c.id.in_(ids), approvals.c.status == "pending")
                    .values(status="cancelled", responded_at=at)
                )
        return ids

    async def expire_due(self, at: datetime) -> list[Approval]:
        """Mark every pending approval whose time has passed as expired; they count as
        denied. Returns them as they now stand."""
        due = sa.and_(approvals.c.status == "pending", approvals.c.expires_at <= at)
        async with self._db.begin() as conn:
            ids = [row.id for row in await conn.execute(sa.select(approvals.c.id).where(due))]
            if not ids:
                return []
            await conn.execute(
                approvals.update()
                .where(approvals.c.id.in_(ids), approvals.c.status == "pending")
                .values(status="expired", responded_at=at)
            )
            rows = await conn.execute(approvals.select().where(approvals.c.id.in_(ids)))
            return [Approval(**row._mapping) for row in rows]

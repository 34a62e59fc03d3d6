"""Queries on sandboxes and their labels."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from stockade.store.database import Database
from stockade.store.records import Sandbox
from stockade.store.tables import sandbox_labels, sandboxes

LIVE = ("pending", "running", "terminating")
_INSERT = sandboxes.insert()


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """One term of a label selector: ``key=value``, ``key!=value``, ``key`` or ``!key``."""

    key: str
    op: Literal["=", "!=", "exists", "absent"]
    value: str | None = None


def _has_label(sandbox_id: Any, key: str, value: str | None = None) -> sa.Exists:
    query = sa.select(sandbox_labels.c.sandbox_id).where(
        sandbox_labels.c.sandbox_id == sandbox_id, sandbox_labels.c.key == key
    )
    if value is not None:
        query = query.where(sandbox_labels.c.value == value)
    return query.exists()


def _matches(requirement: LabelRequirement) -> sa.ColumnElement[bool]:
    column = sandboxes.c.id
    if requirement.op == "=":
        return _has_label(column, requirement.key, requirement.value)
    if requirement.op == "!=":
        return ~_has_label(column, requirement.key, requirement.value)
    if requirement.op == "exists":
        return _has_label(column, requirement.key)
    return ~_has_label(column, requirement.key)


class SandboxStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, record: Sandbox) -> Sandbox:
        values = {f: getattr(record, f) for f in Sandbox.__slots__ if f != "labels"}
        async with self._db.begin() as conn:
            # Parameters apart from the statement: one cached compilation serves every
            # insert (``.values(**values)`` rebuilt and re-keyed it each time).
            await conn.execute(_INSERT, values)
            if record.labels:
                await conn.execute(
                    sandbox_labels.insert(),
                    [
                        {"sandbox_id": record.id, "key": k, "value": v}
                        for k, v in record.labels.items()
                    ],
                )
        return record

    async def get(self, sandbox_id: str) -> Sandbox | None:
        async with self._db.connect() as conn:
            row = (
                await conn.execute(sandboxes.select().where(sandboxes.c.id == sandbox_id))
            ).first()
            if row is None:
                return None
            labels = await self._labels(conn, [sandbox_id])
        return Sandbox(**row._mapping, labels=labels.get(sandbox_id, {}))

    async def page(
        self,
        *,
        owner_id: str | None,
        ids: Collection[str] | None = None,
        statuses: Sequence[str] | None = None,
        selector: Sequence[LabelRequirement] = (),
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Sandbox], int]:
        """A page of sandboxes, newest first, and how many match in all. ``owner_id`` None
        means everyone's; ``ids`` limits to those sandboxes (a restricted API key)."""
        conditions: list[sa.ColumnElement[bool]] = []
        if owner_id is not None:
            conditions.append(sandboxes.c.owner_id == owner_id)
        if ids is not None:
            conditions.append(sandboxes.c.id.in_(list(ids)))
        if statuses:
            conditions.append(sandboxes.c.status.in_(list(statuses)))
        conditions.extend(_matches(r) for r in selector)
        where = sa.and_(sa.true(), *conditions)
        page = (
            sandboxes.select()
            .where(where)
            .order_by(sandboxes.c.created_at.desc(), sandboxes.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        count = sa.select(sa.func.count()).select_from(sandboxes).where(where)
        async with self._db.connect() as conn:
            rows = list(await conn.execute(page))
            total = (await conn.execute(count)).scalar_one()
            labels = await self._labels(conn, [row.id for row in rows])
        records = [Sandbox(**row._mapping, labels=labels.get(row.id, {})) for row in rows]
        return records, int(total)

    async def live(
        self, backend: str | None = None, *, instance: str | None = None
    ) -> list[Sandbox]:
        """Every sandbox that is pending, running or terminating (with ``instance``: of
        that daemon, or of no recorded one)."""
        query = sandboxes.select().where(sandboxes.c.status.in_(LIVE))
        if backend is not None:
            query = query.where(sandboxes.c.backend == backend)
        if instance is not None:
            query = query.where(
                sa.or_(sandboxes.c.instance == instance, sandboxes.c.instance.is_(None))
            )
        async with self._db.connect() as conn:
            rows = list(await conn.execute(query))
        return [Sandbox(**row._mapping, labels={}) for row in rows]

    async def update(
        self, sandbox_id: str, *, only_from: Sequence[str] | None = None, **values: Any
    ) -> bool:
        """Change a sandbox's columns; with ``only_from``, only while its status is one of
        those (a compare-and-set). True when the row changed."""
        query = sandboxes.update().where(sandboxes.c.id == sandbox_id).values(**values)
        if only_from is not None:
            query = query.where(sandboxes.c.status.in_(list(only_from)))
        async with self._db.begin() as conn:
            return (await conn.execute(query)).rowcount == 1

    async def reassign(
        self,
        sandbox_id: str,
        *,
        name: str,
        labels: Mapping[str, str],
        timeout_seconds: int,
        expires_at: datetime,
    ) -> None:
        """Give a sandbox a new name, labels and deadline, in one transaction."""
        async with self._db.begin() as conn:
            await conn.execute(
                sandboxes.update()
                .where(sandboxes.c.id == sandbox_id)
                .values(name=name, timeout_seconds=timeout_seconds, expires_at=expires_at)
            )
            await conn.execute(
                sandbox_labels.delete().where(sandbox_labels.c.sandbox_id == sandbox_id)
            )
            if labels:
                await conn.execute(
                    sandbox_labels.insert(),
                    [{"sandbox_id": sandbox_id, "key": k, "value": v} for k, v in labels.items()],
                )

    async def mark_many(
        self, sandbox_ids: Collection[str], *, status: str, reason: str, at: datetime
    ) -> None:
        if not sandbox_ids:
            return
        query = (
            sandboxes.update()
            .where(sandboxes.c.id.in_(list(sandbox_ids)), sandboxes.c.status.in_(LIVE))
            .values(status=status, status_reason=reason, finished_at=at)
        )
        async with self._db.begin() as conn:
            await conn.execute(query)

    async def _labels(self, conn: Any, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        if not ids:
            return {}
        query = sandbox_labels.select().where(sandbox_labels.c.sandbox_id.in_(list(ids)))
        found: dict[str, dict[str, str]] = {}
        for row in await conn.execute(query):
            found.setdefault(row.sandbox_id, {})[row.key] = row.value
        return found

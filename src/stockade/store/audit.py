"""The append-only audit log: logins, key changes, and later execs and approval answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from stockade.store.database import Database
from stockade.store.records import AuditEntry
from stockade.store.tables import audit_log


class AuditStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(
        self,
        action: str,
        *,
        actor: str | None,
        target: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Add one row. Rows are never updated or deleted by the daemon."""
        values: dict[str, Any] = {"at": datetime.now(UTC), "actor": actor, "action": action}
        values |= {"target": target, "detail": detail}
        async with self._db.begin() as conn:
            await conn.execute(audit_log.insert().values(**values))

    async def list(self, *, limit: int = 100, offset: int = 0) -> list[AuditEntry]:
        """Newest first."""
        query = audit_log.select().order_by(audit_log.c.id.desc()).limit(limit).offset(offset)
        async with self._db.connect() as conn:
            return [AuditEntry(**row._mapping) for row in await conn.execute(query)]

    async def count(self) -> int:
        async with self._db.connect() as conn:
            query = sa.select(sa.func.count()).select_from(audit_log)
            return int((await conn.execute(query)).scalar_one())

"""Persistence: SQLAlchemy Core tables, queries and Alembic migrations, on SQLite or
PostgreSQL. Nothing here knows about HTTP."""

from __future__ import annotations

from stockade.store.api_keys import ApiKeyStore
from stockade.store.approvals import ApprovalStore
from stockade.store.audit import AuditStore
from stockade.store.database import Database
from stockade.store.jobs import JobStore
from stockade.store.sandboxes import SandboxStore
from stockade.store.tasks import TaskStore
from stockade.store.users import UserStore


class Store:
    """The daemon's one store: a database and the query groups over it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.users = UserStore(db)
        self.api_keys = ApiKeyStore(db)
        self.audit = AuditStore(db)
        self.sandboxes = SandboxStore(db)
        self.tasks = TaskStore(db)
        self.approvals = ApprovalStore(db)
        self.jobs = JobStore(db)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(Database(url))

    async def open(self) -> None:
        """Migrate to the newest schema. Called once at start-up."""
        await self.db.migrate()

    async def close(self) -> None:
        await self.db.dispose()


__all__ = ["Database", "Store"]

"""The database handle: engine creation, SQLite pragmas, migrations at start-up, a ping."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import Pool

MIGRATIONS = Path(__file__).with_name("migrations")

# Any 64-bit number unique to Stockade: two daemons starting at once on one PostgreSQL
# take turns migrating instead of racing.
_MIGRATION_LOCK = 0x5704CADE


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Run on every new connection, before any transaction: inside one, SQLite silently
    # ignores `journal_mode`.
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "busy_timeout=5000",
        "foreign_keys=ON",
        "synchronous=NORMAL",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


class Database:
    """One engine for the daemon's lifetime. SQLite (WAL) or PostgreSQL, by URL."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = sa.make_url(url)
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 5}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        # SQLite writes run inline, on the event loop's thread, through a synchronous
        # engine on the same file. A WAL commit without fsync takes ~50 µs there, while
        # aiosqlite hops to its thread and back for every statement, begin and commit
        # (1-4 ms per write measured under load); and with no await inside a write, the
        # writers never race for SQLite's one write lock (which, contended, retries with
        # sleeps: single inserts took up to 0.9 s with 50 concurrent creates).
        #
        # Reads run inline too. Every read is an indexed lookup or one page of at most
        # 100 rows, whose SQLite part takes tens of microseconds; the Python that turns
        # rows into records runs on the loop's thread either way. On aiosqlite each read
        # was two thread hops, and under load each hop waited for the GIL (Python's 5 ms
        # switch interval) while the loop was busy: at 200 requests/s an empty approvals
        # list took 450 ms at the median with the daemon at 60% of a core, and the
        # pool's overflow connections were closed and reopened, a thread each. Inline,
        # nothing awaits while a connection is held, so one connection serves them all.
        self._inline: sa.Engine | None = None
        if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
            self._inline = sa.create_engine(
                self.url.set(drivername="sqlite+pysqlite"),
                echo=echo,
                connect_args={"timeout": 5},
                pool_reset_on_return=None,  # every use ends in a commit or a rollback
            )
            event.listen(self._inline, "connect", _sqlite_pragmas)

    @property
    def pool(self) -> Pool:
        """The pool the store's reads and writes draw from."""
        return self._inline.pool if self._inline is not None else self.engine.pool

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction that commits on success and rolls back on error."""
        if self._inline is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        with self._inline.begin() as conn:
            yield cast(AsyncConnection, InlineConnection(conn))

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads."""
        if self._inline is None:
            async with self.engine.connect() as conn:
                yield conn
            return
        with self._inline.connect() as conn:
            try:
                yield cast(AsyncConnection, InlineConnection(conn))
            finally:
                conn.rollback()  # end the read transaction: WAL keeps a snapshot open

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        async with self.engine.begin() as conn:
            if not self.is_sqlite:
                await conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK}
                )
            await conn.run_sync(upgrade_to_head)

    async def ping(self) -> None:
        """Raise if the database does not answer ``SELECT 1``."""
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def dispose(self) -> None:
        if self._inline is not None:
            self._inline.dispose()
        await self.engine.dispose()


class InlineConnection:
    """The part of ``AsyncConnection`` the store's writes use, over a synchronous
    connection: each call runs at once, on the caller's thread."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.execute(statement, parameters)

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any:
        return self._conn.exec_driver_sql(statement, parameters)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self._conn, *args, **kwargs)


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations, bound to ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade_to_head(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")

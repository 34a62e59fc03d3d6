"""Migrations are the schema: after the Alembic head, the database holds exactly the
tables ``stockade.store.tables`` declares, on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from stockade.store import Store
from stockade.store.database import alembic_config
from stockade.store.tables import NAMING, metadata


async def schema_diff(store: Store, target: sa.MetaData) -> list[Any]:
    """What Alembic's autogenerate would change to turn the database into ``target``."""

    def compare(sync_conn: Connection) -> list[Any]:
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(context, target))

    async with store.db.connect() as conn:
        return await conn.run_sync(compare)


def copy_of_metadata() -> sa.MetaData:
    copy = sa.MetaData(naming_convention=NAMING)
    for table in metadata.tables.values():
        table.to_metadata(copy)
    return copy


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def test_migrated_schema_equals_declared_tables(store: Store) -> None:
    assert await schema_diff(store, metadata) == []


async def test_comparison_detects_a_table_missing_from_the_migrations(store: Store) -> None:
    target = copy_of_metadata()
    sa.Table("not_migrated", target, sa.Column("id", sa.Integer(), primary_key=True))

    diff = await schema_diff(store, target)

    added = [change[1].name for change in diff if change[0] == "add_table"]
    assert added == ["not_migrated"]


async def test_comparison_detects_a_changed_column_type(store: Store) -> None:
    target = copy_of_metadata()
    target.tables["users"].c.username.type = sa.String(200)

    diff = await schema_diff(store, target)

    # Column changes come grouped in a list per table; the rest are single tuples.
    column_changes = [change for group in diff if isinstance(group, list) for change in group]
    lengths = [
        (old_type.length, new_type.length)
        for op, _schema, table, column, _info, old_type, new_type in column_changes
        if (op, table, column) == ("modify_type", "users", "username")
    ]
    assert lengths == [(128, 200)]


async def test_alembic_version_holds_the_head_revision(store: Store) -> None:
    head = head_revision()

    async with store.db.connect() as conn:
        versions = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
        current = await conn.run_sync(
            lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
        )

    assert [row.version_num for row in versions] == [head]
    assert current == head


async def test_the_head_is_the_only_head_and_reaches_the_base() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())

    assert scripts.get_heads() == [head_revision()]
    chain = list(scripts.walk_revisions())
    assert chain
    assert chain[-1].down_revision is None

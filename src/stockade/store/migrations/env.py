"""Alembic environment. The daemon runs migrations itself at start-up, handing over an
open connection in ``config.attributes["connection"]``."""

from alembic import context

from stockade.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through stockade (Database.migrate), not bare alembic")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

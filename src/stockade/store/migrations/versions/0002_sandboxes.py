"""Sandboxes and their labels.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from stockade.store.tables import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sandboxes",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("owner_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("image", sa.String(512), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.String(1024), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("spawn_time_ms", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name="fk_sandboxes_owner_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sandboxes"),
    )
    op.create_index("ix_sandboxes_owner_id_created_at", "sandboxes", ["owner_id", "created_at"])
    op.create_index("ix_sandboxes_status", "sandboxes", ["status"])
    op.create_table(
        "sandbox_labels",
        sa.Column("sandbox_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(317), nullable=False),
        sa.Column("value", sa.String(63), nullable=False),
        sa.ForeignKeyConstraint(
            ["sandbox_id"],
            ["sandboxes.id"],
            name="fk_sandbox_labels_sandbox_id_sandboxes",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sandbox_id", "key", name="pk_sandbox_labels"),
    )
    op.create_index("ix_sandbox_labels_key_value", "sandbox_labels", ["key", "value"])


def downgrade() -> None:
    op.drop_index("ix_sandbox_labels_key_value", table_name="sandbox_labels")
    op.drop_table("sandbox_labels")
    op.drop_index("ix_sandboxes_status", table_name="sandboxes")
    op.drop_index("ix_sandboxes_owner_id_created_at", table_name="sandboxes")
    op.drop_table("sandboxes")

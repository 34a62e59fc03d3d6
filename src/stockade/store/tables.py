"""The tables Stockade declares. Alembic's migrations must produce exactly these; a test
compares the migrated schema with this metadata on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("username", sa.String(128), nullable=False, unique=True),
    sa.Column("email", sa.String(320), nullable=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("password_hash", sa.String(256), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column(
        "user_id", sa.String(64), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("description", sa.String(1024), nullable=True),
    sa.Column("permissions", sa.JSON(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("last_used_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Index("ix_api_keys_user_id", "user_id"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("actor", sa.String(64), nullable=True),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(128), nullable=True),
    sa.Column("detail", sa.JSON(), nullable=True),
    sa.Index("ix_audit_log_at", "at"),
)

# One row per sandbox, whatever its backend and whichever dialect created it (AgentBox
# environments and LuminaGuard VMs are two views of these rows). ``spec`` keeps the
# request as given, so it can be returned as given.
sandboxes = sa.Table(
    "sandboxes",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column(
        "owner_id", sa.String(64), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    ),
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
    # The daemon that runs it (derived from its STOCKADE_HOME): on restart a daemon
    # settles only its own sandboxes, not those of another sharing the database.
    sa.Column("instance", sa.String(64), nullable=True),
    sa.Index("ix_sandboxes_owner_id_created_at", "owner_id", "created_at"),
    sa.Index("ix_sandboxes_status", "status"),
)

# Labels in their own table, so that a selector is a query rather than a scan.
sandbox_labels = sa.Table(
    "sandbox_labels",
    metadata,
    sa.Column(
        "sandbox_id",
        sa.String(64),
        sa.ForeignKey("sandboxes.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("key", sa.String(317), primary_key=True),
    sa.Column("value", sa.String(63), nullable=False),
    sa.Index("ix_sandbox_labels_key_value", "key", "value"),
)

# An agent run (seed 000's task). ``history`` is the loop's stored message history and
# ``deferred`` the tool calls it paused on: security-relevant (what runs after an approval
# comes from here), so it lives only in the store and is never taken from a client.
tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column(
        "owner_id", sa.String(64), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("require_approval", sa.Boolean(), nullable=False),
    sa.Column("timeout_seconds", sa.Integer(), nullable=False),
    sa.Column("metadata", sa.JSON(), nullable=False),
    sa.Column("sandbox_id", sa.String(64), nullable=True),
    sa.Column("pending_approval_id", sa.String(64), nullable=True),
    sa.Column("result", sa.JSON(), nullable=True),
    sa.Column("error", sa.JSON(), nullable=True),
    sa.Column("history", sa.JSON(), nullable=True),
    sa.Column("deferred", sa.JSON(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("active_seconds", sa.Float(), nullable=False, server_default="0"),
    sa.Column("runtime_class", sa.String(32), nullable=True),
    sa.Index("ix_tasks_owner_id_created_at", "owner_id", "created_at"),
    sa.Index("ix_tasks_status", "status"),
)

# Every action a task took or tried, in order, with the policy's verdict and the outcome.
task_steps = sa.Table(
    "task_steps",
    metadata,
    sa.Column(
        "task_id",
        sa.String(64),
        sa.ForeignKey("tasks.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer(), primary_key=True),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("tool", sa.String(64), nullable=False),
    sa.Column("action_type", sa.String(32), nullable=False),
    sa.Column("risk", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("detail", sa.JSON(), nullable=False),
)

# A request for a person's decision on one action. Answering it is one conditional
# UPDATE (status = 'pending' and not expired), so of concurrent answers exactly one wins.
approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column(
        "task_id", sa.String(64), sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column(
        "owner_id", sa.String(64), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("tool_call_id", sa.String(128), nullable=False),
    sa.Column("action_type", sa.String(32), nullable=False),
    sa.Column("risk_level", sa.String(16), nullable=False),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("changes", sa.JSON(), nullable=False),
    sa.Column("action_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("responded_at", UTCDateTime(), nullable=True),
    sa.Column("responded_by", sa.String(64), nullable=True),
    sa.Index("ix_approvals_owner_id_status", "owner_id", "status"),
    sa.Index("ix_approvals_task_id", "task_id"),
)

# A recurring (or one-off) unit of work: Python code, a command, or a task description.
# `next_run_at` is the claim: a daemon runs an occurrence only after moving it forward
# with a conditional UPDATE, so of several daemons exactly one runs each occurrence.
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column(
        "owner_id", sa.String(64), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("task_id", sa.String(128), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("priority", sa.Integer(), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("body", sa.Text(), nullable=False),
    sa.Column("repeat_seconds", sa.Float(), nullable=True),
    sa.Column("cron", sa.String(256), nullable=True),
    sa.Column("idempotent", sa.Boolean(), nullable=False),
    sa.Column("timeout_seconds", sa.Integer(), nullable=False),
    sa.Column("execution_count", sa.Integer(), nullable=False),
    sa.Column("success_count", sa.Integer(), nullable=False),
    sa.Column("failure_count", sa.Integer(), nullable=False),
    sa.Column("last_execution", UTCDateTime(), nullable=True),
    sa.Column("last_result", sa.JSON(), nullable=True),
    sa.Column("next_run_at", UTCDateTime(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("runtime_class", sa.String(32), nullable=True),
    sa.UniqueConstraint("owner_id", "task_id", name="uq_jobs_owner_id_task_id"),
    sa.Index("ix_jobs_next_run_at", "next_run_at"),
)

# Each occurrence a daemon claimed, and how it went. (job_id, scheduled_for) is unique:
# an occurrence has at most one run.
job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column(
        "job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("scheduled_for", UTCDateTime(), nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("instance", sa.String(64), nullable=False),
    sa.Column("claimed_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("code_started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("result", sa.JSON(), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("logs", sa.Text(), nullable=True),
    sa.UniqueConstraint(
        "job_id", "scheduled_for", "trigger", name="uq_job_runs_job_id_scheduled_for"
    ),
    sa.Index("ix_job_runs_status_instance", "status", "instance"),
)

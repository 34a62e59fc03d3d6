"""Rows as plain frozen dataclasses: what the store hands to services."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    email: str | None
    role: str
    password_hash: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    user_id: str
    key_hash: str
    prefix: str
    description: str | None
    permissions: list[dict[str, str]]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str | None
    action: str
    target: str | None
    detail: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Sandbox:
    id: str
    owner_id: str
    name: str
    image: str
    backend: str
    status: str
    status_reason: str | None
    spec: dict[str, Any]
    timeout_seconds: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime
    spawn_time_ms: float | None
    labels: dict[str, str]
    instance: str | None = None


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    owner_id: str
    description: str
    status: str
    require_approval: bool
    timeout_seconds: int
    metadata: dict[str, Any]
    sandbox_id: str | None
    pending_approval_id: str | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    history: list[Any] | None
    deferred: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    active_seconds: float = 0.0
    runtime_class: str | None = None


@dataclass(frozen=True, slots=True)
class TaskStep:
    task_id: str
    seq: int
    at: datetime
    tool: str
    action_type: str
    risk: str
    outcome: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    task_id: str
    owner_id: str
    tool_call_id: str
    action_type: str
    risk_level: str
    description: str
    changes: list[dict[str, Any]]
    action_hash: str
    status: str
    reason: str | None
    created_at: datetime
    expires_at: datetime
    responded_at: datetime | None
    responded_by: str | None


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    owner_id: str
    task_id: str
    name: str
    description: str
    priority: int
    kind: str
    body: str
    repeat_seconds: float | None
    cron: str | None
    idempotent: bool
    timeout_seconds: int
    execution_count: int
    success_count: int
    failure_count: int
    last_execution: datetime | None
    last_result: dict[str, Any] | None
    next_run_at: datetime | None
    created_at: datetime
    runtime_class: str | None = None


@dataclass(frozen=True, slots=True)
class JobRun:
    id: str
    job_id: str
    scheduled_for: datetime
    trigger: str
    status: str
    instance: str
    claimed_at: datetime
    started_at: datetime | None
    code_started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None
    logs: str | None

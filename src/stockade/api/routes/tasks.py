"""LuminaGuard's tasks and approvals (seed 000): an agent run in a sandbox of its own,
and the approvals its risky actions wait on. ``services/tasks.py`` decides everything;
this module only shapes JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from stockade.api.deps import principal_of, services_of
from stockade.api.errors import responses
from stockade.services.tasks import TaskRequest, approval_json, wire_status
from stockade.store.records import Approval, Task, TaskStep

router = APIRouter(tags=["tasks"])

MAX_TIMEOUT = 24 * 3600


class TaskIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "description": "Delete old logs",
                    "timeout_seconds": 300,
                    "require_approval": True,
                    "metadata": {"requested_by": "ops"},
                }
            ]
        }
    )

    description: str = Field(
        min_length=1, max_length=10_000, description="What the agent should do."
    )
    timeout_seconds: int | None = Field(
        None,
        gt=0,
        le=MAX_TIMEOUT,
        description="Seconds the task may spend running (waiting for a person does not "
        "count). Default STOCKADE_TASK_TIMEOUT.",
    )
    require_approval: bool = Field(
        True,
        description="false: actions at or above the policy's threshold run without a person "
        "(and the steps record it). Blocked actions never run.",
    )
    metadata: dict[str, Any] = Field(default_factory=dict, max_length=64)
    runtime_class: str | None = Field(
        None,
        max_length=32,
        description="Ours: the sandbox backend, as seed 004's isolation.runtime_class: runc "
        "(namespace) or gvisor; absent: the daemon's default.",
    )


class ResultOut(BaseModel):
    output: str
    exit_code: int


class ErrorOut(BaseModel):
    code: str
    message: str


class StepOut(BaseModel):
    id: int
    at: datetime
    tool: str
    action_type: str
    risk: str = Field(description="none, low, medium, high or critical, from the policy.")
    decision: str = Field(
        description="auto (below the threshold), approved, not_required (require_approval "
        "false), blocked, denied, expired or binding_refused."
    )
    outcome: Literal["completed", "failed", "refused"]
    description: str
    detail: dict[str, Any]


class TaskOut(BaseModel):
    id: str
    status: Literal["pending", "running", "completed", "failed", "cancelled"]
    description: str
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    vm_id: str | None = None
    require_approval: bool
    timeout_seconds: int
    metadata: dict[str, Any]
    pending_approval_id: str | None = None
    result: ResultOut | None = None
    error: ErrorOut | None = None
    steps: list[StepOut] | None = None
    runtime_class: str | None = Field(None, description="Ours: null for the default backend.")

    @classmethod
    def of(cls, task: Task, steps: list[TaskStep] | None = None) -> TaskOut:
        return cls(
            id=task.id,
            status=wire_status(task.status),
            description=task.description,
            created_at=task.created_at,
            started_at=task.started_at,
            completed_at=task.finished_at,
            vm_id=task.sandbox_id,
            require_approval=task.require_approval,
            timeout_seconds=task.timeout_seconds,
            metadata=task.metadata,
            pending_approval_id=task.pending_approval_id,
            result=ResultOut(**task.result) if task.result else None,
            error=ErrorOut(**task.error) if task.error else None,
            steps=None if steps is None else [_step(s) for s in steps],
            runtime_class=task.runtime_class,
        )


def _step(step: TaskStep) -> StepOut:
    detail = dict(step.detail)
    decision = str(detail.pop("decision", "auto"))
    description = str(detail.pop("description", step.tool))
    return StepOut(
        id=step.seq,
        at=step.at,
        tool=step.tool,
        action_type=step.action_type,
        risk=step.risk,
        decision=decision,
        outcome=step.outcome,
        description=description,
        detail=detail,
    )


class TaskList(BaseModel):
    tasks: list[TaskOut]
    total: int
    limit: int
    offset: int


class ApprovalOut(BaseModel):
    id: str
    task_id: str
    action_type: str
    risk_level: str
    description: str
    changes: list[dict[str, Any]] = Field(
        description="The diff card: each change's type, path and size_bytes; a unified diff "
        "for creates and edits; the full command for CommandExec."
    )
    status: Literal["pending", "approved", "denied", "expired", "cancelled"]
    reason: str | None = None
    action_hash: str = Field(
        description="SHA-256 of the exact action; what runs is what was shown."
    )
    created_at: datetime
    expires_at: datetime
    responded_at: datetime | None = None

    @classmethod
    def of(cls, record: Approval) -> ApprovalOut:
        return cls.model_validate(approval_json(record))


class AnswerIn(BaseModel):
    approved: bool
    reason: str | None = Field(None, max_length=4096)


# Tasks.


@router.post(
    "/api/v1/tasks",
    status_code=201,
    summary="Create a task",
    responses=responses(400, 401, 403, 422, 429, 503),
)
async def create_task(request: Request, body: TaskIn) -> TaskOut:
    """Start an agent run in a sandbox of its own. Answers once the sandbox runs: the
    task reads ``running`` with its ``vm_id``. Actions at or above the policy's threshold
    wait for an answer on ``/api/v1/approvals``; blocked actions are refused."""
    task = await services_of(request).tasks.create(
        principal_of(request),
        TaskRequest(
            body.description,
            body.timeout_seconds,
            body.require_approval,
            body.metadata,
            body.runtime_class,
        ),
    )
    return TaskOut.of(task)


@router.get("/api/v1/tasks", summary="List tasks", responses=responses(400, 401, 429))
async def list_tasks(
    request: Request,
    status: str | None = Query(None, description="pending, running, completed, failed, cancelled"),
    limit: int = Query(20, ge=1, le=100),
    offset: int = Query(0, ge=0, le=10_000_000),
) -> TaskList:
    found, total = await services_of(request).tasks.page(
        principal_of(request), status=status, limit=limit, offset=offset
    )
    return TaskList(tasks=[TaskOut.of(t) for t in found], total=total, limit=limit, offset=offset)


@router.get("/api/v1/tasks/{task_id}", summary="Get a task", responses=responses(401, 404, 429))
async def get_task(request: Request, task_id: str) -> TaskOut:
    """The task with its ``result`` or ``error``, every step the agent took or tried
    (with the policy's risk and the outcome), and ``pending_approval_id`` while it waits."""
    task, steps = await services_of(request).tasks.get(principal_of(request), task_id)
    return TaskOut.of(task, steps)


@router.delete(
    "/api/v1/tasks/{task_id}", summary="Cancel a task", responses=responses(401, 404, 409, 429)
)
async def cancel_task(request: Request, task_id: str) -> TaskOut:
    """Stop the task, withdraw its pending approvals and destroy its sandbox. Returns the
    task, ``cancelled``; 409 if it had already ended."""
    task = await services_of(request).tasks.cancel(principal_of(request), task_id)
    return TaskOut.of(task)


# Approvals.


@router.get("/api/v1/approvals", summary="List approvals", responses=responses(400, 401, 429))
async def list_approvals(
    request: Request,
    status: str | None = Query(
        None, description="pending, approved, denied, expired or cancelled; all when absent."
    ),
) -> list[ApprovalOut]:
    """A bare array, oldest first, as seed 000 shows it."""
    found = await services_of(request).tasks.approvals(principal_of(request), status)
    return [ApprovalOut.of(a) for a in found]


@router.get(
    "/api/v1/approvals/{approval_id}",
    summary="Get an approval",
    responses=responses(401, 404, 429),
)
async def get_approval(request: Request, approval_id: str) -> ApprovalOut:
    record = await services_of(request).tasks.approval(principal_of(request), approval_id)
    return ApprovalOut.of(record)


@router.post(
    "/api/v1/approvals/{approval_id}",
    summary="Approve or deny",
    responses=responses(400, 401, 403, 404, 409, 422, 429),
    openapi_extra={"x-rate-limit-category": "other"},
)
async def answer_approval(request: Request, approval_id: str, body: AnswerIn) -> ApprovalOut:
    """``{"approved": true|false, "reason": "…"}``. Exactly one answer wins; a second
    answer, or one after ``expires_at``, gets 409. An approved action runs exactly as the
    card showed it (its hash is checked); a denial is returned to the agent, which goes
    on without that action."""
    record = await services_of(request).tasks.answer(
        principal_of(request), approval_id, approved=body.approved, reason=body.reason
    )
    return ApprovalOut.of(record)

"""Luna's plans (seed 001): ``POST /api/execute`` proposes steps, ``POST
/api/execute/run`` runs them in a sandbox. ``services/plans.py`` decides everything;
this module only shapes JSON."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from stockade.api.deps import principal_of, services_of
from stockade.api.errors import responses
from stockade.services.plans import MAX_STEPS, TASK_ID_PATTERN, StepToRun

router = APIRouter(tags=["plans"])

EXEC = {"x-rate-limit-category": "exec"}
Risk = Literal["safe", "moderate", "dangerous"]


class ExecuteIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"command": "install chrome", "context": {"os": "Linux", "current_dir": "~"}}
            ]
        }
    )

    command: str = Field(
        min_length=1, max_length=10_000, description='What to do, e.g. "install chrome".'
    )
    context: dict[str, Any] | None = Field(
        None,
        max_length=64,
        description="About the caller's environment (os, current_dir, project_type, …). "
        "Keys the planner knows (days, path, url) shape the steps; the rest is ignored.",
    )


class PlanStepOut(BaseModel):
    id: int
    description: str
    command: str = Field(description="One shell command.")
    risk: Risk = Field(description="From the policy: safe, moderate or dangerous.")
    status: Literal["pending", "running", "completed", "failed"] = "pending"
    blocked: bool = Field(
        description="Our addition: the policy refuses this command; a run fails at it."
    )
    reason: str = Field(description="Our addition: the policy's main reason for the risk.")


class ExecuteOut(BaseModel):
    task_id: str = Field(description="plan-<12 hex>; send it back to /api/execute/run.")
    steps: list[PlanStepOut]
    requires_confirmation: bool = Field(
        description="True when a step is moderate or dangerous (or the policy's threshold "
        "asks a person for one): ask the user before running the plan."
    )
    estimated_time: str
    message: str | None = Field(
        None,
        description="Our addition: the planner's note, such as why there are no steps.",
    )


class RunStepIn(BaseModel):
    id: int = Field(ge=0, le=2**31 - 1)
    command: str = Field(min_length=1, max_length=64 * 1024, description="One shell command.")
    description: str = Field("", max_length=10_000)


class RunIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "task_id": "task_001",
                    "steps": [{"id": 1, "command": "which sh", "description": "check sh"}],
                }
            ]
        }
    )

    task_id: str = Field(
        max_length=63,
        pattern=TASK_ID_PATTERN,
        description="The task_id /api/execute returned (any label-like id is accepted).",
    )
    steps: list[RunStepIn] = Field(max_length=MAX_STEPS)
    confirmed: bool = Field(
        False,
        description="Our addition: true once a person has confirmed the plan. Without it a "
        '"dangerous" step fails without running. Blocked steps never run.',
    )


class StepResultOut(BaseModel):
    step_id: int
    status: Literal["completed", "failed"]
    output: str = Field(description="The step's stdout.")
    error: str | None = Field(
        description="null on success; else the step's stderr, or why it was refused."
    )
    risk: Risk = Field(description="Our addition: the policy's rating of the step.")
    exit_code: int | None = Field(
        description="Our addition: the command's exit status; null if it did not run."
    )


class RunOut(BaseModel):
    task_id: str
    results: list[StepResultOut] = Field(
        description="One per step that ran or was refused, in order; steps after a "
        "failure are not run and not listed."
    )
    overall_status: Literal["completed", "partial", "failed"]


@router.post(
    "/api/execute",
    response_model=ExecuteOut,
    summary="Plan a request (seed 001)",
    responses=responses(400, 401, 422, 429),
)
async def execute(body: ExecuteIn, request: Request) -> ExecuteOut:
    """Turn a request into shell steps without running anything. Each step's ``risk``
    comes from the policy, never from the planner. When no rule matches, ``steps`` is
    empty and ``message`` says what the planner understands."""
    proposal = await services_of(request).plans.propose(
        principal_of(request), body.command, body.context
    )
    return ExecuteOut(
        task_id=proposal.task_id,
        steps=[
            PlanStepOut(
                id=s.id,
                description=s.description,
                command=s.command,
                risk=s.risk,
                blocked=s.blocked,
                reason=s.reason,
            )
            for s in proposal.steps
        ],
        requires_confirmation=proposal.requires_confirmation,
        estimated_time=proposal.estimated_time,
        message=proposal.message,
    )


RUN_DESCRIPTION = """\
Run the given steps one after another in one fresh sandbox, destroyed at the end.

- Execution stops at the first failure (a non-zero exit, a step over its time limit of
  `STOCKADE_PLAN_STEP_TIMEOUT` seconds, 300 by default, or a refusal). Later steps are
  not run and not listed.
- A step the policy blocks (`rm -rf /`, `mkfs`, fork bombs, …) fails without running;
  its `error` starts with `Blocked by policy:`.
- A `dangerous` step runs only when the request says `"confirmed": true` (our addition),
  meaning a person confirmed the plan; without it the step fails without running.
- `safe` and `moderate` steps run: Luna's client asks its user first whenever the plan
  `requires_confirmation`.
- `overall_status` is `completed` (every step succeeded), `partial` (some succeeded, then
  one failed) or `failed` (the first step failed).

Risk is judged again here from each command, whatever the plan said. Every step that
ran or was refused is recorded in the audit log (`plan.step`).
"""


@router.post(
    "/api/execute/run",
    response_model=RunOut,
    summary="Run a plan's steps (seed 001)",
    description=RUN_DESCRIPTION,
    responses=responses(400, 401, 403, 422, 429, 503),
    openapi_extra=EXEC,
)
async def execute_run(body: RunIn, request: Request) -> RunOut:
    """Run the steps in order in one fresh sandbox, stopping at the first failure.
    Blocked steps never run; dangerous ones run only with ``"confirmed": true`` (our
    addition: a person confirmed the plan); safe and moderate steps run."""
    result = await services_of(request).plans.run(
        principal_of(request),
        body.task_id,
        [StepToRun(s.id, s.command, s.description) for s in body.steps],
        confirmed=body.confirmed,
    )
    return RunOut(
        task_id=result.task_id,
        results=[
            StepResultOut(
                step_id=r.step_id,
                status=r.status,
                output=r.output,
                error=r.error,
                risk=r.risk,
                exit_code=r.exit_code,
            )
            for r in result.results
        ],
        overall_status=result.overall_status,
    )

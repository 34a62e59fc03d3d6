"""OmniMind's daemon API (seed 002): jobs ("tasks" in its words), the scheduler's status,
start and stop, and our additions (a job's detail, deletion, a run on demand, its history,
and the status WebSocket). ``services/jobs.py`` decides everything."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field

from stockade.api.deps import WS_AUTH_PROTOCOL, principal_of, services_of
from stockade.api.errors import responses
from stockade.services.jobs import JobRequest, Priority, Status, parse_interval, repeat_interval
from stockade.store.records import Job, JobRun

router = APIRouter(prefix="/daemon", tags=["daemon"])

STATUS_PUSH_SECONDS = 5.0


class MetricsOut(BaseModel):
    cpu_percent: float
    memory_percent: float
    is_idle: bool
    is_sleep_time: bool


class StatusOut(BaseModel):
    state: Literal["initializing", "idle", "working", "sleeping", "shutting_down", "error"]
    running: bool = Field(description="Whether the scheduler runs (POST /daemon/start, /stop).")
    tasks_registered: int
    tasks_pending: int = Field(description="Jobs whose next run is due now.")
    metrics: MetricsOut
    cloud_enabled: bool = False
    workspace: str = Field(description="The daemon's state directory.")
    active_runs: int

    @classmethod
    def of(cls, status: Status) -> StatusOut:
        return cls(
            state=status.state,
            running=status.running,
            tasks_registered=status.tasks_registered,
            tasks_pending=status.tasks_pending,
            metrics=MetricsOut(
                cpu_percent=status.cpu_percent,
                memory_percent=status.memory_percent,
                is_idle=status.is_idle,
                is_sleep_time=status.is_sleep_time,
            ),
            workspace=status.workspace,
            active_runs=status.active_runs,
        )


class JobOut(BaseModel):
    task_id: str
    name: str
    description: str
    priority: Literal["CRITICAL", "HIGH", "MEDIUM", "LOW"]
    execution_count: int
    success_count: int
    failure_count: int
    last_execution: datetime | None = None
    repeat_interval: str | None = Field(
        None, description="Python's str(timedelta), e.g. '2:00:00'; null for cron or one-off."
    )
    cron: str | None = None
    kind: Literal["code", "command", "agent"]
    idempotent: bool
    timeout_seconds: int
    next_run_at: datetime | None = None
    last_result: dict[str, Any] | None = None
    runtime_class: str | None = Field(
        None, description="Ours: the backend its sandboxes run on; null for the default."
    )

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(
            task_id=job.task_id,
            name=job.name,
            description=job.description,
            priority=Priority(job.priority).name,
            execution_count=job.execution_count,
            success_count=job.success_count,
            failure_count=job.failure_count,
            last_execution=job.last_execution,
            repeat_interval=repeat_interval(job),
            cron=job.cron,
            kind=job.kind,
            idempotent=job.idempotent,
            timeout_seconds=job.timeout_seconds,
            next_run_at=job.next_run_at,
            last_result=job.last_result,
            runtime_class=job.runtime_class,
        )


class JobDetail(JobOut):
    body: str = Field(description="The job's code, command or task description.")

    @classmethod
    def of(cls, job: Job) -> JobDetail:
        return cls(**JobOut.of(job).model_dump(), body=job.body)


class JobList(BaseModel):
    tasks: list[JobOut]
    total_tasks: int


class JobIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "task_id": "my_custom_task",
                    "name": "My Custom Task",
                    "description": "Does something useful",
                    "priority": "MEDIUM",
                    "code": "def execute():\n    return {'status': 'done', 'result': 42}",
                    "repeat_hours": 4,
                }
            ]
        }
    )

    task_id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=256)
    description: str = Field("", max_length=10_000)
    priority: str = Field(description="CRITICAL, HIGH, MEDIUM or LOW.", max_length=32)
    code: str | None = Field(
        None, max_length=1_000_000, description="Python defining execute() (sync or async)."
    )
    command: str | None = Field(None, max_length=100_000, description="Ours: a shell command.")
    agent_task: str | None = Field(
        None, max_length=10_000, description="Ours: a task description for the agent."
    )
    repeat_hours: float | None = Field(None, description="Hours between runs.")
    repeat_interval: float | str | None = Field(
        None, description="Ours: seconds, or '2:00:00' as OmniMind lists it."
    )
    cron: str | None = Field(None, max_length=256, description="Ours: a cron expression.")
    idempotent: bool = Field(False, description="Ours: re-run a run a crash interrupted.")
    timeout_seconds: int | None = Field(None, gt=0, le=7 * 24 * 3600)
    runtime_class: str | None = Field(
        None,
        max_length=32,
        description="Ours: the sandbox backend of its runs, as seed 004's isolation."
        "runtime_class: runc (namespace) or gvisor; absent: the daemon's default.",
    )

    def request(self) -> JobRequest:
        interval = None if self.repeat_interval is None else parse_interval(self.repeat_interval)
        return JobRequest(
            task_id=self.task_id,
            name=self.name,
            description=self.description,
            priority=self.priority,
            code=self.code,
            command=self.command,
            agent_task=self.agent_task,
            repeat_hours=self.repeat_hours,
            repeat_interval=interval,
            cron=self.cron,
            idempotent=self.idempotent,
            timeout_seconds=self.timeout_seconds,
            runtime_class=self.runtime_class,
        )


class Added(BaseModel):
    status: Literal["task_added"] = "task_added"
    task_id: str
    message: str


class SchedulerOut(BaseModel):
    status: Literal["started", "already_running", "stopped", "not_running"]
    message: str


class RunOut(BaseModel):
    id: str
    trigger: Literal["schedule", "manual", "retry"]
    status: Literal["claimed", "running", "completed", "failed", "interrupted"]
    scheduled_for: datetime
    claimed_at: datetime
    started_at: datetime | None = None
    code_started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: str | None = Field(None, description="Why it failed: the traceback for code.")
    logs: str | None = Field(None, description="stdout and stderr.")

    @classmethod
    def of(cls, run: JobRun) -> RunOut:
        return cls.model_validate({f: getattr(run, f) for f in cls.model_fields if hasattr(run, f)})


class History(BaseModel):
    task_id: str
    runs: list[RunOut]


@router.get("/status", summary="The scheduler's state", responses=responses(401, 429))
async def daemon_status(request: Request) -> StatusOut:
    status = await services_of(request).jobs.status(principal_of(request))
    return StatusOut.of(status)


@router.get("/tasks", summary="List jobs", responses=responses(401, 429))
async def list_jobs(request: Request) -> JobList:
    found = await services_of(request).jobs.listing(principal_of(request))
    return JobList(tasks=[JobOut.of(j) for j in found], total_tasks=len(found))


@router.post(
    "/tasks/add",
    summary="Add a job",
    responses=responses(400, 401, 403, 409, 422, 429),
)
async def add_job(request: Request, body: JobIn) -> Added:
    """One body: ``code`` (Python defining ``execute()``, checked before it is accepted),
    or our ``command`` or ``agent_task``. It runs at once (a ``cron`` job at its next
    time), then every ``repeat_hours``/``repeat_interval``, when its priority allows.
    Every run happens in a fresh sandbox."""
    job = await services_of(request).jobs.add(principal_of(request), body.request())
    return Added(task_id=job.task_id, message=f"Task '{job.name}' added successfully")


@router.post("/start", summary="Start the scheduler", responses=responses(401, 403, 429))
async def start_scheduler(request: Request) -> SchedulerOut:
    """Starts the job scheduler (not the HTTP server). Admins only."""
    if services_of(request).jobs.start_scheduler(principal_of(request)):
        return SchedulerOut(status="started", message="Daemon started successfully")
    return SchedulerOut(status="already_running", message="Daemon is already running")


@router.post("/stop", summary="Stop the scheduler", responses=responses(401, 403, 429))
async def stop_scheduler(request: Request) -> SchedulerOut:
    """Stops the job scheduler; runs under way finish. Admins only."""
    if await services_of(request).jobs.stop_scheduler(principal_of(request)):
        return SchedulerOut(status="stopped", message="Daemon stopped successfully")
    return SchedulerOut(status="not_running", message="Daemon is not running")


@router.get("/tasks/{task_id}", summary="Get a job", responses=responses(401, 404, 429))
async def get_job(request: Request, task_id: str) -> JobDetail:
    job = await services_of(request).jobs.get(principal_of(request), task_id)
    return JobDetail.of(job)


@router.delete(
    "/tasks/{task_id}", status_code=204, summary="Delete a job", responses=responses(401, 404, 429)
)
async def delete_job(request: Request, task_id: str) -> None:
    await services_of(request).jobs.delete(principal_of(request), task_id)


@router.post(
    "/tasks/{task_id}/run",
    status_code=202,
    summary="Run a job now",
    responses=responses(401, 404, 429),
    openapi_extra={"x-rate-limit-category": "exec"},
)
async def run_job(request: Request, task_id: str) -> RunOut:
    """One run at once, whatever the job's priority; its schedule is unchanged."""
    run = await services_of(request).jobs.run_now(principal_of(request), task_id)
    return RunOut.of(run)


@router.get("/tasks/{task_id}/history", summary="A job's runs", responses=responses(401, 404, 429))
async def job_history(
    request: Request, task_id: str, limit: int = Query(50, ge=1, le=1000)
) -> History:
    """Newest first: each run's times, status, result, error (a traceback for code) and
    logs."""
    runs = await services_of(request).jobs.history(principal_of(request), task_id, limit)
    return History(task_id=task_id, runs=[RunOut.of(r) for r in runs])


@router.websocket("/ws")
async def status_socket(websocket: WebSocket) -> None:
    """The status (as ``GET /daemon/status``) now, then again whenever a job of the
    caller's or the scheduler changes, and every few seconds."""
    offered = websocket.headers.get("sec-websocket-protocol", "")
    subprotocol = WS_AUTH_PROTOCOL if offered.startswith(WS_AUTH_PROTOCOL) else None
    principal = principal_of(websocket)
    services = services_of(websocket)
    stream = services.streams.open(principal, ["job.", "scheduler."])
    try:
        await websocket.accept(subprotocol=subprotocol)

        async def send_status() -> None:
            status = StatusOut.of(await services.jobs.status(principal))
            await websocket.send_text(json.dumps(status.model_dump(mode="json")))

        await send_status()
        async with anyio.create_task_group() as group:

            async def until_closed() -> None:
                try:
                    while True:
                        await websocket.receive_text()
                except WebSocketDisconnect:
                    group.cancel_scope.cancel()

            async def on_changes() -> None:
                iterator = aiter(stream)
                while True:
                    with anyio.move_on_after(STATUS_PUSH_SECONDS):
                        await anext(iterator)
                    await send_status()

            group.start_soon(until_closed)
            group.start_soon(on_changes)
    except WebSocketDisconnect:
        pass
    finally:
        stream.close()

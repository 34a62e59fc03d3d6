"""Jobs: OmniMind's recurring, prioritised work (seed 002), run in sandboxes.

A job's body is Python code defining ``execute()`` (checked with ``ast`` before it is
accepted), a shell command, or a task description for the agent. Every run happens in a
fresh sandbox, never in the daemon's process.

**When a job runs.** A job's ``next_run_at`` is its next occurrence. The scheduler wakes
when the earliest one is due (or at least every ``STOCKADE_JOBS_TICK`` seconds while a
due job waits for its window) and runs what its priority allows:

==========  ====================================================================
CRITICAL    at once
HIGH        when the host is idle: CPU below ``STOCKADE_JOBS_IDLE_CPU`` (20%)
MEDIUM      at low activity: CPU below ``STOCKADE_JOBS_LOW_ACTIVITY_CPU`` (50%)
LOW         in sleep hours, ``STOCKADE_JOBS_SLEEP_HOURS`` (00:00-06:00 local)
==========  ====================================================================

CPU is psutil's average over ``STOCKADE_JOBS_LOAD_WINDOW`` seconds. The clock and the
load are injected, so tests never wait for real time.

**Exactly once.** To run an occurrence a daemon moves the job's ``next_run_at`` on with a
conditional UPDATE (``… WHERE next_run_at = <the occurrence>``) and records the run in the
same transaction; of daemons sharing one database exactly one succeeds, and (job,
scheduled_for) is unique among runs besides. The next occurrence is the first one after
*now*, so after downtime the missed ones are coalesced into a single run.

**Crashes.** A run records the daemon instance that claimed it. At start a daemon fails
its own unfinished runs as ``interrupted``; they are not replayed unless the job is
``idempotent``, in which case one run is made at once. The next occurrence was already
scheduled when the run was claimed.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import enum
import json
import logging
import re
import uuid
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import psutil
from croniter import croniter
from sqlalchemy.exc import IntegrityError

from stockade.errors import Conflict, InvalidInput, NotFound, PermissionDenied, StockadeError
from stockade.events import EventBus
from stockade.metrics import Metrics
from stockade.sandbox.base import ExecResult
from stockade.sandbox.workspace import HOME
from stockade.services.principal import Principal, acting_for
from stockade.services.runners import LOG_LIMIT, RESULT_PATH, JobLabel, Runners
from stockade.services.sandboxes import EnvironmentRequest, SandboxService
from stockade.services.tasks import TaskRequest, TaskService
from stockade.settings import Settings
from stockade.store import Store
from stockade.store.records import Job, JobRun

logger = logging.getLogger("stockade.jobs")

TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class Priority(enum.IntEnum):
    CRITICAL = 0
    HIGH = 1
    MEDIUM = 2
    LOW = 3


class Clock(Protocol):
    """Where the scheduler reads the time."""

    def now(self) -> datetime:
        """Now, timezone-aware."""
        ...

    def local(self, at: datetime) -> datetime:
        """``at`` in the host's local time (sleep hours and cron use it)."""
        ...


class Load(Protocol):
    """How busy the host is."""

    def cpu_percent(self) -> float: ...

    def memory_percent(self) -> float: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def local(self, at: datetime) -> datetime:
        return at.astimezone()


class HostLoad:
    """psutil's CPU use, averaged over a window of one-second samples."""

    def __init__(self, window: float) -> None:
        self._samples: deque[float] = deque(maxlen=max(1, int(window)))
        self._task: asyncio.Task[None] | None = None
        psutil.cpu_percent(interval=None)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._samples.append(psutil.cpu_percent(interval=None))

    def cpu_percent(self) -> float:
        if not self._samples:
            # No sample yet (the first second): the one-minute load average per core is
            # steadier than psutil's reading since its previous call, which may be a
            # few milliseconds of a burst.
            per_core = psutil.getloadavg()[0] / (psutil.cpu_count() or 1)
            return min(100.0, per_core * 100)
        return sum(self._samples) / len(self._samples)

    def memory_percent(self) -> float:
        return float(psutil.virtual_memory().percent)


@dataclass(frozen=True, slots=True)
class JobRequest:
    task_id: str
    name: str
    description: str
    priority: str
    code: str | None = None
    command: str | None = None
    agent_task: str | None = None
    repeat_hours: float | None = None
    repeat_interval: float | None = None  # seconds
    cron: str | None = None
    idempotent: bool = False
    timeout_seconds: int | None = None
    runtime_class: str | None = None  # ours: the backend its sandboxes run on


@dataclass(frozen=True, slots=True)
class Status:
    state: str
    running: bool
    tasks_registered: int
    tasks_pending: int
    cpu_percent: float
    memory_percent: float
    is_idle: bool
    is_sleep_time: bool
    workspace: str
    active_runs: int


def check_code(code: str) -> None:
    """Accept code that parses and defines ``execute`` at its top level."""
    try:
        tree = ast.parse(code, "<job>")
    except SyntaxError as exc:
        raise InvalidInput(f"Code is not valid Python: {exc.msg} (line {exc.lineno})") from None
    defined = any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "execute"
        for node in tree.body
    )
    if not defined:
        raise InvalidInput("Code must define an 'execute()' function")


def parse_sleep_hours(text: str) -> tuple[int, int]:
    """``"00:00-06:00"`` as minutes after midnight: (0, 360)."""
    found = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if not found:
        raise ValueError(f"{text!r} is not a range of hours such as 00:00-06:00")
    h1, m1, h2, m2 = (int(g) for g in found.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59:
        raise ValueError(f"{text!r} is not a range of hours such as 00:00-06:00")
    return h1 * 60 + m1, h2 * 60 + m2


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        sandboxes: SandboxService,
        tasks: TaskService,
        events: EventBus,
        metrics: Metrics,
        *,
        instance: str,
        clock: Clock | None = None,
        load: Load | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._sandboxes = sandboxes
        self._tasks = tasks
        self._events = events
        self._metrics = metrics
        self.instance = instance
        self.clock: Clock = clock or SystemClock()
        self._host_load = HostLoad(settings.jobs_load_window) if load is None else None
        self.load: Load = load or self._host_load  # type: ignore[assignment]
        self._sleep = parse_sleep_hours(settings.jobs_sleep_hours)
        self._phase = "initializing"
        self._error: str | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._halting = False
        self._wake = asyncio.Event()
        self._runs: dict[str, asyncio.Task[None]] = {}  # every run's task, until it returns
        self._active: set[str] = set()  # runs not yet ended (what slots and status count)
        self.runners = Runners(
            sandboxes, per_owner=settings.jobs_warm_runners, idle=settings.jobs_warm_idle
        )

    # The daemon's start and stop.

    async def start(self) -> None:
        """Fail what this daemon left running when it died, then start the scheduler
        (unless ``STOCKADE_JOBS_AUTOSTART`` is off)."""
        now = self.clock.now()
        for run in await self._store.jobs.interrupt(self.instance, now):
            self._metrics.job_runs.labels("interrupted").inc()
            job = await self._store.jobs.get(run.job_id)
            self._publish("job.run.interrupted", job, run)
            if job is not None and job.idempotent:
                retry = await self._store.jobs.add_run(_new_run(job, now, "retry", self.instance))
                self._launch(job, retry)
        if self._host_load is not None:
            self._host_load.start()
        self._phase = "ready"
        if self._settings.jobs_autostart:
            self.start_scheduler()

    async def stop(self) -> None:
        """Stop scheduling; give active runs a moment, then end them as interrupted."""
        self._phase = "shutting_down"
        await self._halt()
        runs = list(self._runs.values())
        if runs:
            _, pending = await asyncio.wait(runs, timeout=self._settings.jobs_stop_grace)
            for run in pending:
                run.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.runners.close()
        if self._host_load is not None:
            await self._host_load.stop()

    # The scheduler (POST /daemon/start and /daemon/stop).

    @property
    def running(self) -> bool:
        return self._scheduler is not None and not self._scheduler.done()

    def start_scheduler(self, principal: Principal | None = None) -> bool:
        """Start scheduling; False when it already runs. A caller must be an admin (the
        scheduler serves everyone's jobs); the daemon's own start passes none."""
        _require_admin(principal)
        if self.running:
            return False
        self._scheduler = asyncio.get_running_loop().create_task(self._loop())
        self._events.publish("scheduler.started", {"running": True})
        return True

    async def stop_scheduler(self, principal: Principal | None = None) -> bool:
        """Stop scheduling (runs under way finish); False when it was not running."""
        _require_admin(principal)
        if not self.running:
            return False
        await self._halt()
        await self.runners.drain()
        self._events.publish("scheduler.stopped", {"running": False})
        return True

    async def _halt(self) -> None:
        """End the loop after its current pass (never in the middle of a claim, which
        could commit a run that is then never started)."""
        if self._scheduler is not None:
            self._halting = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._scheduler), timeout=30)
            except TimeoutError:
                self._scheduler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._scheduler
            finally:
                self._halting = False
                self._scheduler = None

    async def _loop(self) -> None:
        while not self._halted():
            # Cleared before the pass, so a job added during it wakes the next one.
            self._wake.clear()
            delay = self._settings.jobs_tick
            try:
                waiting = await self.tick()
                if not waiting:
                    due = await self._store.jobs.next_due()
                    if due is not None:
                        delay = min(delay, max(0.0, (due - self.clock.now()).total_seconds()))
                self._error = None
            except Exception as exc:
                # The state reads "error" until a pass succeeds; the loop goes on.
                logger.exception("the job scheduler failed a pass")
                if self._error is None:
                    self._events.publish("scheduler.error", {"error": str(exc)})
                self._error = str(exc)
            if self._halted():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    def _halted(self) -> bool:
        return self._halting

    def wake(self) -> None:
        """Look for due work now (a job was added, a run ended)."""
        self._wake.set()

    async def tick(self) -> bool:
        """One scheduling pass: claim and start every due occurrence that its priority
        allows now, up to the concurrency limit. True when something due is left
        waiting (for its window or for a free slot)."""
        now = self.clock.now()
        cpu = self.load.cpu_percent()
        sleeping = self.is_sleep_time(now)
        waiting = False
        if len(self._active) >= self._settings.jobs_concurrency:
            return True  # no free slot: a run's end wakes the loop
        for job in await self._store.jobs.due(now):
            if len(self._active) >= self._settings.jobs_concurrency:
                return True
            if not self.allowed(job.priority, cpu, sleeping):
                waiting = True
                continue
            assert job.next_run_at is not None
            # Claimed and started in one commit.
            run = replace(
                _new_run(job, now, "schedule", self.instance),
                scheduled_for=job.next_run_at,
                status="running",
                started_at=now,
            )
            if await self._store.jobs.claim(job, self.following(job, now), run):
                self._launch(job, run)
        return waiting

    def allowed(self, priority: int, cpu: float, sleeping: bool) -> bool:
        """Whether a job of ``priority`` may run at ``cpu`` percent and in or out of
        sleep hours."""
        match Priority(priority):
            case Priority.CRITICAL:
                return True
            case Priority.HIGH:
                return cpu < self._settings.jobs_idle_cpu
            case Priority.MEDIUM:
                return cpu < self._settings.jobs_low_activity_cpu
            case Priority.LOW:
                return sleeping

    def is_sleep_time(self, at: datetime) -> bool:
        local = self.clock.local(at)
        minute = local.hour * 60 + local.minute
        start, end = self._sleep
        if start <= end:
            return start <= minute < end
        return minute >= start or minute < end

    def following(self, job: Job, now: datetime) -> datetime | None:
        """The first occurrence of ``job`` after ``now`` (None for a one-off): the
        occurrences missed meanwhile are skipped, which coalesces them into one run."""
        if job.cron:
            local = self.clock.local(now)
            upcoming: datetime = croniter(job.cron, local).get_next(datetime)
            return upcoming.astimezone(UTC)
        if job.repeat_seconds:
            step = timedelta(seconds=job.repeat_seconds)
            base = job.next_run_at or now
            if base > now:
                return base
            skipped = int((now - base) / step) + 1
            return base + skipped * step
        return None

    # Running one occurrence.

    def _launch(self, job: Job, run: JobRun) -> None:
        task = asyncio.get_running_loop().create_task(self._execute(job, run))
        self._runs[run.id] = task
        self._active.add(run.id)
        self._metrics.jobs_active.set(len(self._active))

        def done(_: asyncio.Task[None]) -> None:
            self._runs.pop(run.id, None)
            self._active.discard(run.id)
            self._metrics.jobs_active.set(len(self._active))
            self.wake()

        task.add_done_callback(done)

    async def _execute(self, job: Job, run: JobRun) -> None:
        if run.status == "claimed":
            await self._store.jobs.started(run.id, self.clock.now())
            run = replace(run, status="running")
        self._publish("job.run.started", job, run)
        status, result, error, logs, code_started = "failed", None, None, None, None
        try:
            async with asyncio.timeout(job.timeout_seconds + 60):
                if job.kind == "code":
                    status, result, error, logs, code_started = await self._run_code(job)
                elif job.kind == "command":
                    status, result, error, logs = await self._run_command(job)
                else:
                    status, result, error = await self._run_agent(job)
        except asyncio.CancelledError:
            status, error = "interrupted", "interrupted: the daemon stopped during this run"
            await self._end(job, run, status, result, error, logs, code_started)
            raise
        except TimeoutError:
            error = f"the run took longer than its timeout ({job.timeout_seconds} s)"
        except StockadeError as exc:
            error = exc.message
        except Exception as exc:
            logger.exception("job %s run %s failed in the daemon", job.task_id, run.id)
            error = f"{type(exc).__name__}: {exc}"
        await self._end(job, run, status, result, error, logs, code_started)

    async def _end(
        self,
        job: Job,
        run: JobRun,
        status: str,
        result: dict[str, Any] | None,
        error: str | None,
        logs: str | None,
        code_started: datetime | None,
    ) -> None:
        at = self.clock.now()
        ended = await self._store.jobs.finish(
            run, status, at=at, result=result, error=error, logs=logs, code_started_at=code_started
        )
        # No longer under way: a status read on this run's end event says so.
        self._active.discard(run.id)
        self._metrics.jobs_active.set(len(self._active))
        if not ended:
            return
        self._metrics.job_runs.labels(status).inc()
        if code_started is not None:
            delay = (code_started - run.scheduled_for).total_seconds()
            self._metrics.job_start_delay.observe(max(delay, 0.0))
        finished = replace(run, status=status, finished_at=at, error=error, result=result)
        self._publish(f"job.run.{status}", job, finished)
        await self._store.audit.append(
            "job.run",
            actor=job.owner_id,
            target=job.id,
            detail={"task_id": job.task_id, "run_id": run.id, "status": status, "error": error},
        )

    async def _run_code(
        self, job: Job
    ) -> tuple[str, dict[str, Any] | None, str | None, str, datetime | None]:
        principal = acting_for(job.owner_id)
        label = JobLabel(job.task_id, job.id, job.timeout_seconds, job.runtime_class)
        runner = await self.runners.take(principal, label)
        try:
            runner.send(job.task_id, job.body)
            await self.runners.claim(runner, label)
            ended = await runner.ended(job.timeout_seconds)
            report = await self._report(principal, runner.sandbox_id) if ended else {}
        finally:
            await self.runners.finish(runner)
        executed = runner.result(timed_out=not ended)
        logs = _logs(executed)
        started = report.get("started")
        code_started = (
            datetime.fromtimestamp(started, UTC) if isinstance(started, int | float) else None
        )
        if report.get("ok") and executed.exit_code == 0:
            result = report.get("result")
            return (
                "completed",
                result if isinstance(result, dict) else None,
                None,
                logs,
                code_started,
            )
        error = report.get("error") or _exit_reason(executed, job.timeout_seconds)
        return "failed", None, str(error), logs, code_started

    async def _run_command(self, job: Job) -> tuple[str, dict[str, Any] | None, str | None, str]:
        principal = acting_for(job.owner_id)
        async with self._sandbox(job, principal) as sandbox_id:
            executed = await self._sandboxes.exec(
                principal, sandbox_id, ["/bin/sh", "-c", job.body], timeout=job.timeout_seconds
            )
        result = {
            "exit_code": executed.exit_code,
            "stdout": executed.stdout.decode("utf-8", "replace")[-4096:],
        }
        if executed.exit_code == 0 and not executed.timed_out:
            return "completed", result, None, _logs(executed)
        return "failed", result, _exit_reason(executed, job.timeout_seconds), _logs(executed)

    async def _run_agent(self, job: Job) -> tuple[str, dict[str, Any] | None, str | None]:
        """A task for the agent, with the same policy and approvals as any task; the
        run lasts until the task ends."""
        subscription = self._events.subscribe(["task."])
        try:
            task = await self._tasks.create(
                acting_for(job.owner_id),
                TaskRequest(
                    job.body, job.timeout_seconds, True, {"job": job.task_id}, job.runtime_class
                ),
            )
            while task.status not in ("completed", "failed", "cancelled"):
                event = await subscription.get()
                if event.data.get("id") == task.id and event.type in (
                    "task.completed",
                    "task.failed",
                    "task.cancelled",
                ):
                    break
            record, _steps = await self._tasks.get(acting_for(job.owner_id), task.id)
        finally:
            subscription.close()
        result = {"task": record.id, **(record.result or {})}
        if record.status == "completed":
            return "completed", result, None
        message = (record.error or {}).get("message") or record.status
        return "failed", result, f"the task {record.status}: {message}"

    @contextlib.asynccontextmanager
    async def _sandbox(self, job: Job, principal: Principal) -> Any:
        record = await self._sandboxes.create(
            principal,
            EnvironmentRequest(
                name=f"job-{job.task_id}"[:253],
                labels={"stockade.job": job.id},
                env={"OMNIMIND_WORKSPACE": HOME, "STOCKADE_JOB": job.task_id},
                timeout=job.timeout_seconds + 120,
                raw={"job": job.task_id},
                runtime_class=job.runtime_class,
            ),
        )
        if record.status != "running":
            raise InvalidInput(record.status_reason or "the job's sandbox did not start")
        try:
            yield record.id
        finally:
            with contextlib.suppress(StockadeError):
                await asyncio.shield(self._sandboxes.delete(principal, record.id, force=True))

    async def _report(self, principal: Principal, sandbox_id: str) -> dict[str, Any]:
        try:
            data = await self._sandboxes.download(principal, sandbox_id, RESULT_PATH)
        except StockadeError:
            return {}
        if not isinstance(data, bytes):
            return {}
        try:
            found = json.loads(data)
        except ValueError:
            return {"error": "the job's result could not be read"}
        return found if isinstance(found, dict) else {}

    # The routes' use cases.

    async def add(self, principal: Principal, request: JobRequest) -> Job:
        if principal.permissions is not None:
            raise PermissionDenied("This API key is limited to named environments.")
        priority = _priority(request.priority)
        if not TASK_ID.fullmatch(request.task_id):
            raise InvalidInput(
                "task_id must be 1-128 letters, digits, '_', '-' or '.', starting with a "
                "letter or digit."
            )
        bodies = [
            (kind, body)
            for kind, body in (
                ("code", request.code),
                ("command", request.command),
                ("agent", request.agent_task),
            )
            if body is not None
        ]
        if len(bodies) != 1:
            raise InvalidInput("Give exactly one of code, command or agent_task.")
        kind, body = bodies[0]
        if not body.strip():
            raise InvalidInput(f"{'agent_task' if kind == 'agent' else kind} must not be empty.")
        if kind == "code":
            check_code(body)
        if request.runtime_class:
            self._sandboxes.choose(request.runtime_class)
        repeat = _repeat(request)
        if request.cron is not None and not croniter.is_valid(request.cron):
            raise InvalidInput(f"cron {request.cron!r} is not a valid cron expression.")
        timeout = request.timeout_seconds or self._settings.jobs_timeout
        now = self.clock.now()
        job = Job(
            id=str(uuid.uuid4()),
            owner_id=principal.user_id,
            task_id=request.task_id,
            name=request.name,
            description=request.description,
            priority=priority,
            kind=kind,
            body=body,
            repeat_seconds=repeat,
            cron=request.cron,
            idempotent=request.idempotent,
            timeout_seconds=timeout,
            execution_count=0,
            success_count=0,
            failure_count=0,
            last_execution=None,
            last_result=None,
            next_run_at=None,
            created_at=now,
            runtime_class=request.runtime_class or None,
        )
        # A cron job first runs at its next time; any other job at once.
        first = self.following(job, now) if request.cron else now
        job = replace(job, next_run_at=first)
        try:
            await self._store.jobs.create(job)
        except IntegrityError:
            raise Conflict(f"Task '{request.task_id}' already exists.") from None
        await self._store.audit.append(
            "job.added", actor=principal.user_id, target=job.id, detail={"task_id": job.task_id}
        )
        self._publish("job.added", job, None)
        self.wake()
        return job

    async def listing(self, principal: Principal) -> list[Job]:
        # A key limited to named environments reaches no job, as it reaches no task.
        if principal.is_restricted:
            return []
        return await self._store.jobs.listing(owner_id=_owner(principal))

    async def get(self, principal: Principal, task_id: str) -> Job:
        """The caller's job (an admin's reach is every job); 404 for a key limited to
        named environments, which jobs are not among."""
        if principal.is_restricted:
            raise NotFound(f"Task '{task_id}' does not exist.")
        found = await self._store.jobs.named(task_id, owner_id=_owner(principal))
        if not found:
            raise NotFound(f"Task '{task_id}' does not exist.")
        mine = [job for job in found if job.owner_id == principal.user_id]
        return (mine or found)[0]

    async def delete(self, principal: Principal, task_id: str) -> None:
        job = await self.get(principal, task_id)
        await self._store.jobs.delete(job.id)
        await self._store.audit.append(
            "job.deleted", actor=principal.user_id, target=job.id, detail={"task_id": task_id}
        )
        self._publish("job.deleted", job, None)

    async def run_now(self, principal: Principal, task_id: str) -> JobRun:
        """Run the job once, now, whatever its priority and schedule (its next
        occurrence stays as it was)."""
        job = await self.get(principal, task_id)
        run = await self._store.jobs.add_run(
            _new_run(job, self.clock.now(), "manual", self.instance)
        )
        self._launch(job, run)
        return run

    async def history(self, principal: Principal, task_id: str, limit: int) -> list[JobRun]:
        job = await self.get(principal, task_id)
        return await self._store.jobs.runs(job.id, limit=limit)

    async def status(self, principal: Principal) -> Status:
        now = self.clock.now()
        jobs = await self._store.jobs.listing(owner_id=_owner(principal))
        pending = sum(1 for j in jobs if j.next_run_at is not None and j.next_run_at <= now)
        cpu = self.load.cpu_percent()
        sleeping = self.is_sleep_time(now)
        return Status(
            state=self.state(sleeping),
            running=self.running,
            tasks_registered=len(jobs),
            tasks_pending=pending,
            cpu_percent=round(cpu, 1),
            memory_percent=round(self.load.memory_percent(), 1),
            is_idle=cpu < self._settings.jobs_idle_cpu,
            is_sleep_time=sleeping,
            workspace=str(self._settings.home),
            active_runs=len(self._active),
        )

    def state(self, sleeping: bool) -> str:
        """initializing, idle, working, sleeping, shutting_down or error."""
        if self._phase in ("initializing", "shutting_down"):
            return self._phase
        if self._error is not None:
            return "error"
        if self._active:
            return "working"
        return "sleeping" if sleeping and self.running else "idle"

    async def idle(self) -> None:
        """Wait until no run is under way (tests, the benchmark)."""
        while self._runs:
            await asyncio.gather(*list(self._runs.values()), return_exceptions=True)

    def _publish(self, kind: str, job: Job | None, run: JobRun | None) -> None:
        data: dict[str, Any] = {}
        if job is not None:
            data |= {"id": job.id, "task_id": job.task_id, "priority": Priority(job.priority).name}
        if run is not None:
            data |= {"run_id": run.id, "status": run.status, "trigger": run.trigger}
        self._events.publish(kind, data, owner=job.owner_id if job else None)


def repeat_interval(job: Job) -> str | None:
    """OmniMind's ``repeat_interval``: Python's ``str(timedelta)``, e.g. ``"2:00:00"`` or
    ``"1 day, 0:00:00"``."""
    if job.repeat_seconds is None:
        return None
    return str(timedelta(seconds=job.repeat_seconds))


def parse_interval(value: str | float | int) -> float:
    """Seconds from a number of seconds or ``str(timedelta)``'s form."""
    if isinstance(value, int | float):
        return float(value)
    found = re.fullmatch(r"\s*(?:(\d+) days?, )?(\d+):(\d{2}):(\d{2}(?:\.\d+)?)\s*", value)
    if not found:
        raise InvalidInput(f"repeat_interval {value!r} is not seconds or a time such as '2:00:00'.")
    days, hours, minutes, seconds = found.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _repeat(request: JobRequest) -> float | None:
    given = [v for v in (request.repeat_hours, request.repeat_interval, request.cron) if v]
    if len(given) > 1:
        raise InvalidInput("Give at most one of repeat_hours, repeat_interval or cron.")
    if request.repeat_hours is not None:
        if request.repeat_hours <= 0:
            raise InvalidInput("repeat_hours must be more than 0.")
        return float(request.repeat_hours) * 3600
    if request.repeat_interval is not None:
        if request.repeat_interval < 1:
            raise InvalidInput("repeat_interval must be at least 1 second.")
        return float(request.repeat_interval)
    return None


def _priority(name: str) -> int:
    try:
        return Priority[name.strip().upper()].value
    except KeyError:
        raise InvalidInput(f"Invalid priority: {name}") from None


def _require_admin(principal: Principal | None) -> None:
    if principal is not None and not principal.is_admin:
        raise PermissionDenied("Only an admin may start or stop the scheduler.")


def _owner(principal: Principal) -> str | None:
    return None if principal.is_admin else principal.user_id


def _new_run(job: Job, now: datetime, trigger: str, instance: str) -> JobRun:
    return JobRun(
        id=str(uuid.uuid4()),
        job_id=job.id,
        scheduled_for=now,
        trigger=trigger,
        status="claimed",
        instance=instance,
        claimed_at=now,
        started_at=None,
        code_started_at=None,
        finished_at=None,
        result=None,
        error=None,
        logs=None,
    )


def _logs(executed: ExecResult) -> str:
    text = executed.stdout.decode("utf-8", "replace")
    errors = executed.stderr.decode("utf-8", "replace")
    if errors:
        text += ("" if not text or text.endswith("\n") else "\n") + errors
    return text[-LOG_LIMIT:]


def _exit_reason(executed: ExecResult, timeout: int) -> str:
    if executed.timed_out:
        return f"timed out after {timeout} s; its processes were killed"
    if executed.exit_code == 137:
        return "killed (exit 137): the run used more memory than its limit"
    if executed.exit_code > 128:
        return f"killed by signal {executed.exit_code - 128}"
    return f"exited with status {executed.exit_code}"


__all__ = [
    "Clock",
    "JobRequest",
    "JobService",
    "Load",
    "Priority",
    "Status",
    "check_code",
    "parse_interval",
    "repeat_interval",
]

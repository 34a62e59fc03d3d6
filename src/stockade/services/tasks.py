"""Tasks and approvals: the approval cliff, as use cases.

A task is an agent run in a sandbox of its own. Its life::

    pending -> running -> completed | failed | cancelled
                  ^  \\
                  |   waiting     (stored; reads "running" with pending_approval_id)
                  +---/

- **running**: ``_drive`` runs the agent until it answers or pauses. The time spent here
  counts against ``timeout_seconds``; the time a person takes to answer does not.
- **waiting**: the run paused on calls that need a person. One transaction stores the
  history, the pending calls and their approvals, so nothing is lost if the daemon dies.
  The task's home directory is archived to disk first, so a resume after a restart, in
  a fresh sandbox, finds the task's files.
- **answering**: the store decides races (one conditional UPDATE per approval; one
  conditional claim per task), so exactly one answer wins and exactly one resume runs.
  An approved call runs only if a hash of its arguments, as stored, equals the hash the
  person was shown (``agent/tools.py``).
- **restarts**: a task that was running when the daemon died is failed as
  ``interrupted``, never replayed (its actions may already have run); a waiting task
  keeps waiting, and one whose approvals were all answered resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tarfile
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from stockade.agent.loop import AgentRunner, Decision, PendingCall, Segment
from stockade.agent.rules import prompt_for
from stockade.agent.tools import HOME, StepRecord, ToolDeps
from stockade.errors import Conflict, InvalidInput, NotFound, PermissionDenied, StockadeError
from stockade.events import EventBus
from stockade.metrics import Metrics
from stockade.policy import Policy
from stockade.sandbox.base import ExecResult, FileEntry, IsADirectory, SandboxError
from stockade.services.principal import Principal, acting_for
from stockade.services.sandboxes import EnvironmentRequest, SandboxService
from stockade.settings import Settings
from stockade.store import Store
from stockade.store.records import Approval, Task, TaskStep

logger = logging.getLogger("stockade.tasks")

# Statuses as stored; "waiting" reads "running" on the wire.
ACTIVE = ("pending", "running", "waiting")
ENDED = ("completed", "failed", "cancelled")
WIRE_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
APPROVAL_STATUSES = ("pending", "approved", "denied", "expired", "cancelled")
SWEEP_INTERVAL = 1.0
MAX_DESCRIPTION = 10_000


@dataclass(frozen=True, slots=True)
class TaskRequest:
    description: str
    timeout_seconds: int | None = None
    require_approval: bool = True
    metadata: Mapping[str, Any] | None = None
    runtime_class: str | None = None  # ours: the backend of its sandbox


def wire_status(status: str) -> str:
    return "running" if status == "waiting" else status


def approval_status(record: Approval, now: datetime | None = None) -> str:
    """An approval's status as callers see it: a pending one whose time has passed reads
    ``expired`` even before the sweeper has marked it."""
    if record.status == "pending" and record.expires_at <= (now or _now()):
        return "expired"
    return record.status


class TaskService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        sandboxes: SandboxService,
        events: EventBus,
        metrics: Metrics,
        runner: AgentRunner,
        policy: Policy,
    ) -> None:
        self._settings = settings
        self._store = store
        self._sandboxes = sandboxes
        self._events = events
        self._metrics = metrics
        self._runner = runner
        self.policy = policy
        self._files = settings.home / "tasks"
        self._drives: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # Set by the benchmark and tests: called as an approved action starts to run.
        self.on_action: Any = None

    # Start and stop.

    async def start(self) -> None:
        """Fail the tasks a dead daemon left running; resume the waiting ones whose
        approvals were all answered; start the expiry sweeper."""
        self._files.mkdir(mode=0o700, parents=True, exist_ok=True)
        for task in await self._store.tasks.in_statuses(["pending", "running"]):
            await self._end(
                task,
                "failed",
                error={
                    "code": "interrupted",
                    "message": "The daemon stopped while this task ran. Its actions are "
                    "not replayed, because some may already have run.",
                },
                only_from=["pending", "running"],
            )
        counts = await self._store.tasks.counts()
        for status in WIRE_STATUSES:
            self._metrics.tasks.labels(status).set(0)
        for status, count in counts.items():
            self._metrics.tasks.labels(wire_status(status)).inc(count)
        pending = await self._store.approvals.listing(owner_id=None, statuses=["pending"])
        self._metrics.approvals_pending.set(len(pending))
        for task in await self._store.tasks.in_statuses(["waiting"]):
            await self._try_resume(task.id)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        """Stop every run. Running tasks end ``failed`` (interrupted); waiting tasks stay
        waiting, their files archived, and resume after the next start."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        drives = list(self._drives.values())
        for drive in drives:
            drive.cancel()
        await asyncio.gather(*drives, return_exceptions=True)
        try:
            for task in await self._store.tasks.in_statuses(["pending", "running"]):
                await self._end(
                    task,
                    "failed",
                    error={"code": "interrupted", "message": "The daemon stopped while it ran."},
                    only_from=["pending", "running"],
                )
        except Exception:
            # The next start fails them instead.
            logger.exception("could not mark the interrupted tasks failed")
        await asyncio.gather(*list(self._background), return_exceptions=True)

    async def idle(self) -> None:
        """Wait until no task is being driven (tests and the benchmark)."""
        while self._drives or self._background:
            await asyncio.gather(*self._drives.values(), *self._background, return_exceptions=True)

    # Tasks.

    async def create(self, principal: Principal, request: TaskRequest) -> Task:
        """Store the task, start its sandbox, and start the agent in the background.
        Answers once the sandbox runs: the task reads ``running`` with its ``vm_id``."""
        if principal.permissions is not None:
            raise PermissionDenied(
                "This API key is limited to named environments and cannot start tasks."
            )
        description = request.description.strip()
        if not description:
            raise InvalidInput("description must say what the task should do.")
        if len(description) > MAX_DESCRIPTION:
            raise InvalidInput(f"description is longer than {MAX_DESCRIPTION} characters.")
        timeout = request.timeout_seconds or self._settings.task_timeout
        if timeout <= 0:
            raise InvalidInput("timeout_seconds must be a positive number of seconds.")
        if request.runtime_class:
            self._sandboxes.choose(request.runtime_class)
        now = _now()
        task = Task(
            id=str(uuid.uuid4()),
            owner_id=principal.user_id,
            description=description,
            status="pending",
            require_approval=request.require_approval,
            timeout_seconds=timeout,
            metadata=dict(request.metadata or {}),
            sandbox_id=None,
            pending_approval_id=None,
            result=None,
            error=None,
            history=None,
            deferred=None,
            created_at=now,
            started_at=None,
            finished_at=None,
            runtime_class=request.runtime_class or None,
        )
        await self._store.tasks.create(task)
        self._metrics.tasks.labels("pending").inc()
        await self._audit(task.owner_id, "task.created", task.id, {"description": description})
        try:
            sandbox_id = await self._new_sandbox(task)
        except StockadeError as exc:
            await self._end(
                task,
                "failed",
                error={"code": "sandbox_failed", "message": exc.message},
                only_from=["pending"],
            )
            return await self._load(task.id)
        started = _now()
        await self._store.tasks.update(
            task.id,
            only_from=["pending"],
            status="running",
            sandbox_id=sandbox_id,
            started_at=started,
        )
        self._moved("pending", "running")
        task = replace(task, status="running", sandbox_id=sandbox_id, started_at=started)
        self._publish_task("task.running", task)
        self._drive(task, None)
        return task

    async def get(self, principal: Principal, task_id: str) -> tuple[Task, list[TaskStep]]:
        task = await self._reach(principal, task_id)
        return task, await self._store.tasks.steps(task.id)

    async def page(
        self, principal: Principal, *, status: str | None, limit: int, offset: int
    ) -> tuple[list[Task], int]:
        statuses: list[str] | None = None
        if status:
            if status not in WIRE_STATUSES:
                raise InvalidInput(
                    f"Unknown status {status!r}; use one of {', '.join(WIRE_STATUSES)}."
                )
            statuses = ["running", "waiting"] if status == "running" else [status]
        if principal.is_restricted:
            return [], 0
        return await self._store.tasks.page(
            owner_id=None if principal.is_admin else principal.user_id,
            statuses=statuses,
            limit=limit,
            offset=offset,
        )

    async def cancel(self, principal: Principal, task_id: str) -> Task:
        """Cancel a task: its run stops, its pending approvals are withdrawn, and its
        sandbox is destroyed."""
        task = await self._reach(principal, task_id)
        if task.status in ENDED:
            raise Conflict(f"Task {task_id} has already ended ({task.status}).")
        changed = await self._store.tasks.update(
            task.id,
            only_from=list(ACTIVE),
            status="cancelled",
            finished_at=_now(),
            pending_approval_id=None,
            error={"code": "cancelled", "message": f"Cancelled by {principal.username}."},
        )
        if not changed:
            raise Conflict(f"Task {task_id} has already ended.")
        self._moved(wire_status(task.status), "cancelled")
        drive = self._drives.get(task.id)
        if drive is not None:
            drive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drive
        withdrawn = await self._store.approvals.cancel_pending(task.id, _now())
        self._metrics.approvals_pending.dec(len(withdrawn))
        await self._drop_sandbox(task)
        self._drop_files(task.id)
        await self._audit(principal.user_id, "task.cancelled", task.id, {})
        task = await self._load(task.id)
        self._publish_task("task.cancelled", task)
        return task

    # Approvals.

    async def approvals(self, principal: Principal, status: str | None) -> list[Approval]:
        if status is not None and status not in APPROVAL_STATUSES:
            raise InvalidInput(
                f"Unknown status {status!r}; use one of {', '.join(APPROVAL_STATUSES)}."
            )
        if principal.is_restricted:
            return []
        owner = None if principal.is_admin else principal.user_id
        if status is None:
            return await self._store.approvals.listing(owner_id=owner)
        # A pending approval whose time has passed reads expired before the sweeper runs.
        stored = {"expired": ["pending", "expired"]}.get(status, [status])
        found = await self._store.approvals.listing(owner_id=owner, statuses=stored)
        now = _now()
        return [a for a in found if approval_status(a, now) == status]

    async def approval(self, principal: Principal, approval_id: str) -> Approval:
        record = await self._store.approvals.get(approval_id)
        if record is None or not self._owns(principal, record.owner_id):
            raise NotFound(f"Approval {approval_id} does not exist.")
        return record

    async def answer(
        self, principal: Principal, approval_id: str, *, approved: bool, reason: str | None
    ) -> Approval:
        """Approve or deny. Exactly one of concurrent answers wins; the others, and any
        answer after expiry, get ``Conflict``."""
        record = await self.approval(principal, approval_id)
        if principal.permissions is not None:
            raise PermissionDenied("This API key is limited to named environments.")
        at = _now()
        answer = await self._store.approvals.answer(
            approval_id, approved=approved, reason=reason, by=principal.user_id, at=at
        )
        if answer.refused == "missing" or answer.approval is None:
            raise NotFound(f"Approval {approval_id} does not exist.")
        if answer.refused == "expired":
            raise Conflict(
                f"Approval {approval_id} expired at {_iso(record.expires_at)}; it counts as "
                "denied and can no longer be answered."
            )
        if answer.refused is not None:
            raise Conflict(
                f"Approval {approval_id} was already answered ({answer.approval.status})."
            )
        decided = answer.approval
        self._decided(decided, decided.status)
        await self._audit(
            principal.user_id,
            "approval.answered",
            decided.id,
            {"task_id": decided.task_id, "approved": approved, "reason": reason},
        )
        if not approved:
            await self._refused_step(decided, "denied")
        await self._try_resume(decided.task_id, decided)
        drive = self._drives.get(decided.task_id)
        if drive is not None and self._settings.approval_answer_wait > 0:
            # A script that reads the task right after answering sees where the answer led
            # (completed, failed, or waiting again) unless that takes longer than this.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(
                    asyncio.shield(drive), timeout=self._settings.approval_answer_wait
                )
        return decided

    # The run.

    def _drive(
        self,
        task: Task,
        answers: Mapping[str, Decision] | None,
        bound: Mapping[str, str] | None = None,
    ) -> None:
        drive = asyncio.get_running_loop().create_task(self._run(task, answers, bound or {}))
        self._drives[task.id] = drive
        drive.add_done_callback(lambda _: self._drives.pop(task.id, None))

    async def _run(
        self, task: Task, answers: Mapping[str, Decision] | None, bound: Mapping[str, str]
    ) -> None:
        began = time.monotonic()
        remaining = task.timeout_seconds - task.active_seconds
        steps = _Steps(self, task)
        try:
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                await steps.load()
                sandbox_id = await self._ensure_sandbox(task)
                task = replace(task, sandbox_id=sandbox_id)
                deps = ToolDeps(
                    workspace=_Workspace(self._sandboxes, _acting_for(task), sandbox_id),
                    policy=self.policy,
                    require_approval=task.require_approval,
                    record=steps.record,
                    approved=bound,
                    on_run=self.on_action,
                )
                if answers is None:
                    segment = await self._runner.start(
                        prompt_for(task.description, task.metadata), deps
                    )
                else:
                    segment = await self._runner.resume(task.history or [], answers, deps)
        except TimeoutError:
            active = task.active_seconds + (time.monotonic() - began)
            await self._end(
                task,
                "failed",
                error={
                    "code": "timeout",
                    "message": f"The task ran longer than its timeout_seconds "
                    f"({task.timeout_seconds} s).",
                },
                active_seconds=active,
            )
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the run fails the task
            logger.warning(
                "task %s failed: %s", task.id, exc, exc_info=not isinstance(exc, StockadeError)
            )
            message = (
                exc.message if isinstance(exc, StockadeError) else str(exc) or type(exc).__name__
            )
            await self._end(
                task,
                "failed",
                error={"code": "agent_error", "message": message},
                active_seconds=task.active_seconds + (time.monotonic() - began),
            )
            return
        active = task.active_seconds + (time.monotonic() - began)
        if segment.pending:
            await self._pause(task, segment, active)
        else:
            result = {"output": segment.output or "", "exit_code": steps.exit_code}
            await self._end(
                task, "completed", result=result, active_seconds=active, history=segment.history
            )

    async def _pause(self, task: Task, segment: Segment, active: float) -> None:
        """Archive the task's files, then store its approvals and its history together."""
        try:
            if task.sandbox_id:
                await self._sandboxes.archive(task.sandbox_id, HOME, self._archive_path(task.id))
        except (SandboxError, StockadeError, OSError) as exc:
            await self._end(
                task,
                "failed",
                error={
                    "code": "archive_failed",
                    "message": f"The task's files could not be kept: {exc}",
                },
                active_seconds=active,
            )
            return
        now = _now()
        ttl = timedelta(seconds=self._settings.approval_ttl_seconds)
        pending = [_approval(task, call, now, ttl) for call in segment.pending]
        deferred = {
            "calls": [{"tool_call_id": a.tool_call_id, "approval_id": a.id} for a in pending]
        }
        stored = await self._store.tasks.pause(
            task.id, pending, history=segment.history, deferred=deferred, active_seconds=active
        )
        if not stored:
            return  # cancelled meanwhile
        self._metrics.approvals_pending.inc(len(pending))
        waiting = replace(task, status="waiting", pending_approval_id=pending[0].id)
        for approval in pending:
            self._events.publish("approval.requested", approval_json(approval), owner=task.owner_id)
        self._publish_task("task.waiting", waiting)
        for approval in pending:
            await self._audit(
                task.owner_id,
                "approval.requested",
                approval.id,
                {
                    "task_id": task.id,
                    "risk_level": approval.risk_level,
                    "description": approval.description,
                },
            )

    async def _try_resume(self, task_id: str, known: Approval | None = None) -> None:
        """Resume a waiting task if every one of its approvals is answered (and nobody
        else resumed it first). ``known``: an approval already read (the one just
        answered), not read again."""
        if not await self._store.tasks.claim_resume(task_id):
            return
        task = await self._load(task_id)
        answers: dict[str, Decision] = {}
        bound: dict[str, str] = {}
        refused: list[Approval] = []
        for call in (task.deferred or {}).get("calls", []):
            approval_id, call_id = call["approval_id"], call["tool_call_id"]
            record = known if known is not None and known.id == approval_id else None
            record = record or await self._store.approvals.get(approval_id)
            if record is not None and record.status == "approved":
                answers[call_id] = Decision(True)
                # What the person was shown; the tool checks the call against it.
                bound[call_id] = record.action_hash
            else:
                status = record.status if record else "expired"
                reason = record.reason if record else None
                answers[call_id] = Decision(False, reason, expired=status == "expired")
                if record is not None:
                    refused.append(record)
        await self._record_refusals(task_id, refused)
        self._publish_task("task.running", task)
        self._drive(task, answers, bound)

    async def _record_refusals(self, task_id: str, refused: Sequence[Approval]) -> None:
        """The refused step of each denied or expired approval whose own was lost: the
        daemon died after the answer was stored and before its step was (the resume
        then comes from the next start)."""
        if not refused:
            return
        recorded = {s.detail.get("approval_id") for s in await self._store.tasks.steps(task_id)}
        for record in refused:
            if record.id not in recorded:
                # A concurrent answer's own step took that number first: it is there.
                with contextlib.suppress(IntegrityError):
                    await self._refused_step(record, record.status)

    async def _sweep(self) -> None:
        """Expire approvals whose time has passed; their tasks resume with a denial."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.expire_due()
            except Exception:
                logger.exception("the approval sweeper failed")

    async def expire_due(self) -> None:
        for record in await self._store.approvals.expire_due(_now()):
            self._decided(record, "expired")
            await self._audit(None, "approval.expired", record.id, {"task_id": record.task_id})
            await self._refused_step(record, "expired")
            await self._try_resume(record.task_id, record)

    # Endings.

    async def _end(
        self,
        task: Task,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        only_from: Sequence[str] = ("running",),
        **values: Any,
    ) -> None:
        changed = await self._store.tasks.update(
            task.id,
            only_from=list(only_from),
            status=status,
            result=result,
            error=error,
            finished_at=_now(),
            pending_approval_id=None,
            **values,
        )
        if not changed:
            return
        self._moved(wire_status(task.status), status)
        await self._drop_sandbox(task)
        self._drop_files(task.id)
        await self._audit(
            task.owner_id, f"task.{status}", task.id, {"error": error} if error else {}
        )
        self._publish_task(
            f"task.{status}", replace(task, status=status, result=result, error=error)
        )

    async def _drop_sandbox(self, task: Task) -> None:
        current = await self._store.tasks.get(task.id)
        sandbox_id = (current.sandbox_id if current else None) or task.sandbox_id
        if sandbox_id and self._sandboxes.is_running(sandbox_id):
            with contextlib.suppress(StockadeError):
                await self._sandboxes.delete(_acting_for(task), sandbox_id, force=True)

    # Sandboxes and files.

    async def _new_sandbox(self, task: Task) -> str:
        request = EnvironmentRequest(
            name=f"task-{task.id[:8]}",
            labels={"stockade.task": task.id},
            raw={"task_id": task.id},
            runtime_class=task.runtime_class,
        )
        record = await self._sandboxes.create(_acting_for(task), request)
        if record.status != "running":
            raise SandboxError(record.status_reason or "the task's sandbox did not start")
        if self._settings.task_template is not None:
            await self._sandboxes.unarchive(record.id, HOME, self._template())
        return record.id

    async def _ensure_sandbox(self, task: Task) -> str:
        """The task's sandbox, or a fresh one with the task's archived files when it is
        gone (the daemon restarted, or the reaper took it)."""
        if task.sandbox_id and self._sandboxes.is_running(task.sandbox_id):
            return task.sandbox_id
        sandbox_id = await self._new_sandbox(task)
        archive = self._archive_path(task.id)
        if archive.exists():
            await self._sandboxes.unarchive(sandbox_id, HOME, archive)
        await self._store.tasks.update(task.id, sandbox_id=sandbox_id)
        return sandbox_id

    def _template(self) -> Path:
        """The template directory as a tar, made once per daemon (by the daemon: the
        template is the operator's, not a sandbox's)."""
        target = self._files / "template.tar"
        if not target.exists():
            assert self._settings.task_template is not None
            source = self._settings.task_template
            if not source.is_dir():
                raise InvalidInput(f"STOCKADE_TASK_TEMPLATE {source} is not a directory.")
            with (
                tempfile.NamedTemporaryFile(dir=self._files, delete=False) as out,
                tarfile.open(fileobj=out, mode="w") as tar,
            ):
                for child in sorted(source.iterdir()):
                    tar.add(child, arcname=child.name, filter=_sandbox_owned)
            Path(out.name).replace(target)
        return target

    def _archive_path(self, task_id: str) -> Path:
        return self._files / f"{task_id}.tar"

    def _drop_files(self, task_id: str) -> None:
        self._archive_path(task_id).unlink(missing_ok=True)

    # Small pieces.

    async def _reach(self, principal: Principal, task_id: str) -> Task:
        task = await self._store.tasks.get(task_id)
        if task is None or not self._owns(principal, task.owner_id):
            raise NotFound(f"Task {task_id} does not exist.")
        return task

    @staticmethod
    def _owns(principal: Principal, owner_id: str) -> bool:
        """A key limited to named environments reaches no task: tasks are not among
        them, and it may neither create tasks nor answer their approvals."""
        if principal.is_restricted:
            return False
        return principal.is_admin or principal.user_id == owner_id

    async def _load(self, task_id: str) -> Task:
        task = await self._store.tasks.get(task_id)
        if task is None:
            raise NotFound(f"Task {task_id} does not exist.")
        return task

    async def _refused_step(self, approval: Approval, outcome: str) -> None:
        steps = await self._store.tasks.steps(approval.task_id)
        reason = approval.reason if outcome == "denied" else "nobody answered in time"
        await self._store.tasks.add_step(
            TaskStep(
                task_id=approval.task_id,
                seq=len(steps) + 1,
                at=_now(),
                tool=_tool_of(approval),
                action_type=approval.action_type,
                risk=approval.risk_level,
                outcome="refused",
                detail={
                    "decision": outcome,
                    "description": approval.description,
                    "approval_id": approval.id,
                    "reason": reason,
                    "tool_call_id": approval.tool_call_id,
                },
            )
        )

    def _decided(self, approval: Approval, status: str) -> None:
        self._metrics.approvals_pending.dec()
        self._metrics.approvals_decided.labels(status).inc()
        waited = ((approval.responded_at or _now()) - approval.created_at).total_seconds()
        self._metrics.approval_wait.observe(max(waited, 0.0))
        body = approval_json(replace(approval, status=status))
        self._events.publish(f"approval.{status}", body, owner=approval.owner_id)

    def _moved(self, before: str, after: str) -> None:
        self._metrics.tasks.labels(before).dec()
        self._metrics.tasks.labels(after).inc()

    def _publish_task(self, kind: str, task: Task) -> None:
        self._events.publish(
            kind,
            {
                "id": task.id,
                "status": wire_status(task.status),
                "pending_approval_id": task.pending_approval_id,
                "vm_id": task.sandbox_id,
            },
            owner=task.owner_id,
        )

    async def _audit(
        self, actor: str | None, action: str, target: str, detail: dict[str, Any]
    ) -> None:
        await self._store.audit.append(action, actor=actor, target=target, detail=detail)


class _Steps:
    """Records a run's steps in the store, numbered after those already there."""

    def __init__(self, service: TaskService, task: Task) -> None:
        self._service = service
        self._task = task
        self._next = 1
        self.exit_code = 0

    async def load(self) -> None:
        self._next = len(await self._service._store.tasks.steps(self._task.id)) + 1

    async def record(self, step: StepRecord) -> None:
        seq = self._next
        self._next += 1
        code = step.detail.get("exit_code")
        if isinstance(code, int):
            self.exit_code = code
        detail = dict(step.detail) | {"decision": step.decision, "description": step.description}
        await self._service._store.tasks.add_step(
            TaskStep(
                task_id=self._task.id,
                seq=seq,
                at=_now(),
                tool=step.tool,
                action_type=step.action_type,
                risk=step.risk,
                outcome=step.outcome,
                detail=detail,
            )
        )
        await self._service._audit(
            self._task.owner_id,
            "task.action",
            self._task.id,
            {
                "seq": seq,
                "tool": step.tool,
                "risk": step.risk,
                "decision": step.decision,
                "outcome": step.outcome,
                "description": step.description,
            },
        )
        self._service._events.publish(
            "task.step",
            {
                "task_id": self._task.id,
                "seq": seq,
                "tool": step.tool,
                "risk": step.risk,
                "decision": step.decision,
                "outcome": step.outcome,
            },
            owner=self._task.owner_id,
        )


class _Workspace:
    """The task's sandbox, as the tools use it, acting for the task's owner."""

    def __init__(self, sandboxes: SandboxService, principal: Principal, sandbox_id: str) -> None:
        self._sandboxes = sandboxes
        self._principal = principal
        self._id = sandbox_id

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        timeout: float,  # noqa: ASYNC109 - the command's limit, not this call's
    ) -> ExecResult:
        return await self._sandboxes.exec(
            self._principal, self._id, argv, timeout=timeout, stdin=stdin
        )

    async def read(self, path: str, *, limit: int) -> bytes:
        found = await self._sandboxes.download(self._principal, self._id, path)
        if isinstance(found, list):
            raise IsADirectory(f"{path} is a directory")
        return found[:limit]

    async def write(self, path: str, data: bytes) -> None:
        await self._sandboxes.write_file(self._principal, self._id, path, data)

    async def listing(self, path: str) -> list[FileEntry]:
        found = await self._sandboxes.download(self._principal, self._id, path)
        if not isinstance(found, list):
            raise InvalidInput(f"{path} is a file, not a directory")
        return found


def approval_json(record: Approval, now: datetime | None = None) -> dict[str, Any]:
    """Seed 000's approval object."""
    return {
        "id": record.id,
        "task_id": record.task_id,
        "action_type": record.action_type,
        "risk_level": record.risk_level,
        "description": record.description,
        "changes": record.changes,
        "status": approval_status(record, now),
        "reason": record.reason,
        "action_hash": record.action_hash,
        "created_at": _iso(record.created_at),
        "expires_at": _iso(record.expires_at),
        "responded_at": _iso(record.responded_at) if record.responded_at else None,
    }


def _approval(task: Task, call: PendingCall, now: datetime, ttl: timedelta) -> Approval:
    meta = call.metadata
    # The moment the tool asked (before the files were archived and the row stored).
    with contextlib.suppress(KeyError, TypeError, ValueError):
        now = datetime.fromisoformat(str(meta["requested_at"]).replace("Z", "+00:00"))
    return Approval(
        id=str(uuid.uuid4()),
        task_id=task.id,
        owner_id=task.owner_id,
        tool_call_id=call.tool_call_id,
        action_type=str(meta.get("action_type", "Unknown")),
        risk_level=str(meta.get("risk_level", "high")),
        description=str(meta.get("description", call.tool)),
        changes=list(meta.get("changes") or []),
        action_hash=str(meta.get("hash", "")),
        status="pending",
        reason=None,
        created_at=now,
        expires_at=now + ttl,
        responded_at=None,
        responded_by=None,
    )


def _tool_of(approval: Approval) -> str:
    return {
        "CommandExec": "run_command",
        "FileCreate": "write_file",
        "FileEdit": "edit_file",
        "FileDelete": "delete_file",
        "NetworkCall": "http_request",
    }.get(approval.action_type, "unknown")


def _acting_for(task: Task) -> Principal:
    """The task acts for its owner on its own sandbox."""
    return acting_for(task.owner_id)


def _sandbox_owned(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Template entries: regular files, directories and symlinks only, owned by the
    sandbox's user (uid 1000 inside)."""
    if not (info.isfile() or info.isdir() or info.issym()):
        return None
    info.uid = info.gid = 1000
    info.uname = info.gname = "sandbox"
    return info


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


__all__ = ["TaskRequest", "TaskService", "approval_json", "approval_status", "wire_status"]

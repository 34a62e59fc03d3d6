"""Sandboxes as users see them: who may reach which, their lifecycle, and their store rows.

One sandbox is one row in ``sandboxes`` and, while it runs, one sandbox in a backend.
States: ``pending`` (row written, backend starting it) → ``running`` → ``terminating``
(being destroyed) → ``terminated``; or ``failed`` (it did not start, it stopped on its
own, or the daemon died under it). The row is written before the backend is asked, so a
daemon killed at any moment leaves a row that the next start finds and settles.

Reach: an admin reaches every sandbox; a user their own; an API key limited to named
sandboxes only those, at the level it was given (``read`` to look, ``write`` to exec,
attach and move files, ``admin`` to delete). Anything out of reach is ``NotFound``,
exactly like a sandbox that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import re
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from stockade.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    StockadeError,
    Unavailable,
)
from stockade.events import EventBus
from stockade.metrics import Metrics
from stockade.sandbox.base import (
    ExecEvent,
    ExecResult,
    FileEntry,
    IsADirectory,
    LogLine,
    NetworkPolicy,
    Output,
    Resources,
    SandboxBackend,
    SandboxError,
    SandboxSpec,
    Stats,
    collect,
)
from stockade.sandbox.quantities import parse_bytes, parse_cpu
from stockade.sandbox.workspace import HOME
from stockade.services.principal import Permission, Principal
from stockade.settings import Settings
from stockade.store import Store
from stockade.store.records import Sandbox
from stockade.store.sandboxes import LIVE, LabelRequirement

logger = logging.getLogger("stockade.sandboxes")

STATUSES = ("pending", "running", "terminating", "terminated", "failed")
# Seed 004's isolation.runtime_class (and ours, on tasks and jobs) -> a backend's name.
# Absent or empty means the daemon's default (STOCKADE_BACKEND).
RUNTIME_CLASSES = {
    "runc": "namespace",
    "namespace": "namespace",
    "gvisor": "gvisor",
    "runsc": "gvisor",
}
EXEC_OUTPUT_LIMIT = 16 << 20
DELETE_GRACE = 5.0
REAP_INTERVAL = 1.0
ARCHIVE_TIMEOUT = 300.0
_LABEL_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class EnvironmentRequest:
    """What a caller asks for, in seed 004's terms; ``raw`` is the body as sent."""

    name: str
    image: str = "host"
    cpu: str | None = None
    memory: str | None = None
    storage: str | None = None
    timeout: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    command: Sequence[str] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    runtime_class: str | None = None
    allow_internet: bool = False
    allowed_egress_cidrs: Sequence[str] = ()
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None
    read_only_root_filesystem: bool = False
    allow_privilege_escalation: bool | None = None
    privileged: bool | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    """What a running sandbox uses now; cpu is averaged since the previous look."""

    cpu_millicores: float
    memory_bytes: int
    disk_bytes: int | None
    processes: int


def parse_selector(text: str | None) -> list[LabelRequirement]:
    """A Kubernetes-style equality selector: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``,
    joined by commas."""
    if not text:
        return []
    requirements: list[LabelRequirement] = []
    for term in (t.strip() for t in text.split(",")):
        match = re.fullmatch(r"(!?)([^=!\s]+)(?:\s*(==|=|!=)\s*(\S*))?", term)
        if not match or (match.group(1) and match.group(3)):
            raise InvalidInput(
                f"Invalid label selector term {term!r}; use key=value, key!=value, key or !key."
            )
        negate, key, op, value = match.groups()
        if not _LABEL_KEY.fullmatch(key) or (
            value is not None and not _LABEL_VALUE.fullmatch(value)
        ):
            raise InvalidInput(f"Invalid label selector term {term!r}: not a valid label.")
        if op is None:
            requirements.append(LabelRequirement(key, "absent" if negate else "exists"))
        else:
            requirements.append(LabelRequirement(key, "!=" if op == "!=" else "=", value))
    return requirements


def sandbox_path(path: str | None) -> str:
    """A path inside the sandbox, relative ones from its home. ``..`` is refused."""
    if not path or "\0" in path:
        raise InvalidInput("path is required: the file's path inside the sandbox.")
    if ".." in path.split("/"):
        raise InvalidInput(f"path {path!r} may not contain '..'.")
    full = path if path.startswith("/") else f"{HOME}/{path}"
    return posixpath.normpath(full)


class SandboxService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        backends: Mapping[str, SandboxBackend],
        events: EventBus,
        metrics: Metrics,
        *,
        default: str,
        instance: str | None = None,
    ) -> None:
        if default not in backends:
            raise ValueError(f"the default backend {default!r} is not among {sorted(backends)}")
        self._settings = settings
        self._instance = instance
        self._store = store
        self._backends = dict(backends)
        self._default = default
        self._events = events
        self._metrics = metrics
        self._live: dict[str, Sandbox] = {}  # running sandboxes of this daemon
        self._expiry: dict[str, float] = {}  # id -> monotonic deadline
        self._cpu_samples: dict[str, tuple[int, float]] = {}  # id -> (cpu ns, monotonic)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ending: dict[str, asyncio.Task[None]] = {}  # deletes being carried out
        self._reaper: asyncio.Task[None] | None = None
        # Why each backend cannot run sandboxes here (None: it can).
        self._unavailable: dict[str, str | None] = dict.fromkeys(backends, "not started")
        self._creating = 0
        self._prepared: set[str] = set()  # backends started
        self._preparing = asyncio.Lock()
        for backend in backends.values():
            backend.on_lost = self._on_lost

    @property
    def backend_name(self) -> str:
        """The default backend's name."""
        return self._default

    def backend_status(self) -> str:
        """What ``/health`` says about the default backend."""
        return f"{self._default}: {self.backends_status()[self._default]}"

    def backends_status(self) -> dict[str, str]:
        """Each backend's name and "ok", or why it is unavailable."""
        return {
            name: "ok" if reason is None else f"unavailable ({reason})"
            for name, reason in self._unavailable.items()
        }

    def _of(self, sandbox: Sandbox | str) -> SandboxBackend:
        """The backend that runs (or ran) a sandbox: a record's, or a live id's."""
        if isinstance(sandbox, str):
            live = self._live.get(sandbox)
            name = live.backend if live is not None else self._default
        else:
            name = sandbox.backend
        return self._backends.get(name) or self._backends[self._default]

    def choose(self, runtime_class: str | None) -> str:
        """The backend for ``runtime_class`` (absent: the default); InvalidInput for one
        this daemon does not offer, Unavailable for one that cannot run here."""
        if not runtime_class:
            name = self._default
        else:
            name = RUNTIME_CLASSES.get(runtime_class, "")
            if name not in self._backends:
                offered = ", ".join(
                    f"'{c}'" for c, n in RUNTIME_CLASSES.items() if n in self._backends
                )
                raise InvalidInput(
                    f"Unknown runtime_class {runtime_class!r}; this daemon offers {offered} "
                    f"(or leave it out for its default, '{self._default}')."
                )
        reason = self._unavailable[name]
        if reason is not None:
            raise Unavailable(f"Sandboxes are unavailable on the {name} backend: {reason}")
        return name

    async def active_count(self) -> int:
        return len(self._live)

    # Start and stop.

    async def start(self) -> None:
        """Prepare the default backend, and any other that a previous run left something
        of; settle sandboxes a previous run left; start the reaper. Another backend is
        prepared when its first sandbox is made."""
        leftover = await self._store.sandboxes.live(instance=self._instance)
        for name, backend in self._backends.items():
            reason = backend.unavailable_reason()
            self._unavailable[name] = reason
            if reason is not None:
                log = logger.warning if name == self._default else logger.info
                log("the %s backend is unavailable: %s", name, reason)
                continue
            known = [r.id for r in leftover if r.backend == name]
            if name != self._default and not known and not backend.has_remains():
                continue
            if await self._prepare(name):
                recovery = await backend.recover(known)
                if recovery.cleaned:
                    logger.info("removed what %d %s sandboxes left", len(recovery.cleaned), name)

        now = datetime.now(UTC)
        # A delete that was answered (the row says terminating) ends terminated, as its
        # caller was told; the others were running when the daemon died.
        deleted = [r for r in leftover if r.status == "terminating"]
        await self._store.sandboxes.mark_many(
            [r.id for r in deleted],
            status="terminated",
            reason="Deleted; the daemon stopped before it finished, and its restart did.",
            at=now,
        )
        failed = [r for r in leftover if r.status != "terminating"]
        await self._store.sandboxes.mark_many(
            [r.id for r in failed],
            status="failed",
            reason="The daemon stopped while this sandbox ran; it was cleaned up.",
            at=now,
        )
        for record in deleted:
            self._publish("sandbox.terminated", _replace(record, status="terminated"))
        for record in failed:
            self._publish("sandbox.failed", record)
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _prepare(self, name: str) -> bool:
        """Start a backend once; False (and it is unavailable) when it cannot start."""
        async with self._preparing:
            if name in self._prepared:
                return True
            try:
                await self._backends[name].start()
            except (SandboxError, OSError) as exc:
                self._unavailable[name] = str(exc)
                logger.warning("the %s backend did not start: %s", name, exc)
                return False
            self._prepared.add(name)
            return True

    async def stop(self) -> None:
        """Destroy this daemon's sandboxes: nothing of them outlives it."""
        if self._reaper:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        # Failures and deletes already under way: let them finish and be recorded.
        # (Cancelled, a failure's tear-down stopped between forgetting its sandbox and
        # releasing it, so neither it nor the close below released its descriptors, and
        # its row kept reading `running`.)
        under_way = [*self._tasks, *self._ending.values()]
        if under_way:
            await asyncio.wait(under_way, timeout=DELETE_GRACE + 5)
        ids = list(self._live)
        for name in self._prepared:
            await self._backends[name].close()
        await self._store.sandboxes.mark_many(
            ids, status="terminated", reason="The daemon stopped.", at=datetime.now(UTC)
        )
        self._live.clear()

    # Reach.

    def _visible(self, principal: Principal, record: Sandbox) -> bool:
        if principal.permissions is not None and record.id not in principal.permissions:
            return False
        return principal.is_admin or record.owner_id == principal.user_id

    async def _reach(self, principal: Principal, sandbox_id: str, needed: Permission) -> Sandbox:
        record = self._live.get(sandbox_id) or await self._store.sandboxes.get(sandbox_id)
        if record is None or not self._visible(principal, record):
            raise NotFound(f"Environment {sandbox_id} not found.")
        if not principal.can(sandbox_id, needed):
            granted = (principal.permissions or {})[sandbox_id]
            raise PermissionDenied(
                f"This API key has {granted.value} permission on {sandbox_id}; "
                f"{needed.value} is needed."
            )
        return record

    async def _running(self, principal: Principal, sandbox_id: str, needed: Permission) -> Sandbox:
        record = await self._reach(principal, sandbox_id, needed)
        if record.status != "running" or sandbox_id not in self._live:
            raise Conflict(f"Environment {sandbox_id} is {record.status}, not running.")
        return record

    # Queries.

    async def get(self, principal: Principal, sandbox_id: str) -> Sandbox:
        return await self._reach(principal, sandbox_id, Permission.READ)

    async def page(
        self,
        principal: Principal,
        *,
        status: str | None = None,
        label: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Sandbox], int]:
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"Unknown status {status!r}; use one of: {', '.join(STATUSES)}.")
        selector = parse_selector(label)
        return await self._store.sandboxes.page(
            **_scope(principal),
            statuses=[status] if status else None,
            selector=selector,
            limit=limit,
            offset=offset,
        )

    async def active(self, principal: Principal) -> list[Sandbox]:
        """The live sandboxes the caller reaches, oldest first."""
        records, _ = await self._store.sandboxes.page(
            **_scope(principal), statuses=LIVE, limit=10 * self._settings.sandbox_max
        )
        return sorted(records, key=lambda r: r.created_at)

    async def stats(self, record: Sandbox) -> Stats | None:
        """Current usage of a running sandbox, None otherwise."""
        if record.id not in self._live:
            return None
        try:
            return await self._of(record).stats(record.id)
        except (StockadeError, OSError):
            return None

    async def usage(self, record: Sandbox) -> Usage | None:
        stats = await self.stats(record)
        if stats is None:
            return None
        now = time.monotonic()
        before = self._cpu_samples.get(record.id)
        if before is not None and now - before[1] > 0.05:
            used, elapsed = stats.cpu_nanoseconds - before[0], now - before[1]
        else:
            started = record.started_at or record.created_at
            used, elapsed = stats.cpu_nanoseconds, (_now() - started).total_seconds()
        self._cpu_samples[record.id] = (stats.cpu_nanoseconds, now)
        return Usage(
            cpu_millicores=max(0.0, used / max(elapsed, 1e-3) / 1e6),
            memory_bytes=stats.memory_bytes,
            disk_bytes=stats.disk_bytes,
            processes=stats.pids,
        )

    # Create and destroy.

    def _spec(self, sandbox_id: str, request: EnvironmentRequest) -> SandboxSpec:
        settings = self._settings
        if request.allow_privilege_escalation or request.privileged:
            raise InvalidInput("Privilege escalation and privileged sandboxes are never allowed.")
        if request.run_as_non_root and request.run_as_user == 0:
            raise InvalidInput("run_as_user 0 contradicts run_as_non_root.")
        for name in request.env:
            if not _ENV_NAME.fullmatch(name):
                raise InvalidInput(f"env: {name!r} is not a valid variable name.")
        for key, value in request.labels.items():
            if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
                raise InvalidInput(f"labels: {key}={value} is not a valid label.")
        if request.command is not None and (not request.command or not request.command[0]):
            raise InvalidInput("command: give a program to run, or leave command out.")
        storage = parse_bytes(
            request.storage or settings.sandbox_storage, field="resources.storage"
        )
        most = parse_bytes(settings.sandbox_max_storage, field="STOCKADE_SANDBOX_MAX_STORAGE")
        if storage > most:
            raise InvalidInput(
                f"resources.storage: {request.storage} is more than the "
                f"{settings.sandbox_max_storage} this daemon allows."
            )
        return SandboxSpec(
            id=sandbox_id,
            image=request.image,
            resources=Resources(
                cpu_millicores=parse_cpu(request.cpu or settings.sandbox_cpu),
                memory_bytes=parse_bytes(
                    request.memory or settings.sandbox_memory, field="resources.memory"
                ),
                storage_bytes=storage,
                pids=settings.sandbox_pids,
            ),
            env=dict(request.env),
            command=tuple(request.command) if request.command else None,
            network=NetworkPolicy(
                allow_internet=request.allow_internet,
                allowed_egress_cidrs=tuple(request.allowed_egress_cidrs),
            ),
            read_only_root=request.read_only_root_filesystem,
            run_as_user=request.run_as_user,
            run_as_group=request.run_as_group,
        )

    async def create(self, principal: Principal, request: EnvironmentRequest) -> Sandbox:
        """Validate, record, start. Returns the row as it stands: ``running``, or
        ``failed`` with the reason when the backend could not start it."""
        if principal.permissions is not None:
            raise PermissionDenied(
                "This API key is limited to named environments and cannot create new ones."
            )
        timeout = self._settings.sandbox_timeout if request.timeout is None else request.timeout
        if timeout <= 0:
            raise InvalidInput("timeout must be a positive number of seconds.")
        sandbox_id = f"env-{secrets.token_hex(6)}"
        spec = self._spec(sandbox_id, request)
        backend = self.choose(request.runtime_class)
        if len(self._live) + self._creating >= self._settings.sandbox_max:
            raise Unavailable(
                f"This daemon already runs its maximum of {self._settings.sandbox_max} sandboxes."
            )
        now = datetime.now(UTC)
        record = Sandbox(
            id=sandbox_id,
            owner_id=principal.user_id,
            name=request.name,
            image=request.image,
            backend=backend,
            status="pending",
            status_reason=None,
            spec=dict(request.raw),
            timeout_seconds=timeout,
            created_at=now,
            started_at=None,
            finished_at=None,
            expires_at=now + timedelta(seconds=timeout),
            spawn_time_ms=None,
            labels=dict(request.labels),
            instance=self._instance,
        )
        self._creating += 1
        try:
            # Shielded: a caller that goes away must not leave a half-made sandbox.
            return await asyncio.shield(self._start(record, spec))
        finally:
            self._creating -= 1

    async def _start(self, record: Sandbox, spec: SandboxSpec) -> Sandbox:
        """Start the sandbox, then write its row once, as running or failed. (Its row is
        not needed before: a sandbox is never acknowledged before it runs, and whatever
        a crash in between leaves on the host, ``recover`` removes.)"""
        backend = self._of(record)
        try:
            if record.backend not in self._prepared and not await self._prepare(record.backend):
                raise SandboxError(self._unavailable[record.backend] or "it did not start")
            info = await backend.create(spec)
        except (SandboxError, OSError) as exc:
            logger.error("sandbox %s did not start: %s", record.id, exc)
            failed = _replace(
                record,
                status="failed",
                status_reason=f"The sandbox did not start: {exc}",
                finished_at=_now(),
            )
            await self._store.sandboxes.create(failed)
            self._publish("sandbox.failed", failed)
            return failed
        running = _replace(
            record,
            status="running",
            started_at=info.created_at,
            spawn_time_ms=round(info.spawn_time_ms, 3),
        )
        try:
            await self._store.sandboxes.create(running)
        except BaseException:
            await backend.destroy(record.id)
            raise
        self._live[record.id] = running
        self._expiry[record.id] = time.monotonic() + record.timeout_seconds
        self._metrics.observe_spawn(backend.name, info.spawn_time_ms / 1000)
        self._count(backend.name)
        self._publish("sandbox.running", running)
        return running

    async def reassign(
        self,
        principal: Principal,
        sandbox_id: str,
        *,
        name: str,
        labels: Mapping[str, str],
        seconds: int,
    ) -> Sandbox:
        """Give a running sandbox a new name and labels, and ``seconds`` more from
        now (a warm job runner, started before its job was known, taken for a job)."""
        record = await self._running(principal, sandbox_id, Permission.WRITE)
        now = _now()
        expires_at = now + timedelta(seconds=seconds)
        lifetime = int((expires_at - record.created_at).total_seconds()) + 1
        await self._store.sandboxes.reassign(
            sandbox_id, name=name, labels=labels, timeout_seconds=lifetime, expires_at=expires_at
        )
        updated = _replace(
            record, name=name, labels=dict(labels), timeout_seconds=lifetime, expires_at=expires_at
        )
        if sandbox_id in self._live:
            self._live[sandbox_id] = updated
            self._expiry[sandbox_id] = time.monotonic() + seconds
        self._publish("sandbox.updated", updated)
        return updated

    async def delete(self, principal: Principal, sandbox_id: str, *, force: bool = False) -> None:
        """Destroy a sandbox, gracefully unless ``force``; its row stays, terminated.

        The answer does not wait for the host to be cleaned. It comes once the row says
        ``terminating`` and, with ``force``, every process of the sandbox has been sent
        SIGKILL (nothing in it runs again); without, once SIGTERM has been sent and the
        grace period begun. Reaping, unmounting and removing the cgroup then finish in
        the background, and the row says ``terminated`` when nothing is left. Deleting
        one that is terminating changes nothing; deleting one that has ended removes
        what is left of it (its logs)."""
        record = await self._reach(principal, sandbox_id, Permission.ADMIN)
        if record.status not in LIVE:
            await self._of(record).destroy(record.id)
            return
        if record.id in self._ending:
            return
        await self._store.sandboxes.update(record.id, only_from=list(LIVE), status="terminating")
        record = self._live[record.id] = _replace(record, status="terminating")
        self._expiry.pop(record.id, None)
        grace = 0.0 if force else DELETE_GRACE
        if not grace:
            self._of(record).kill(record.id)
        task = asyncio.get_running_loop().create_task(
            self._destroy(record, "Deleted.", grace=grace)
        )
        self._ending[record.id] = task
        task.add_done_callback(lambda _: self._ending.pop(record.id, None))

    async def settled(self) -> None:
        """Wait until every delete already answered has finished cleaning up."""
        while self._ending:
            await asyncio.gather(*list(self._ending.values()), return_exceptions=True)

    async def _destroy(self, record: Sandbox, reason: str, *, grace: float = 0.0) -> None:
        """Destroy the backend's sandbox and record it terminated; answer when both are
        done. While it runs the daemon's own view says ``terminating``.

        The row is written while the backend waits for the kernel to take the sandbox's
        namespaces down, not after: the two overlap. A crash in between leaves either a
        row that says running (settled as failed at the next start) or one that says
        terminated with remains on the host, which the next start's recovery removes."""
        if record.status not in LIVE:
            await self._of(record).destroy(record.id, grace=grace)
            return
        self._live[record.id] = _replace(record, status="terminating")
        try:
            destroyed, recorded = await asyncio.gather(
                self._of(record).destroy(record.id, grace=grace),
                self._store.sandboxes.update(
                    record.id,
                    only_from=list(LIVE),
                    status="terminated",
                    status_reason=reason,
                    finished_at=_now(),
                ),
                return_exceptions=True,
            )
        finally:
            self._forget(record.id)
        self._publish("sandbox.terminated", _replace(record, status="terminated"))
        for outcome in (destroyed, recorded):
            if isinstance(outcome, BaseException):
                raise outcome

    def _forget(self, sandbox_id: str) -> None:
        record = self._live.pop(sandbox_id, None)
        self._expiry.pop(sandbox_id, None)
        self._cpu_samples.pop(sandbox_id, None)
        if record is not None:
            self._count(record.backend)

    def _count(self, backend: str) -> None:
        live = sum(1 for r in self._live.values() if r.backend == backend)
        self._metrics.active_sandboxes.labels(backend).set(live)

    def _on_lost(self, sandbox_id: str, reason: str) -> None:
        """A sandbox stopped by itself (its agent died): fail it and clean up."""
        record = self._live.get(sandbox_id)
        if record is None or record.status == "terminating":
            return
        self._forget(sandbox_id)
        self._spawn(self._fail(record, f"The sandbox stopped unexpectedly: {reason}"))

    async def _fail(self, record: Sandbox, reason: str) -> None:
        await self._of(record).destroy(record.id)
        await self._store.sandboxes.update(
            record.id,
            only_from=list(LIVE),
            status="failed",
            status_reason=reason,
            finished_at=_now(),
        )
        self._publish("sandbox.failed", _replace(record, status="failed"))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reap(self) -> None:
        """Destroy sandboxes whose ``timeout`` has passed."""
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            now = time.monotonic()
            for sandbox_id in [i for i, deadline in self._expiry.items() if deadline <= now]:
                record = self._live.get(sandbox_id)
                if record is not None:
                    try:
                        await self._destroy(record, "Its timeout passed.")
                    except Exception:
                        logger.exception("the reaper could not destroy %s", sandbox_id)

    # Inside a sandbox.

    async def exec(
        self,
        principal: Principal,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        timeout: float,  # noqa: ASYNC109 - the command's limit, not this call's
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> ExecResult:
        record = await self._running(principal, sandbox_id, Permission.WRITE)
        _check_command(argv)
        events = self._of(record).exec(
            sandbox_id, list(argv), env=env, cwd=cwd, timeout=timeout, stdin=stdin
        )
        try:
            return await collect(events, limit=EXEC_OUTPUT_LIMIT)
        except (Conflict, SandboxError) as exc:
            raise Conflict(f"Environment {sandbox_id} stopped during the command.") from exc

    async def attach(
        self,
        principal: Principal,
        sandbox_id: str,
        argv: Sequence[str],
        stdin: AsyncIterator[bytes],
    ) -> AsyncGenerator[ExecEvent, None]:
        """An interactive process (a shell by default) fed from ``stdin``."""
        record = await self._running(principal, sandbox_id, Permission.WRITE)
        _check_command(argv)
        return self._of(record).exec(sandbox_id, list(argv), stdin=stdin)

    async def logs(
        self, principal: Principal, sandbox_id: str, *, tail: int | None, follow: bool
    ) -> AsyncIterator[LogLine]:
        record = await self._reach(principal, sandbox_id, Permission.READ)
        return self._of(record).logs(
            sandbox_id, tail=tail, follow=follow and sandbox_id in self._live
        )

    async def download(
        self, principal: Principal, sandbox_id: str, path: str
    ) -> bytes | list[FileEntry]:
        """The file at ``path``, or the entries of the directory there."""
        backend = self._of(await self._running(principal, sandbox_id, Permission.WRITE))
        target = sandbox_path(path)
        try:
            return await backend.read_file(
                sandbox_id, target, limit=self._settings.max_upload_bytes
            )
        except IsADirectory:
            return await backend.list_files(sandbox_id, target)

    async def write_file(
        self, principal: Principal, sandbox_id: str, path: str, data: bytes, mode: int = 0o644
    ) -> str:
        record = await self._running(principal, sandbox_id, Permission.WRITE)
        target = sandbox_path(path)
        await self._of(record).write_file(sandbox_id, target, data, mode)
        return target

    # For other services (tasks, jobs), which act for a sandbox's owner themselves.

    def is_running(self, sandbox_id: str) -> bool:
        """Whether this daemon runs ``sandbox_id`` now (and is not destroying it)."""
        return sandbox_id in self._live and sandbox_id not in self._ending

    async def archive(self, sandbox_id: str, directory: str, dest: Path) -> int:
        """Write a tar of ``directory`` in the sandbox to ``dest`` on the host; returns its
        size. ``tar`` runs inside the sandbox, confined like any command, and its output
        is streamed to the file, so nothing in the sandbox is read by the daemon itself."""
        events = self._of(sandbox_id).exec(
            sandbox_id, ["tar", "-C", directory, "-cf", "-", "."], timeout=ARCHIVE_TIMEOUT
        )
        size = 0
        errors = bytearray()
        partial = dest.with_name(dest.name + ".partial")
        with partial.open("wb") as out:
            async for event in events:
                if isinstance(event, Output):
                    if event.stream == "stdout":
                        out.write(event.data)
                        size += len(event.data)
                    else:
                        errors += event.data[: 4096 - len(errors)]
                elif event.code != 0:
                    partial.unlink(missing_ok=True)
                    raise SandboxError(
                        f"tar of {directory} exited {event.code}: "
                        + errors.decode("utf-8", "replace").strip()
                    )
        partial.replace(dest)
        return size

    async def unarchive(self, sandbox_id: str, directory: str, source: Path) -> None:
        """Unpack the tar at ``source`` (made by ``archive``) into ``directory`` in the
        sandbox; ``tar`` runs inside it."""

        async def chunks() -> AsyncIterator[bytes]:
            with source.open("rb") as data:
                while chunk := data.read(1 << 16):
                    yield chunk

        events = self._of(sandbox_id).exec(
            sandbox_id,
            ["tar", "-C", directory, "-xf", "-"],
            stdin=chunks(),
            timeout=ARCHIVE_TIMEOUT,
        )
        result = await collect(events, limit=1 << 16)
        if result.exit_code != 0:
            raise SandboxError(
                f"unpacking into {directory} exited {result.exit_code}: "
                + result.stderr.decode("utf-8", "replace").strip()
            )

    def _publish(self, kind: str, record: Sandbox) -> None:
        self._events.publish(
            kind,
            {"id": record.id, "name": record.name, "status": record.status},
            owner=record.owner_id,
        )


def _scope(principal: Principal) -> dict[str, Any]:
    """The store's filter for the sandboxes ``principal`` reaches."""
    return {
        "owner_id": None if principal.is_admin else principal.user_id,
        "ids": None if principal.permissions is None else list(principal.permissions),
    }


def _check_command(argv: Sequence[str]) -> None:
    if not argv or not argv[0]:
        raise InvalidInput('command must name a program to run, such as ["ls", "-la"].')
    if any("\0" in arg for arg in argv):
        raise InvalidInput("command may not contain NUL bytes.")


def _now() -> datetime:
    return datetime.now(UTC)


def _replace(record: Sandbox, **changes: Any) -> Sandbox:
    return replace(record, **changes)

"""Job runners: a job's sandbox with its Python already started, waiting for the code.

A code job runs ``python3 -I -c RUNNER`` in a fresh sandbox. Making the sandbox and
starting Python in it is most of the time between a job being due and its code starting
(about 20 ms of 30, measured with ``bench/jobs.py``), so that part is done ahead:

- When a run of an owner's code job begins, one more runner is started for that owner in
  the background (``STOCKADE_JOBS_WARM_RUNNERS`` per owner and backend, as the job's
  ``runtime_class`` chooses; 0 turns this off). It is an
  ordinary sandbox of the owner's, named ``job-runner`` and labelled
  ``stockade.job-runner=warm``, whose runner waits on its stdin.
- The owner's next run takes it: the job's id and code are written to the waiting
  runner, then the sandbox is renamed ``job-<task_id>``, labelled ``stockade.job=<id>``
  and given the job's timeout. A runner nobody takes within ``STOCKADE_JOBS_WARM_IDLE``
  seconds is destroyed.
- A runner serves exactly one run, and its sandbox is deleted after it, so every run
  still starts from a fresh sandbox that no other code has touched. A run with no warm
  runner waiting starts one of its own, the same way, at once.

The run's timeout is kept here, not by the exec (which began before the job was known):
past it the sandbox is deleted, which kills everything in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

from stockade.errors import StockadeError
from stockade.sandbox.base import ExecEvent, ExecResult, Exit, Output
from stockade.sandbox.workspace import HOME
from stockade.services.principal import Principal
from stockade.services.sandboxes import EnvironmentRequest, SandboxService

logger = logging.getLogger("stockade.jobs")

Key = tuple[str, str]  # (owner's user id, backend name)

RESULT_PATH = "/tmp/.stockade-job-result.json"  # noqa: S108 - inside the sandbox
# Each stream keeps its last LOG_LIMIT bytes: a job's logs are the end of its output.
LOG_LIMIT = 256 * 1024
# Past its run's timeout, a sandbox has this long to go before it is destroyed anyway.
SANDBOX_MARGIN = 120

# Runs inside the sandbox with the image's Python. It waits for one line, the job's
# task_id, and then the job's code until end of input; calls execute() (awaiting it when
# it is a coroutine) and writes the result, or the traceback, as JSON to the path in
# argv[1]. The job's own prints go to stdout and stderr: its logs. json and traceback
# are imported only once they are needed: at the top they cost ~20 ms of a cold start.
RUNNER = r"""
import os, sys, time
os.environ["STOCKADE_JOB"] = sys.stdin.readline().rstrip("\n")
code = sys.stdin.read()
sys.stdin = open("/dev/null")
out = {"ok": False}
def _save():
    import json
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, default=repr)
try:
    scope = {"__name__": "__job__"}
    exec(compile(code, "<job>", "exec"), scope)
    out["started"] = time.time()
    value = scope["execute"]()
    if hasattr(value, "__await__"):
        import asyncio
        async def _wait():
            return await value
        value = asyncio.run(_wait())
    out["ok"] = True
    out["result"] = value if isinstance(value, dict) else {"value": value}
except BaseException as exc:
    import traceback
    # The traceback from the job's code on (the runner's own frame left out).
    tb = exc.__traceback__.tb_next if exc.__traceback__ else None
    out["error"] = "".join(traceback.format_exception(type(exc), exc, tb, limit=20))
    sys.stdout.flush()
    _save()
    sys.exit(1)
sys.stdout.flush()
_save()
"""


@dataclass(frozen=True, slots=True)
class JobLabel:
    """What a runner's sandbox is called once it serves a job."""

    task_id: str
    job_id: str
    timeout: int
    runtime_class: str | None = None

    @property
    def name(self) -> str:
        return f"job-{self.task_id}"[:253]

    @property
    def labels(self) -> dict[str, str]:
        return {"stockade.job": self.job_id}


class Runner:
    """One sandbox whose runner was started and waits for a job's code."""

    def __init__(self, principal: Principal, sandbox_id: str, *, warm: bool) -> None:
        self.principal = principal
        self.sandbox_id = sandbox_id
        self.warm = warm
        self._feed: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._streams = {"stdout": bytearray(), "stderr": bytearray()}
        self._exit: Exit | None = None
        self._reading: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None

    async def stdin(self) -> AsyncIterator[bytes]:
        while (chunk := await self._feed.get()) is not None:
            yield chunk

    def read(self, events: AsyncGenerator[ExecEvent, None]) -> None:
        self._reading = asyncio.get_running_loop().create_task(self._read(events))

    async def _read(self, events: AsyncGenerator[ExecEvent, None]) -> None:
        with contextlib.suppress(StockadeError):
            async for event in events:
                if isinstance(event, Output):
                    buffer = self._streams[event.stream]
                    buffer += event.data
                    if len(buffer) > LOG_LIMIT:
                        del buffer[:-LOG_LIMIT]
                else:
                    self._exit = event

    @property
    def waiting(self) -> bool:
        """Still started and waiting for code (a user may have deleted its sandbox)."""
        return self._reading is not None and not self._reading.done()

    def send(self, task_id: str, code: str) -> None:
        self._feed.put_nowait(f"{task_id}\n{code}".encode())
        self._feed.put_nowait(None)

    async def ended(self, timeout: float) -> bool:  # noqa: ASYNC109 - the run's own limit
        """Wait for the runner to exit; False when ``timeout`` passed first."""
        assert self._reading is not None
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._reading)
        except TimeoutError:
            return False
        return True

    async def stopped(self) -> None:
        """Wait until the output is read to its end (the sandbox is gone or exited)."""
        if self._reading is not None:
            await asyncio.shield(self._reading)

    def result(self, *, timed_out: bool) -> ExecResult:
        code = self._exit.code if self._exit is not None else 137
        return ExecResult(
            stdout=bytes(self._streams["stdout"]),
            stderr=bytes(self._streams["stderr"]),
            exit_code=code,
            timed_out=timed_out,
            duration_ms=0.0,
        )


class Runners:
    """Warm runners, per owner, and fresh ones when none waits."""

    def __init__(self, sandboxes: SandboxService, *, per_owner: int, idle: float) -> None:
        self._sandboxes = sandboxes
        self._per_owner = per_owner
        self._idle = idle
        # (owner, backend) -> the runners waiting, and how many are being started.
        self._warm: dict[Key, list[Runner]] = {}
        self._starting: dict[Key, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def waiting(self) -> list[str]:
        """The sandboxes of the warm runners waiting now."""
        return [r.sandbox_id for owned in self._warm.values() for r in owned]

    async def settled(self) -> None:
        """Wait until no runner is being started or destroyed in the background."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def take(self, principal: Principal, job: JobLabel) -> Runner:
        """A runner for this job: a warm one of its owner's, or one started now. Either
        way another is then warmed for the owner's next run."""
        key = (principal.user_id, self._sandboxes.choose(job.runtime_class))
        warm = self._warm.get(key, [])
        runner = None
        while warm and runner is None:
            candidate = warm.pop(0)
            if candidate._expiry is not None:
                candidate._expiry.cancel()
            if candidate.waiting and self._sandboxes.is_running(candidate.sandbox_id):
                runner = candidate
            else:
                self._spawn(self._discard(candidate))
        if runner is not None:
            self.refill(principal, job.runtime_class, key)
            return runner
        try:
            return await self._start(
                principal,
                name=job.name,
                labels=job.labels,
                lifetime=job.timeout + SANDBOX_MARGIN,
                runtime_class=job.runtime_class,
            )
        finally:
            # After the run's own start, which it would otherwise compete with.
            self.refill(principal, job.runtime_class, key)

    async def claim(self, runner: Runner, job: JobLabel) -> None:
        """Give a warm runner's sandbox the job's name, labels and timeout."""
        if runner.warm:
            await self._sandboxes.reassign(
                runner.principal,
                runner.sandbox_id,
                name=job.name,
                labels=job.labels,
                seconds=job.timeout + SANDBOX_MARGIN,
            )

    async def finish(self, runner: Runner) -> None:
        """Delete a runner's sandbox (shielded: a cancelled run still leaves nothing)."""
        await asyncio.shield(self._discard(runner))

    def refill(self, principal: Principal, runtime_class: str | None, key: Key) -> None:
        have = len(self._warm.get(key, [])) + self._starting.get(key, 0)
        if self._closed or have >= self._per_owner:
            return
        self._starting[key] = self._starting.get(key, 0) + 1
        self._spawn(self._warm_up(principal, runtime_class, key))

    async def drain(self) -> None:
        """Destroy every warm runner (the scheduler stopped, or the daemon is stopping)."""
        runners = [r for owned in self._warm.values() for r in owned]
        self._warm.clear()
        for runner in runners:
            if runner._expiry is not None:
                runner._expiry.cancel()
        await asyncio.gather(*(self._discard(r) for r in runners))

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.drain()

    async def _warm_up(self, principal: Principal, runtime_class: str | None, key: Key) -> None:
        runner = None
        try:
            runner = await self._start(
                principal,
                name="job-runner",
                labels={"stockade.job-runner": "warm"},
                lifetime=int(self._idle) + SANDBOX_MARGIN,
                runtime_class=runtime_class,
                warm=True,
            )
        except StockadeError as exc:
            logger.warning("a warm job runner for %s did not start: %s", key, exc)
        finally:
            self._starting[key] -= 1
            if not self._starting[key]:
                del self._starting[key]
        if runner is None:
            return
        if self._closed:
            await self._discard(runner)
            return
        self._warm.setdefault(key, []).append(runner)
        runner._expiry = asyncio.get_running_loop().call_later(
            self._idle, lambda: self._expire(key, runner)
        )

    def _expire(self, key: Key, runner: Runner) -> None:
        owned = self._warm.get(key, [])
        if runner in owned:
            owned.remove(runner)
            if not owned:
                del self._warm[key]
            self._spawn(self._discard(runner))

    async def _start(
        self,
        principal: Principal,
        *,
        name: str,
        labels: dict[str, str],
        lifetime: int,
        runtime_class: str | None,
        warm: bool = False,
    ) -> Runner:
        record = await self._sandboxes.create(
            principal,
            EnvironmentRequest(
                name=name,
                labels=labels,
                env={"OMNIMIND_WORKSPACE": HOME},
                timeout=lifetime,
                raw={"job_runner": True},
                runtime_class=runtime_class,
            ),
        )
        if record.status != "running":
            raise StockadeError(record.status_reason or "the job's sandbox did not start")
        runner = Runner(principal, record.id, warm=warm)
        try:
            events = await self._sandboxes.attach(
                principal, record.id, ["python3", "-I", "-c", RUNNER, RESULT_PATH], runner.stdin()
            )
        except BaseException:
            await self.finish(runner)
            raise
        runner.read(events)
        return runner

    async def _discard(self, runner: Runner) -> None:
        with contextlib.suppress(StockadeError):
            await self._sandboxes.delete(runner.principal, runner.sandbox_id, force=True)
        await runner.stopped()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


__all__ = ["RESULT_PATH", "RUNNER", "JobLabel", "Runner", "Runners"]

"""The test kit: settings and apps for tests, an in-process client, a daemon process.

It ships with the package so that tests of later parts, and users' own tests of code
built on Stockade, start from the same pieces.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import anyio
import httpx
from argon2 import PasswordHasher

from stockade.api.app import create_app
from stockade.errors import NotFound
from stockade.events import Event, Subscription
from stockade.sandbox.base import ExecResult, FileEntry
from stockade.services import Services
from stockade.services.passwords import Passwords
from stockade.settings import Settings

ADMIN_PASSWORD = "admin-password-for-tests"
JWT_SECRET = "stockade-test-secret-0123456789-abcdefghijklmnop"
# A client address inside the ASGI transport, so per-address rate limits have a key.
CLIENT = ("127.0.0.1", 40000)


def fast_passwords() -> Passwords:
    """argon2 with the cheapest parameters: the same code path, a thousand times faster."""
    return Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


def make_settings(home: Path, **overrides: Any) -> Settings:
    """Settings for a test: a private home, a known admin password and JWT secret."""
    values: dict[str, Any] = {
        "home": home,
        "admin_password": ADMIN_PASSWORD,
        "jwt_secret": JWT_SECRET,
        # No warm pool unless a test asks: its sandboxes would be extra processes,
        # cgroups and mounts in tests that count them.
        "sandbox_pool": 0,
    }
    values.update(overrides)
    return Settings(**values)


class ManualClock:
    """A ``Clock`` for the job scheduler that moves only when a test moves it.

    ``now()`` is an aware UTC datetime (``set`` or ``advance`` it); ``local`` converts to
    the fixed zone given here (UTC by default), never the host's, so sleep hours and cron
    times do not depend on the machine the tests run on."""

    def __init__(self, at: datetime, *, tz: tzinfo = UTC) -> None:
        self.tz = tz
        self._now = _aware_utc(at)

    def now(self) -> datetime:
        return self._now

    def local(self, at: datetime) -> datetime:
        return at.astimezone(self.tz)

    def set(self, at: datetime) -> None:
        self._now = _aware_utc(at)

    def advance(self, seconds: float) -> datetime:
        """Move on by ``seconds``; returns the new now."""
        self._now += timedelta(seconds=seconds)
        return self._now


class FixedLoad:
    """A ``Load`` for the job scheduler whose CPU and memory use a test sets."""

    def __init__(self, cpu: float = 0.0, memory: float = 0.0) -> None:
        self.cpu = cpu
        self.memory = memory

    def cpu_percent(self) -> float:
        return self.cpu

    def memory_percent(self) -> float:
        return self.memory


def _aware_utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("ManualClock needs a timezone-aware datetime")
    return at.astimezone(UTC)


def basic_auth(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class TestApp:
    """An app whose lifespan is running, with an in-process client."""

    __test__ = False  # not a pytest test class

    app: Any
    services: Services
    client: httpx.AsyncClient

    async def login(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> str:
        response = await self.client.post(
            "/api/v1/auth/login", json={"username": username, "password": password}
        )
        response.raise_for_status()
        token: str = response.json()["token"]
        return token


@asynccontextmanager
async def running_app(settings: Settings, **services_kwargs: Any) -> AsyncIterator[TestApp]:
    """Build the app, run its start-up (migrations, first admin), and yield a client."""
    services_kwargs.setdefault("passwords", fast_passwords())
    services = Services.build(settings, **services_kwargs)
    app = create_app(settings, services=services)

    async def settle_deletes(response: httpx.Response) -> None:
        # A DELETE of a sandbox answers before the host is cleaned (the sandbox says
        # `terminating` meanwhile); tests look at the host right after one, so the
        # in-process client waits for that clean-up. Over real HTTP, poll the status.
        if response.request.method == "DELETE" and response.status_code == 204:
            await services.sandboxes.settled()

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=CLIENT)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://stockade.test",
            event_hooks={"response": [settle_deletes]},
        ) as c:
            yield TestApp(app=app, services=services, client=c)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Daemon:
    """A ``stockade daemon`` process started by ``daemon_process``."""

    process: subprocess.Popen[bytes]
    url: str
    home: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def daemon_process(
    home: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    scheme: str = "http",
) -> Iterator[Daemon]:
    """Start ``stockade daemon`` on a free loopback port; stop it on exit. With
    ``scheme="https"`` the health wait skips certificate checks (tests use self-signed)."""
    port = free_port()
    log = home.parent / f"{home.name}-daemon.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    environment |= {"STOCKADE_HOME": str(home), "STOCKADE_PORT": str(port)}
    environment |= env or {}
    command = [sys.executable, "-m", "stockade", "daemon", *args]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=environment, stdout=sink, stderr=subprocess.STDOUT)
    url = f"{scheme}://127.0.0.1:{port}"
    daemon = Daemon(process, url, home, log)
    try:
        _wait_healthy(daemon, timeout)
        yield daemon
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_healthy(daemon: Daemon, timeout: float) -> None:
    def healthy() -> bool:
        if daemon.process.poll() is not None:
            raise RuntimeError(
                f"daemon exited with {daemon.process.returncode}:\n{daemon.output()}"
            )
        try:
            response = httpx.get(f"{daemon.url}/health", timeout=1.0, verify=False)  # noqa: S501
        except httpx.TransportError:
            return False
        return response.status_code == 200

    if not wait_until(healthy, timeout=timeout):
        raise TimeoutError(f"daemon not healthy after {timeout} s:\n{daemon.output()}")


# Polling, for the facts that announce nothing: a process leaving /proc, a cgroup, mount
# or file descriptor going away, a port starting to answer. Whatever has an event (an
# exit, a message, a change on the event bus) is waited on through that event instead.


def wait_until(check: Callable[[], object], *, timeout: float, every: float = 0.05) -> bool:
    """Whether ``check()`` turns true within ``timeout`` seconds, looking every ``every``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


async def poll_until(check: Callable[[], Awaitable[object]], *, every: float = 0.02) -> None:
    """Return once an async ``check`` is true, looking every ``every`` seconds; bound
    it with ``anyio.fail_after``."""
    while not await check():  # noqa: ASYNC110 - what it polls has no event to wait on
        await anyio.sleep(every)


async def sandbox_event(
    events: Subscription, kind: str, sandbox_id: str, *, within: float = 10.0
) -> Event:
    """The next ``kind`` event (``sandbox.terminated``, ``sandbox.failed``…) about
    ``sandbox_id`` on a subscription opened before the action that causes it; fails the
    wait after ``within`` seconds."""
    with anyio.fail_after(within):
        async for event in events:
            if event.type == kind and event.data.get("id") == sandbox_id:
                return event
    raise AssertionError(f"the event stream ended before {kind} of {sandbox_id}")


async def task_event(
    events: Subscription, kinds: str | tuple[str, ...], task_id: str, *, within: float = 15.0
) -> Event:
    """The next event of one of ``kinds`` (``task.completed``, ``approval.requested``…)
    about ``task_id``, on a subscription opened before the action that causes it."""
    wanted = (kinds,) if isinstance(kinds, str) else kinds
    with anyio.fail_after(within):
        async for event in events:
            about = event.data.get("task_id", event.data.get("id"))
            if event.type in wanted and about == task_id:
                return event
    raise AssertionError(f"the event stream ended before {wanted} of {task_id}")


def old_files(directory: Path, names: dict[str, int]) -> Path:
    """Write ``names`` (relative path -> age in days) under ``directory``, each with a few
    bytes and its modification time that many days ago; returns ``directory`` (a task
    template, say)."""
    now = time.time()
    for name, age in names.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name}\n" * 8)
        when = now - age * 86400
        os.utime(path, (when, when))
    return directory


class FakeWorkspace:
    """A stand-in for a task's sandbox in unit tests of the agent loop: it records every
    command and file operation, runs nothing, and answers from ``files``."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files = dict(files or {})
        self.commands: list[list[str]] = []

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        timeout: float,  # noqa: ASYNC109 - the command's limit, not this call's
    ) -> ExecResult:
        self.commands.append(list(argv))
        return ExecResult(b"", b"", 0, False, 0.1)

    async def read(self, path: str, *, limit: int) -> bytes:
        if path not in self.files:
            raise NotFound(f"{path} does not exist")
        return self.files[path][:limit]

    async def write(self, path: str, data: bytes) -> None:
        self.files[path] = data

    async def listing(self, path: str) -> list[FileEntry]:
        return []


def sse_sandbox_event(lines: Iterator[str], kind: str, sandbox_id: str) -> dict[str, Any]:
    """The same over a daemon's ``GET /api/v1/events`` stream (its ``iter_lines()``,
    opened before the action, with a read timeout as the bound)."""
    for line in lines:
        if line.startswith("data:"):
            event: dict[str, Any] = json.loads(line[5:])
            if event["type"] == kind and event["data"].get("id") == sandbox_id:
                return event
    raise AssertionError(f"the event stream ended before {kind} of {sandbox_id}")

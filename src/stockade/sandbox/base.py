"""The one interface every sandbox backend implements.

A sandbox is long-lived: ``create`` starts it, ``exec`` enters the running sandbox (it
never starts a new one), processes started by one exec keep running until ``destroy``,
and ``destroy`` leaves nothing behind on the host: no process, cgroup, mount, network
namespace or file. Backends know nothing of HTTP, users or the store; the sandbox service
decides who may do what and remembers what exists.

The interface is deliberately narrow (STYLE habit 2). Git, LLM or HTTP logic never enters
it; a backend that cannot do something raises ``Unsupported``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from stockade.errors import InvalidInput, StockadeError

Stream = Literal["stdout", "stderr"]


class SandboxError(StockadeError):
    """The sandbox backend could not do this."""


class Unsupported(SandboxError):
    """This backend does not support that operation."""


class IsADirectory(InvalidInput):
    """The path names a directory where a file was expected."""


@dataclass(frozen=True, slots=True)
class Resources:
    """Limits; None means the backend's default (not unlimited, for pids)."""

    cpu_millicores: int | None = None
    memory_bytes: int | None = None
    storage_bytes: int | None = None
    pids: int | None = None


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """No network at all unless ``allow_internet`` or an egress CIDR says otherwise."""

    allow_internet: bool = False
    allowed_egress_cidrs: tuple[str, ...] = ()

    @property
    def isolated(self) -> bool:
        return not self.allow_internet and not self.allowed_egress_cidrs


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What to start. ``command``, when given, is the sandbox's long-running main process
    whose output becomes its logs; without one the sandbox idles until destroyed."""

    id: str
    image: str = "host"
    resources: Resources = field(default_factory=Resources)
    env: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    read_only_root: bool = False
    run_as_user: int | None = None
    run_as_group: int | None = None


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """A started sandbox, as its backend reports it."""

    id: str
    backend: str
    created_at: datetime
    spawn_time_ms: float


@dataclass(frozen=True, slots=True)
class Output:
    """A chunk of an exec's output, in the order the process wrote it."""

    stream: Stream
    data: bytes


@dataclass(frozen=True, slots=True)
class Exit:
    """How an exec ended: its exit code (128 + n when killed by signal n), and whether
    the timeout killed its whole process tree."""

    code: int
    timed_out: bool = False


ExecEvent = Output | Exit


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    is_dir: bool
    mode: int
    modified: datetime


@dataclass(frozen=True, slots=True)
class LogLine:
    timestamp: datetime
    stream: Stream
    message: str


@dataclass(frozen=True, slots=True)
class Stats:
    cpu_nanoseconds: int
    memory_bytes: int
    pids: int
    disk_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a backend found after a daemon restart."""

    adopted: tuple[str, ...] = ()
    cleaned: tuple[str, ...] = ()


class SandboxBackend(ABC):
    """A way to run sandboxes. Every method is safe to call concurrently for different
    sandboxes; an unknown ``sandbox_id`` raises ``stockade.errors.NotFound``."""

    name: str
    # Called with (sandbox id, reason) when a sandbox stops without being destroyed.
    on_lost: Callable[[str, str], None] | None = None

    async def start(self) -> None:  # noqa: B027 - optional for a backend
        """Prepare the host for this backend (directories, programs). Called before first
        use; raises ``SandboxError`` when ``unavailable_reason`` has an answer."""

    async def close(self) -> None:  # noqa: B027 - optional for a backend
        """Destroy every sandbox this backend runs: the daemon is stopping."""

    def has_remains(self) -> bool:
        """Whether a previous run may have left something of this backend on the host
        (a daemon starts and recovers such a backend at once; others when first used).
        Cheap; True when the backend cannot tell."""
        return True

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run on this host (e.g. "bwrap not installed"), or None
        when it can. Cheap; ``/health`` calls it."""

    @abstractmethod
    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Start a sandbox and return once it accepts ``exec``. On failure nothing of it
        is left behind, and ``InvalidInput`` names what was wrong with the spec."""

    @abstractmethod
    def exec(
        self,
        sandbox_id: str,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | AsyncIterator[bytes] | None = None,
    ) -> AsyncGenerator[ExecEvent, None]:
        """Run ``argv`` inside the running sandbox, yielding its output as it comes and
        then exactly one ``Exit``. The process sees only ``env`` (plus the sandbox's own
        environment), not the daemon's. Past ``timeout`` seconds its whole process tree
        is killed and ``Exit.timed_out`` is set. Processes it started in the background
        keep running until the sandbox is destroyed."""

    @abstractmethod
    async def read_file(self, sandbox_id: str, path: str, *, limit: int | None = None) -> bytes:
        """The file at ``path`` inside the sandbox. Paths are confined to the sandbox's
        root: ``..`` and symlinks cannot reach the host. A file over ``limit`` bytes
        raises ``PayloadTooLarge``."""

    @abstractmethod
    async def write_file(self, sandbox_id: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Create or replace the file at ``path`` inside the sandbox, with the same
        confinement as ``read_file``, owned by the sandbox's user."""

    @abstractmethod
    async def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        """The entries of the directory at ``path`` inside the sandbox."""

    @abstractmethod
    def logs(
        self, sandbox_id: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncIterator[LogLine]:
        """The output of the sandbox's ``command``: the last ``tail`` lines (all when
        None), then, with ``follow``, new lines as they come until the sandbox ends."""

    @abstractmethod
    async def stats(self, sandbox_id: str) -> Stats:
        """Current usage: cpu time, memory, processes, and the storage in use."""

    def kill(self, sandbox_id: str) -> None:  # noqa: B027 - optional for a backend
        """Send every process of the sandbox SIGKILL now, without waiting for them to end;
        ``destroy`` must still be called and removes the sandbox. A backend that cannot
        do this at once may do nothing here."""

    @abstractmethod
    async def destroy(self, sandbox_id: str, *, grace: float = 0.0) -> None:
        """Kill everything in the sandbox and remove every trace of it from the host.
        With ``grace``, its processes first get SIGTERM and that many seconds to end.
        Idempotent: destroying a sandbox that is already gone is not an error."""

    @abstractmethod
    async def recover(self, known: Iterable[str]) -> Recovery:
        """After a daemon restart: re-adopt the sandboxes in ``known`` that are still
        healthy, and remove every other trace this backend left on the host (sandboxes
        of a previous run the store no longer knows, or ones that cannot be re-adopted)."""


@dataclass(frozen=True, slots=True)
class ExecResult:
    """An exec's whole output, for callers that do not stream (seed 004's exec)."""

    stdout: bytes
    stderr: bytes
    exit_code: int
    timed_out: bool
    duration_ms: float


async def collect(events: AsyncIterator[ExecEvent], *, limit: int = 16 * 2**20) -> ExecResult:
    """Gather an exec's output, keeping at most ``limit`` bytes of each stream (the tail
    is dropped, never the exit code)."""
    started = time.perf_counter()
    buffers: dict[Stream, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    async for event in events:
        if isinstance(event, Output):
            buffer = buffers[event.stream]
            buffer += event.data[: max(0, limit - len(buffer))]
        else:
            return ExecResult(
                stdout=bytes(buffers["stdout"]),
                stderr=bytes(buffers["stderr"]),
                exit_code=event.code,
                timed_out=event.timed_out,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
    raise SandboxError("the exec ended without an exit status")

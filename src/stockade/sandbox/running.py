"""One running sandbox as the daemon holds it: its processes, cgroup, storage and log,
and the link to its agent (``docs/agent-protocol.md``).

The link reads the agent's stdout with the event loop's ``add_reader`` (no thread and no
task per sandbox), cuts it into frames and hands each to the channel it names; it writes
requests to the agent's stdin without blocking, buffering what the pipe does not take. A
channel whose reader falls behind pauses reading from the agent, so a sandbox cannot make
the daemon hold unbounded output. Bubblewrap's exit is noticed through a pidfd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from stockade.errors import Conflict
from stockade.sandbox import agentproto as proto
from stockade.sandbox.base import SandboxError, SandboxSpec
from stockade.sandbox.cgroups import SandboxCgroup
from stockade.sandbox.logbook import LogBook
from stockade.sandbox.workspace import Workspace

MAIN_CHANNEL = 1  # the sandbox's `command`, whose output is its log
READ_CHUNK = 256 * 1024
PAUSE_BYTES = 8 << 20  # stop reading from an agent whose output nobody is taking
RESUME_BYTES = 1 << 20

TIMEOUT = object()  # put on a channel: its timeout has passed
GIVE_UP = object()  # put on a channel: the agent did not answer a timeout's kill in time
LOST = object()  # put on every channel: the sandbox stopped


class Channel:
    __slots__ = ("id", "owner", "queue")

    def __init__(self, channel_id: int, owner: RunningSandbox) -> None:
        self.id = channel_id
        self.owner = owner
        self.queue: asyncio.Queue[object] = asyncio.Queue()

    def put(self, item: object) -> None:
        if isinstance(item, proto.Frame):
            self.owner.account_buffered(len(item.payload))
        self.queue.put_nowait(item)

    async def get(self) -> object:
        item = await self.queue.get()
        if isinstance(item, proto.Frame):
            self.owner.account_buffered(-len(item.payload))
        return item


@dataclass(eq=False)
class RunningSandbox:
    """One running sandbox, as the daemon holds it."""

    spec: SandboxSpec
    key: str  # its cgroup's and storage's name: its id, or a pool name if it was pooled
    process: subprocess.Popen[bytes]
    group: SandboxCgroup
    workspace: Workspace
    logbook: LogBook
    on_lost: Callable[[RunningSandbox, str], None]
    channels: dict[int, Channel] = field(default_factory=dict)
    hello: asyncio.Future[None] | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    alive: bool = True
    stopping: bool = False
    killed: bool = False  # its init has been sent SIGKILL
    next_channel: int = MAIN_CHANNEL + 1
    buffered: int = 0
    paused: bool = False
    main_exit: int | None = None
    _parser: proto.FrameParser = field(default_factory=proto.FrameParser)
    _out: bytearray = field(default_factory=bytearray)
    _errors: bytearray = field(default_factory=bytearray)
    _pidfd: int = -1

    def __post_init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.hello = loop.create_future()
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._in_fd = self.process.stdin.fileno()
        self._out_fd = self.process.stdout.fileno()
        self._err_fd = self.process.stderr.fileno()
        for fd in (self._in_fd, self._out_fd, self._err_fd):
            os.set_blocking(fd, False)
        loop.add_reader(self._out_fd, self._on_readable)
        loop.add_reader(self._err_fd, self._on_stderr)
        self._pidfd = os.pidfd_open(self.process.pid)
        loop.add_reader(self._pidfd, self._on_exit)

    # Channels.

    def open_channel(self, channel_id: int | None = None) -> Channel:
        if not self.alive:
            raise Conflict(f"Sandbox {self.spec.id} is not running.")
        if channel_id is None:
            channel_id = self.next_channel
            self.next_channel = self.next_channel % 0xFFFFFFF0 + 1
        channel = self.channels[channel_id] = Channel(channel_id, self)
        return channel

    def close_channel(self, channel: Channel) -> None:
        self.channels.pop(channel.id, None)
        while not channel.queue.empty():
            item = channel.queue.get_nowait()
            if isinstance(item, proto.Frame):
                self.account_buffered(-len(item.payload))

    def account_buffered(self, delta: int) -> None:
        self.buffered += delta
        if not self.alive:
            return
        loop = asyncio.get_running_loop()
        if not self.paused and self.buffered > PAUSE_BYTES:
            self.paused = True
            loop.remove_reader(self._out_fd)
        elif self.paused and self.buffered < RESUME_BYTES:
            self.paused = False
            loop.add_reader(self._out_fd, self._on_readable)

    # Writing to the agent.

    def send(self, data: bytes) -> None:
        if not self.alive:
            raise Conflict(f"Sandbox {self.spec.id} is not running.")
        if self._out:
            self._out += data
            return
        try:
            written = os.write(self._in_fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self.lose(f"the agent's input closed: {exc}")
            return
        if written < len(data):
            self._out += data[written:]
            self.drained.clear()
            asyncio.get_running_loop().add_writer(self._in_fd, self._on_writable)

    def pending_output(self) -> int:
        return len(self._out)

    def _on_writable(self) -> None:
        try:
            written = os.write(self._in_fd, self._out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lose(f"the agent's input closed: {exc}")
            return
        del self._out[:written]
        if not self._out:
            self.drained.set()
            asyncio.get_running_loop().remove_writer(self._in_fd)

    # Reading from the agent.

    def _on_readable(self) -> None:
        try:
            data = os.read(self._out_fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lose(f"cannot read from the agent: {exc}")
            return
        if not data:
            self.lose("the agent stopped")
            return
        try:
            frames = self._parser.feed(data)
        except proto.ProtocolError as exc:
            self.lose(str(exc))
            return
        for item in frames:
            self._dispatch(item)

    def _dispatch(self, item: proto.Frame) -> None:
        if item.channel == 0:
            if item.type == proto.HELLO and self.hello and not self.hello.done():
                self.hello.set_result(None)
            elif item.type == proto.FAULT:
                self.lose(f"the agent failed: {item.payload[:500].decode(errors='replace')}")
            return
        channel = self.channels.get(item.channel)
        if channel is not None:
            channel.put(item)

    def _on_stderr(self) -> None:
        try:
            data = os.read(self._err_fd, 4096)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self._err_fd)
            return
        self._errors += data
        del self._errors[:-4096]

    def diagnostics(self) -> str:
        return self._errors.decode(errors="replace").strip()

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        self.process.poll()
        self.exited.set()
        self.lose("the sandbox's processes ended")

    # Ending.

    def lose(self, reason: str) -> None:
        """The sandbox cannot be used any more: wake everyone who waits on it."""
        if not self.alive:
            return
        self.alive = False
        self.drained.set()
        loop = asyncio.get_running_loop()
        for fd in (self._out_fd, self._err_fd):
            loop.remove_reader(fd)
        loop.remove_writer(self._in_fd)
        if self.hello and not self.hello.done():
            self.hello.set_exception(SandboxError(reason))
            self.hello.exception()  # retrieved: whoever waited may have given up already
        for channel in list(self.channels.values()):
            channel.put(LOST)
        if not self.stopping:
            self.on_lost(self, reason)

    def release(self) -> None:
        """Close every descriptor; after the process has been reaped."""
        loop = asyncio.get_running_loop()
        if self._pidfd >= 0:
            if not self.exited.is_set():
                loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.logbook.close()

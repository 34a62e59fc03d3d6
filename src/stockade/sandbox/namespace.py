"""The ``namespace`` backend: bubblewrap, cgroups, seccomp and an agent inside each sandbox.

How one sandbox starts (``create``):

1. its storage: a size-capped tmpfs mounted under the run directory (``workspace.py``);
2. its cgroup in every hierarchy, with the memory, pids and cpu limits (``cgroups.py``);
3. ``stockade-agent launch`` (as root) joins the cgroup, drops to the sandbox account and
   ``exec``s bubblewrap with the launch profile (``bwrap.py``) and the seccomp program
   (``seccomp.py``); bubblewrap starts ``stockade-agent serve`` inside;
4. the agent says HELLO on its stdout, and the sandbox is running.

Everything later goes through the agent over its stdin and stdout
(``docs/agent-protocol.md``): exec, stdin, signals and files. ``destroy`` kills the
cgroup (``cgroup.kill``), reaps bubblewrap, removes the cgroup and unmounts the storage.

bubblewrap runs with ``--die-with-parent``: when the daemon dies, so do its sandboxes.
A restarted daemon therefore never re-adopts one; ``recover`` removes the cgroups and
storage they left, and the sandbox service marks them failed.

The ``Popen`` that starts bubblewrap must run on the event loop's thread: the kernel's
parent-death signal follows the *thread* that forked, and a worker thread that ends would
take the sandbox with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stockade.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    StorageFull,
)
from stockade.sandbox import agentproto as proto
from stockade.sandbox.base import (
    ExecEvent,
    Exit,
    FileEntry,
    IsADirectory,
    LogLine,
    Output,
    Recovery,
    Resources,
    SandboxBackend,
    SandboxError,
    SandboxInfo,
    SandboxSpec,
    Stats,
)
from stockade.sandbox.bwrap import (
    HOST_IMAGE_BINDS,
    HOST_IMAGE_LINKS,
    SANDBOX_USER,
    Account,
    Profile,
    command,
)
from stockade.sandbox.cgroups import (
    CgroupLayout,
    CgroupLimits,
    SandboxCgroup,
    list_sandbox_groups,
)
from stockade.sandbox.logbook import (
    LOG_BYTES_PER_SECOND,
    LOG_LINES_PER_SECOND,
    LogBook,
    first_lines,
    last_lines,
    read_log_file,
)
from stockade.sandbox.native import agent_binary
from stockade.sandbox.running import (
    GIVE_UP,
    LOST,
    MAIN_CHANNEL,
    RESUME_BYTES,
    TIMEOUT,
    RunningSandbox,
)
from stockade.sandbox.seccomp import bpf_program, program_fd
from stockade.sandbox.workspace import (
    BINDS,
    HOME,
    Workspace,
    is_mountpoint,
    mount_tmpfs,
    unmount,
)

logger = logging.getLogger("stockade.sandbox")

IMAGES = ("host",)
AGENT_PATH = "/.stockade/agent"
ALIAS_DIR = "/.stockade/bin"
SANDBOX_PATH = f"/usr/local/bin:/usr/bin:/bin:{ALIAS_DIR}"
# The host image has python3; scripts written for `python` (seed 004's) find it here.
ALIASES = {"python": "/usr/bin/python3", "pip": "/usr/bin/pip3"}
ETC_FILES = {
    "passwd": "root:x:0:0:root:/root:/bin/sh\n"
    "sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost\n",
    "hostname": "sandbox\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
}
# Copied from the host's /etc: what its /usr needs (the dynamic linker's cache) and the
# clock's zone; no accounts, no secrets. Debian's alternatives links are bound read-only.
HOST_ETC = ("ld.so.cache", "ld.so.conf", "localtime")
HOST_ALTERNATIVES = "/etc/alternatives"
HELLOTIMEOUT = 10.0
DEFAULT_STORAGE = 1 << 30
STORAGE_HEADROOM = 64 << 20
POOL_MEMORY = 256 << 20  # a pooled sandbox's memory limit until it is handed out
SPARE_NICE = 10  # a pool's spares start at background priority: requests go first
RUN_DIR_BYTES = 64 << 20  # the agent, /etc, and the sandboxes' mount points
EXITTIMEOUT = 5.0
KILL_GRACE = 5.0  # after a timeout's SIGKILL, how long to wait for the agent's EXIT
BASELINE_PIDS = 3  # bubblewrap's monitor, its init, and the agent


def storage_size(resources: Resources) -> int:
    """The size of a sandbox's tmpfs. Its pages are memory, charged to the sandbox: a
    tmpfs as large as the memory limit, once full, would leave no memory to run even
    `rm` in. So it is capped at the memory limit less 64 MiB (or half of it, for small
    limits), and the sandbox can always clean up after itself."""
    wanted = resources.storage_bytes or DEFAULT_STORAGE
    if resources.memory_bytes is None:
        return wanted
    memory = resources.memory_bytes
    return max(1 << 20, min(wanted, max(memory // 2, memory - STORAGE_HEADROOM)))


def instance_name(home: Path) -> str:
    """A short name for one daemon's state directory, so that two daemons on one host
    never clean up each other's sandboxes."""
    import hashlib

    return hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:10]


def _errno_error(number: int, path: str) -> Exception:
    if number == errno.ENOENT:
        return NotFound(f"No such file or directory in the sandbox: {path}")
    if number == errno.ENOTDIR:
        return NotFound(f"A parent of {path} is not a directory.")
    if number == errno.EISDIR:
        return IsADirectory(f"{path} is a directory.")
    if number == errno.ELOOP:
        return InvalidInput(f"{path} is a symbolic link; links are not followed.")
    if number == errno.EINVAL:
        return InvalidInput(f"{path} is not a regular file.")
    if number in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"The sandbox's user may not access {path}.")
    if number == errno.EROFS:
        return PermissionDenied(f"{path} is on a read-only file system.")
    if number in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull()
    if number == errno.EFBIG:
        return StorageFull(f"{path} is too large for the sandbox's storage.")
    return SandboxError(f"{path}: {os.strerror(number)}")


class NamespaceBackend(SandboxBackend):
    """bubblewrap + cgroups + seccomp + the in-sandbox agent."""

    name = "namespace"

    def __init__(
        self,
        run_dir: Path,
        state_dir: Path,
        *,
        instance: str,
        account: str = SANDBOX_USER,
        default_pids: int = 512,
        pool_size: int = 0,
    ) -> None:
        self._root = run_dir / instance
        self._sandboxes = self._root / "sandboxes"
        self._logs = state_dir / "logs"
        self._parent = f"stockade-{instance}"
        self._account_name = account
        self._default_pids = default_pids
        self._live: dict[str, RunningSandbox] = {}
        self._ready = False
        self._program = b""
        self._agent = self._root / "agent"
        self._account: Account | None = None
        self._layout: CgroupLayout | None = None
        self._alternatives: tuple[tuple[str, str], ...] = ()
        self._pool_size = pool_size
        self._pool: list[RunningSandbox] = []
        self._filler: asyncio.Task[None] | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawning: set[str] = set()  # keys of sandboxes being started
        self.on_lost: Callable[[str, str], None] | None = None

    # Set-up.

    def unavailable_reason(self) -> str | None:
        if os.geteuid() != 0:
            return (
                "the namespace backend needs the daemon to run as root (to mount and use cgroups)"
            )
        for program in ("bwrap",):
            if shutil.which(program) is None:
                return f"{program} is not installed: run `make install`"
        try:
            Account.lookup(self._account_name)
        except SandboxError as exc:
            return exc.message
        return cgroups_unavailable()

    async def start(self) -> None:
        """Prepare the run directory, the agent, the seccomp program and /etc."""
        if self._ready:
            return
        reason = self.unavailable_reason()
        if reason:
            raise SandboxError(reason)
        self._account = Account.lookup(self._account_name)
        self._layout = CgroupLayout.detect()
        self._program = await asyncio.to_thread(bpf_program)
        binary = await asyncio.to_thread(agent_binary)
        await asyncio.to_thread(self._mount_root)
        self._logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        staged = self._root / "agent.new"
        shutil.copyfile(binary, staged)
        staged.chmod(0o755)
        staged.replace(self._agent)
        etc = self._root / "etc"
        etc.mkdir(mode=0o755, exist_ok=True)
        for name, text in ETC_FILES.items():
            (etc / name).write_text(text)
            (etc / name).chmod(0o644)
        alternatives = await asyncio.to_thread(_copy_host_etc, etc)
        aliases = self._root / "bin"
        aliases.mkdir(mode=0o755, exist_ok=True)
        for name, target in ALIASES.items():
            link = aliases / name
            if not link.is_symlink():
                link.symlink_to(target)
        self._alternatives = ((HOST_ALTERNATIVES, HOST_ALTERNATIVES),) if alternatives else ()
        self._ready = True
        self._refill()

    async def close(self) -> None:
        """Destroy every sandbox this backend runs (the daemon is stopping), then remove
        the run directory and the cgroup parent: a stopped daemon leaves nothing."""
        self._closing = True
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filler
        pooled, self._pool = self._pool, []
        await asyncio.gather(*(self._teardown(live) for live in pooled))
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self.destroy(i) for i in list(self._live)))
        if self._ready and self._layout is not None:
            await asyncio.to_thread(self._remove_root, self._layout)
            self._ready = False
        self._closing = False

    def has_remains(self) -> bool:
        if self._root.exists():
            return True
        try:
            roots = CgroupLayout.detect().roots()
        except (OSError, SandboxError):
            return False
        return any((root / self._parent).exists() for root in roots)

    def _mount_root(self) -> None:
        """The run directory of this daemon is a small tmpfs of its own: the host's /run
        may be a disk (here it is ext4 mounted with ``discard``, where one rmdir takes
        4 ms). After a crash the old one is still mounted and is reused."""
        self._root.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        self._root.mkdir(mode=0o711, exist_ok=True)
        if not is_mountpoint(self._root):
            mount_tmpfs(self._root, size=RUN_DIR_BYTES, uid=0, gid=0, mode=0o711)
        self._sandboxes.mkdir(mode=0o711, exist_ok=True)

    def _remove_root(self, layout: CgroupLayout) -> None:
        for name in list_sandbox_groups(layout, self._parent):
            self._remove_remains(name, None, None)
        for root in layout.roots():
            with contextlib.suppress(OSError):
                (root / self._parent).rmdir()
        if self._sandboxes.is_dir():
            for leftover in self._sandboxes.iterdir():
                Workspace(leftover).destroy()
        with contextlib.suppress(OSError):
            unmount(self._root)
        shutil.rmtree(self._root, ignore_errors=True)

    def live_ids(self) -> list[str]:
        return list(self._live)

    # The interface.

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        await self.start()
        if spec.image not in IMAGES:
            raise InvalidInput(
                f"Unknown image {spec.image!r}; the images available are: {', '.join(IMAGES)}."
            )
        if not spec.network.isolated:
            raise InvalidInput(
                "This daemon's namespace backend gives sandboxes no network; egress "
                "(allow_internet, allowed_egress_cidrs) is not available yet."
            )
        if spec.id in self._live:
            raise Conflict(f"Sandbox {spec.id} exists.")
        started = time.perf_counter()
        live = self._take_pooled(spec)
        if live is None:
            live = await self._spawn(spec, spec.id)
        if spec.id in self._live:  # the same id created twice at once
            await self._teardown(live)
            raise Conflict(f"Sandbox {spec.id} exists.")
        self._live[spec.id] = live
        self._refill()
        if spec.command:
            asyncio.get_running_loop().create_task(self._run_main(live))
        spawn_ms = (time.perf_counter() - started) * 1000
        return SandboxInfo(
            id=spec.id, backend=self.name, created_at=datetime.now(UTC), spawn_time_ms=spawn_ms
        )

    async def _spawn(
        self, spec: SandboxSpec, key: str, *, background: bool = False
    ) -> RunningSandbox:
        """Start a sandbox whose cgroup and storage are named ``key``; on failure nothing
        of it is left. In the ``background`` (the pool's refills), the mount and the
        cgroup are made on a worker thread, so that requests do not wait behind them;
        a caller who waits for this sandbox saves the thread hop instead."""
        assert self._account is not None
        assert self._layout is not None
        account = self._account
        resources = spec.resources
        workspace = Workspace(self._sandboxes / key)
        group: SandboxCgroup | None = None
        live: RunningSandbox | None = None
        self._spawning.add(key)
        try:
            layout = self._layout
            limits = CgroupLimits(
                memory_bytes=resources.memory_bytes,
                pids=resources.pids or self._default_pids,
                cpu_millicores=resources.cpu_millicores,
            )

            def prepare() -> SandboxCgroup:
                workspace.create(size=storage_size(resources), uid=account.uid, gid=account.gid)
                try:
                    return SandboxCgroup.create(layout, key, limits, parent=self._parent)
                except FileExistsError as exc:
                    raise Conflict(f"Sandbox {spec.id} exists.") from exc

            group = await asyncio.to_thread(prepare) if background else prepare()
            uid = 1000 if spec.run_as_user is None else spec.run_as_user
            writable = [(name, target) for name, target, _ in BINDS]
            if spec.read_only_root:
                writable = [(n, t) for n, t in writable if t != HOME]
            profile = Profile(
                account=account,
                uid=uid,
                gid=uid if spec.run_as_group is None else spec.run_as_group,
                env={"PATH": SANDBOX_PATH, "HOME": HOME},
                workdir=HOME if not spec.read_only_root else "/tmp",  # noqa: S108
                tmp_bytes=None,
                ro_binds=(
                    *HOST_IMAGE_BINDS,
                    (str(self._root / "etc"), "/etc"),
                    *self._alternatives,
                    (str(self._agent), AGENT_PATH),
                    (str(self._root / "bin"), ALIAS_DIR),
                ),
                symlinks=HOST_IMAGE_LINKS,
                binds=[(str(workspace.source(name)), target) for name, target in writable],
                read_only_root=True,
            )
            launcher = [
                str(self._agent),
                "launch",
                *(("--nice", str(SPARE_NICE)) if background else ()),
                str(account.uid),
                str(account.gid),
                *(str(d / "cgroup.procs") for d in group.dirs),
                "--",
            ]
            fd = program_fd(self._program)
            try:
                # On this thread, on purpose: see the module's docstring.
                process = subprocess.Popen(  # noqa: S603, ASYNC220 - every argument is ours
                    command(profile, [AGENT_PATH, "serve"], seccomp_fd=fd, launcher=launcher),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    pass_fds=(fd,),
                    close_fds=True,
                    start_new_session=True,
                    cwd="/",
                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                )
            finally:
                os.close(fd)
            live = self._running(spec, key, process, group, workspace)
            await self._greeted(live, lambda: None)
        except BaseException:
            if live is not None:
                await self._teardown(live)
            else:
                await asyncio.to_thread(self._remove_remains, key, group, workspace)
            raise
        finally:
            self._spawning.discard(key)
        return live

    def _running(
        self,
        spec: SandboxSpec,
        key: str,
        process: subprocess.Popen[bytes],
        group: SandboxCgroup,
        workspace: Workspace,
    ) -> RunningSandbox:
        """The link to a sandbox whose process (bubblewrap, runsc) was just started."""
        return RunningSandbox(
            spec=spec,
            key=key,
            process=process,
            group=group,
            workspace=workspace,
            logbook=LogBook(self._logs / f"{key}.jsonl"),
            on_lost=self._lost,
        )

    @staticmethod
    async def _greeted(live: RunningSandbox, more: Callable[[], str | None]) -> None:
        """Wait for the agent's HELLO; when none comes, say why: the process's last
        words, else ``more()`` (a log of the backend's), else the error."""
        assert live.hello is not None
        try:
            await asyncio.wait_for(asyncio.shield(live.hello), HELLOTIMEOUT)
        except (SandboxError, TimeoutError) as exc:
            await asyncio.sleep(0)  # let the last of the process's stderr arrive
            detail = live.diagnostics() or more() or str(exc) or "no answer from the agent"
            raise SandboxError(f"the sandbox did not start: {detail}") from exc

    # The warm pool.

    def _take_pooled(self, spec: SandboxSpec) -> RunningSandbox | None:
        """A pre-started sandbox made into ``spec``, or None when there is none or the
        spec needs what only a fresh start gives (another uid, a read-only home).

        A pooled sandbox has run nothing but its agent. Handing it out rewrites its
        cgroup limits and resizes its storage before the caller's first command, and its
        environment is per exec, so it is indistinguishable from a fresh one."""
        if spec.run_as_user is not None or spec.run_as_group is not None or spec.read_only_root:
            return None
        while self._pool:
            live = self._pool.pop()
            if not live.alive:
                self._spawn_task(self._teardown(live))
                continue
            resources = spec.resources
            try:
                live.group.set_limits(
                    CgroupLimits(
                        memory_bytes=resources.memory_bytes,
                        pids=resources.pids or self._default_pids,
                        cpu_millicores=resources.cpu_millicores,
                    )
                )
                live.workspace.resize(storage_size(resources))
                for pid in live.group.pids():  # the spare started at background priority
                    os.setpriority(os.PRIO_PROCESS, pid, 0)
            except (OSError, InvalidInput) as exc:
                logger.warning("a pooled sandbox could not take its limits: %s", exc)
                self._spawn_task(self._teardown(live))
                return None
            live.logbook.close()
            live.logbook.path.unlink(missing_ok=True)
            live.logbook = LogBook(self._logs / f"{spec.id}.jsonl")
            live.spec = spec
            return live
        return None

    async def settle(self) -> None:
        """Wait for this backend's background work: tear-downs under way and the pool's
        refill (for whoever wants the pool warm first: tests, benchmarks)."""
        while self._tasks or (self._filler is not None and not self._filler.done()):
            pending = [*self._tasks, *([self._filler] if self._filler else [])]
            await asyncio.gather(*pending, return_exceptions=True)

    def _refill(self) -> None:
        """Start topping the pool up in the background, if it is not being topped up."""
        if self._pool_size <= 0 or self._closing or not self._ready:
            return
        if self._filler is None or self._filler.done():
            self._filler = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        while len(self._pool) < self._pool_size and not self._closing:
            key = f"pool-{secrets.token_hex(6)}"
            spec = SandboxSpec(
                id=key,
                resources=Resources(
                    memory_bytes=POOL_MEMORY, storage_bytes=1 << 30, pids=self._default_pids
                ),
            )
            try:
                live = await self._spawn(spec, key, background=True)
            except (SandboxError, OSError, Conflict) as exc:
                logger.warning("the sandbox pool could not grow: %s", exc)
                return
            if self._is_closing():  # close() began while this one started
                await self._teardown(live)
                return
            self._pool.append(live)

    def _is_closing(self) -> bool:
        return self._closing

    def _spawn_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_main(self, live: RunningSandbox) -> None:
        """Run the sandbox's ``command`` on its own channel; its output is the log.

        Logging is capped at ``LOG_BYTES_PER_SECOND`` and ``LOG_LINES_PER_SECOND``, like
        journald's rate limit: past them, what is already read is dropped (a line says how
        much), and the agent is told to stop reading the command's output until the next
        second (FLOW), so the command blocks on its own pipe and costs the daemon nothing."""
        assert live.spec.command
        window, taken_bytes, taken_lines, dropped = time.monotonic(), 0, 0, 0
        paused_until = 0.0
        loop = asyncio.get_running_loop()
        with contextlib.suppress(SandboxError, Conflict):
            async for event in self._exec(live, list(live.spec.command), MAIN_CHANNEL):
                if not isinstance(event, Output):
                    live.main_exit = event.code
                    continue
                now = time.monotonic()
                if now - window >= 1.0:
                    if dropped:
                        live.logbook.note(f"[stockade] {dropped} bytes of output dropped")
                    window, taken_bytes, taken_lines, dropped = now, 0, 0, 0
                if paused_until:
                    paused_until = 0.0
                kept = first_lines(
                    event.data[: max(0, LOG_BYTES_PER_SECOND - taken_bytes)],
                    LOG_LINES_PER_SECOND - taken_lines,
                )
                dropped += len(event.data) - len(kept)
                if kept:
                    taken_lines += live.logbook.feed(event.stream, kept)
                    taken_bytes += len(kept)
                if len(kept) < len(event.data) and not paused_until and live.alive:
                    # Over this second's budget: the agent stops reading the command's
                    # output until the next second, so the command blocks on its pipe.
                    paused_until = window + 1.0
                    live.send(proto.flow_request(MAIN_CHANNEL, reading=False))
                    loop.call_at(loop.time() + (paused_until - now), self._resume_main, live)
        if dropped:
            live.logbook.note(f"[stockade] {dropped} bytes of output dropped")
        live.logbook.flush()

    @staticmethod
    def _resume_main(live: RunningSandbox) -> None:
        if live.alive:
            live.send(proto.flow_request(MAIN_CHANNEL, reading=True))

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
        live = self._require(sandbox_id)
        return self._exec(live, argv, None, env=env, cwd=cwd, timeout=timeout, stdin=stdin)

    async def _exec(
        self,
        live: RunningSandbox,
        argv: list[str],
        channel_id: int | None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the command's, not this call's
        stdin: bytes | AsyncIterator[bytes] | None = None,
    ) -> AsyncGenerator[ExecEvent, None]:
        if not argv or not argv[0]:
            raise InvalidInput("The command is empty.")
        environment = {"PATH": SANDBOX_PATH, "HOME": HOME} | dict(live.spec.env) | dict(env or {})
        channel = live.open_channel(channel_id)
        loop = asyncio.get_running_loop()
        timers: list[asyncio.TimerHandle] = []
        feeder: asyncio.Task[None] | None = None
        finished = False
        timed_out = False
        try:
            live.send(
                proto.exec_request(
                    channel.id,
                    argv,
                    environment,
                    cwd or (HOME if not live.spec.read_only_root else "/tmp"),  # noqa: S108
                    stdin=stdin is not None,
                )
            )
            if isinstance(stdin, bytes):
                for chunk in proto.stdin_chunks(channel.id, stdin):
                    live.send(chunk)
                live.send(proto.stdin_eof(channel.id))
            elif stdin is not None:
                feeder = loop.create_task(self._feed(live, channel.id, stdin))
            if timeout is not None:
                timers.append(loop.call_later(max(timeout, 0.0), channel.put, TIMEOUT))
            while True:
                item = await channel.get()
                if item is TIMEOUT:
                    timed_out = True
                    live.send(proto.signal_request(channel.id, signal.SIGKILL, proto.SCOPE_TREE))
                    timers.append(loop.call_later(KILL_GRACE, channel.put, GIVE_UP))
                    continue
                if item is GIVE_UP:
                    finished = True
                    yield Exit(128 + signal.SIGKILL, timed_out=True)
                    return
                if item is LOST:
                    raise SandboxError(f"sandbox {live.spec.id} stopped during the command")
                assert isinstance(item, proto.Frame)
                if item.type == proto.STDOUT:
                    yield Output("stdout", item.payload)
                elif item.type == proto.STDERR:
                    yield Output("stderr", item.payload)
                elif item.type == proto.EXIT:
                    finished = True
                    yield Exit(proto.exit_status(item.payload), timed_out=timed_out)
                    return
        finally:
            for timer in timers:
                timer.cancel()
            if feeder is not None:
                feeder.cancel()
            if not finished and live.alive:
                # Abandoned by its caller: hang up on it, as a closed terminal would.
                live.send(proto.signal_request(channel.id, signal.SIGHUP, proto.SCOPE_GROUP))
            live.close_channel(channel)

    async def _feed(
        self, live: RunningSandbox, channel_id: int, source: AsyncIterator[bytes]
    ) -> None:
        with contextlib.suppress(Conflict):
            async for data in source:
                for chunk in proto.stdin_chunks(channel_id, data):
                    live.send(chunk)
            live.send(proto.stdin_eof(channel_id))

    async def _request(
        self, live: RunningSandbox, frames: Callable[[int], Iterable[bytes]]
    ) -> AsyncIterator[proto.Frame]:
        """Send a file request's frames (built for the channel it gets) and yield the
        agent's answers up to END."""
        channel = live.open_channel()
        try:
            for data in frames(channel.id):
                live.send(data)
                if live.pending_output() > RESUME_BYTES:
                    await live.drained.wait()
            while True:
                item = await channel.get()
                if item is LOST:
                    raise SandboxError(f"sandbox {live.spec.id} stopped")
                assert isinstance(item, proto.Frame)
                yield item
                if item.type == proto.END:
                    return
        finally:
            live.close_channel(channel)

    async def read_file(self, sandbox_id: str, path: str, *, limit: int | None = None) -> bytes:
        live = self._require(sandbox_id)
        data = bytearray()
        request = self._request(live, lambda ch: [proto.path_request(proto.READ, ch, path)])
        too_large = False
        async for item in request:
            if item.type == proto.DATA:
                if limit is not None and len(data) + len(item.payload) > limit:
                    too_large = True
                    continue
                data += item.payload
            elif item.type == proto.END:
                number = proto.end_errno(item.payload)
                if number:
                    raise _errno_error(number, path)
        if too_large:
            raise PayloadTooLarge(f"{path} is larger than the {limit} bytes allowed.")
        return bytes(data)

    async def write_file(self, sandbox_id: str, path: str, data: bytes, mode: int = 0o644) -> None:
        live = self._require(sandbox_id)

        def frames(channel: int) -> Iterable[bytes]:
            yield proto.write_request(channel, path, mode)
            yield from proto.write_chunks(channel, data)
            yield proto.frame(proto.WRITE_END, channel)

        async for item in self._request(live, frames):
            if item.type == proto.END:
                number = proto.end_errno(item.payload)
                if number:
                    raise _errno_error(number, path)

    async def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        live = self._require(sandbox_id)
        entries: list[FileEntry] = []
        request = self._request(live, lambda ch: [proto.path_request(proto.LIST, ch, path)])
        async for item in request:
            if item.type == proto.LISTING:
                entries.extend(proto.listing_entries(path, item.payload))
            elif item.type == proto.END:
                number = proto.end_errno(item.payload)
                if number:
                    raise _errno_error(number, path)
        return sorted(entries, key=lambda e: e.path)

    async def logs(
        self, sandbox_id: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncIterator[LogLine]:
        live = self._live.get(sandbox_id)
        if live is None:
            lines = read_log_file(self._logs / f"{sandbox_id}.jsonl")
            for line in last_lines(lines, tail):
                yield line
            return
        queue: asyncio.Queue[LogLine | None] = asyncio.Queue()
        if follow:
            live.logbook.followers.add(queue)
        try:
            for line in last_lines(list(live.logbook.lines), tail):
                yield line
            if not follow:
                return
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            live.logbook.followers.discard(queue)

    async def stats(self, sandbox_id: str) -> Stats:
        live = self._require(sandbox_id)
        usage = await asyncio.to_thread(live.group.stats)
        return Stats(
            cpu_nanoseconds=usage.cpu_ns or 0,
            memory_bytes=usage.memory_bytes or 0,
            pids=max(0, usage.pids - BASELINE_PIDS),
            disk_bytes=live.workspace.usage(),
        )

    def kill(self, sandbox_id: str) -> None:
        live = self._live.get(sandbox_id)
        if live is None or not live.alive:
            return
        live.stopping = True  # what follows is not a sandbox dying by itself
        live.killed = True
        # The kernel takes the sandbox down in its dying processes' time: at the lowest
        # priority, so that the request that killed it, and the next, go first.
        for pid in live.group.procs():
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, pid, 19)
        if not _kill_sandbox_init(live.process.pid):
            live.process.kill()

    async def destroy(self, sandbox_id: str, *, grace: float = 0.0) -> None:
        live = self._live.get(sandbox_id)
        if live is not None:
            if grace > 0 and live.alive:
                await self._terminate(live, grace)
            await self._teardown(live)
        else:
            await asyncio.to_thread(self._remove_remains, sandbox_id, None, None)
        (self._logs / f"{sandbox_id}.jsonl").unlink(missing_ok=True)

    async def recover(self, known: Iterable[str]) -> Recovery:
        await self.start()
        assert self._layout
        found = set(list_sandbox_groups(self._layout, self._parent))
        if self._sandboxes.is_dir():
            found.update(p.name for p in self._sandboxes.iterdir())
        found -= {live.key for live in (*self._live.values(), *self._pool)}
        found -= self._spawning
        for name in sorted(found):
            await asyncio.to_thread(self._remove_remains, name, None, None)
        return Recovery(adopted=(), cleaned=tuple(sorted(found)))

    # Internals.

    def _require(self, sandbox_id: str) -> RunningSandbox:
        live = self._live.get(sandbox_id)
        if live is None:
            raise NotFound(f"No running sandbox {sandbox_id}.")
        if not live.alive:
            raise Conflict(f"Sandbox {sandbox_id} has stopped.")
        return live

    def _lost(self, live: RunningSandbox, reason: str) -> None:
        if live in self._pool:
            self._pool.remove(live)
            self._spawn_task(self._teardown(live))
            self._refill()
            return
        logger.warning("sandbox %s stopped unexpectedly: %s", live.spec.id, reason)
        if self.on_lost is not None:
            self.on_lost(live.spec.id, reason)

    async def _terminate(self, live: RunningSandbox, grace: float) -> None:
        """SIGTERM every process but the agent, and give them ``grace`` seconds to end."""
        with contextlib.suppress(Conflict):
            live.send(proto.signal_request(0, signal.SIGTERM, proto.SCOPE_TREE))
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and live.alive:
            if len(live.group.pids()) <= BASELINE_PIDS:
                return
            await asyncio.sleep(0.02)

    async def _teardown(self, live: RunningSandbox) -> None:
        """Kill, reap, and remove every trace of a sandbox."""
        live.stopping = True
        if self._live.get(live.spec.id) is live:
            del self._live[live.spec.id]
        if live in self._pool:
            self._pool.remove(live)
        group = live.group
        # Kill the sandbox's pid 1: the kernel ends everything in its pid namespace, that
        # init reaps it all, and bubblewrap (our child) reaps the init. Killing the whole
        # cgroup at once instead would orphan the init to the host's pid 1, which may
        # never reap it. The cgroup kill stays as the backstop.
        if not live.killed and live.process.poll() is None:
            live.killed = True
            if not _kill_sandbox_init(live.process.pid):
                live.process.kill()
        if live.process.poll() is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.exited.wait(), EXITTIMEOUT)
        if live.process.poll() is None:
            live.process.kill()
            await asyncio.to_thread(live.process.wait)
        if not group.empty():
            fast = group.v2 is not None and _write_kill(group.v2)
            if not fast:
                await asyncio.to_thread(group.kill)
        live.lose("the sandbox was destroyed")
        live.release()
        try:
            # Everything in it is dead and reaped: the plain removals are enough.
            for directory in group.dirs:
                os.rmdir(directory)
            live.workspace.remove()
        except OSError:
            await asyncio.to_thread(self._remove_remains, live.key, group, live.workspace)

    def _remove_remains(
        self, name: str, group: SandboxCgroup | None, workspace: Workspace | None
    ) -> None:
        """Remove a sandbox's cgroup and storage, whatever state they are in."""
        assert self._layout
        try:
            group = group or SandboxCgroup.locate(self._layout, name, parent=self._parent)
            group.destroy()
        except (OSError, InvalidInput) as exc:
            logger.error("cannot remove the cgroup of sandbox %s: %s", name, exc)
        try:
            (workspace or Workspace(self._sandboxes / name)).destroy()
        except OSError as exc:
            logger.error("cannot remove the storage of sandbox %s: %s", name, exc)


def cgroups_unavailable() -> str | None:
    """Why this host's cgroups cannot hold sandboxes, or None when they can."""
    try:
        layout = CgroupLayout.detect()
    except (OSError, SandboxError) as exc:
        return f"no usable cgroup hierarchy: {exc}"
    if not layout.v1_roots() and not layout.v2_limited():
        return "no cgroup controllers are mounted"
    return None


def _copy_host_etc(etc: Path) -> bool:
    """``HOST_ETC`` into the sandboxes' /etc, and a mount point for the alternatives;
    False when the host has none."""
    (etc / "alternatives").mkdir(exist_ok=True)
    for name in HOST_ETC:
        source = Path("/etc") / name
        target = etc / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        elif source.is_file():
            shutil.copyfile(source, target)
            target.chmod(0o644)
    return Path(HOST_ALTERNATIVES).is_dir()


def _kill_sandbox_init(monitor: int) -> bool:
    """SIGKILL the children of bubblewrap's monitor process (the sandbox's init)."""
    try:
        children = Path(f"/proc/{monitor}/task/{monitor}/children").read_text().split()
    except OSError:
        return False
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGKILL)
    return bool(children)


def _write_kill(directory: Path) -> bool:
    try:
        (directory / "cgroup.kill").write_text("1")
    except OSError:
        return False
    return True

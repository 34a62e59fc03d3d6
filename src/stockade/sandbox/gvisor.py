"""The ``gvisor`` backend: each sandbox under gVisor's ``runsc``, a kernel of its own.

A ``namespace`` sandbox shares the host's kernel, and one kernel bug is enough to leave
it. Here the sandbox's system calls go to gVisor's Sentry, a kernel written in Go that
runs as an unprivileged, seccomp-confined host process; the host kernel sees only the
Sentry and its file proxy (the gofer).

How one sandbox starts (``create``):

1. its storage: the same size-capped tmpfs as ``namespace`` (``workspace.py``);
2. its cgroup (``cgroups.py``) with the memory and cpu limits, plus room for the Sentry
   (``host_limits``);
3. its bundle: ``config.json`` from the spec (``oci.py``);
4. ``sh`` joins the cgroup and ``exec``s ``runsc --root <ours> run --bundle <b> <id>``
   as the daemon's child, so runsc, the gofer and the Sentry all start inside the cgroup;
5. the container's process is the same static agent as ``namespace`` uses
   (``docs/agent-protocol.md``), over the container's stdin and stdout, which runsc
   passes through: it says HELLO, and the sandbox runs.

Commands enter through the agent, not ``runsc exec``: measured here (ptrace platform),
an exec of ``true`` costs 16-21 ms through the agent and 31-36 ms through ``runsc exec``,
which starts a Go program on the host every time (``docs/backends.md``).

Everything else (exec, files, logs, timeouts) is ``namespace``'s own code, through the
agent; this class changes only how a sandbox starts, is counted and is torn down.

``destroy`` SIGKILLs runsc's sandbox and gofer processes; ``runsc run`` then removes the
container's state and exits, and the cgroup, storage and bundle are removed. A daemon
that dies closes the agent's stdin, and the agent, the container's init, ends the
container with it, as ``--die-with-parent`` does for ``namespace``: so a restarted daemon
re-adopts nothing (the agent's pipes are gone), and ``recover`` deletes whatever runsc
still lists under our root (``runsc list``, ``delete --force``) and the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path

from stockade.errors import Conflict, InvalidInput
from stockade.sandbox import agentproto as proto
from stockade.sandbox.base import (
    Recovery,
    Resources,
    SandboxError,
    SandboxInfo,
    SandboxSpec,
    Stats,
)
from stockade.sandbox.bwrap import HOST_IMAGE_LINKS
from stockade.sandbox.cgroups import CgroupLayout, CgroupLimits, SandboxCgroup, list_sandbox_groups
from stockade.sandbox.namespace import (
    AGENT_PATH,
    ALIASES,
    ETC_FILES,
    HOST_ALTERNATIVES,
    IMAGES,
    SANDBOX_PATH,
    NamespaceBackend,
    _copy_host_etc,
    cgroups_unavailable,
    storage_size,
)
from stockade.sandbox.native import agent_binary, statx_fix_library
from stockade.sandbox.oci import Bundle
from stockade.sandbox.running import RunningSandbox
from stockade.sandbox.workspace import BINDS, HOME, Workspace

logger = logging.getLogger("stockade.sandbox")

RUNSC = "runsc"
TOOLS = "/.stockade"  # the agent (AGENT_PATH), the aliases (ALIAS_DIR) and the statx fix
STATX_FIX = f"{TOOLS}/statx-fix.so"
# The Sentry and the gofer are charged to the sandbox's memory cgroup too: an idle
# sandbox uses ~18 MiB of them here. The host limit is the sandbox's plus this.
SENTRY_MEMORY = 64 << 20
# The host's pids cgroup counts runsc's own threads (~52 for an idle sandbox, measured)
# and, on the ptrace platform, ~12 more host threads per sandbox process; the sandbox's
# own limit is RLIMIT_NPROC inside (oci.py). This is the backstop around all of it.
SENTRY_PIDS = 256
HOST_PIDS_PER_PROCESS = 16
# Joins every cgroup.procs named before "--", then becomes the command after it: the
# command is in the cgroup before it can fork (cf. `stockade-agent launch`, which also
# drops to the sandbox account; runsc must start as root). A failed join runs nothing.
JOIN_CGROUP = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
RUNSC_TIMEOUT = 30.0


def choose_platform(requested: str | None = None, available: Iterable[str] = ()) -> str:
    """The gVisor platform to run sandboxes on.

    ``requested`` (an explicit setting) wins. Otherwise ``systrap`` when this runsc has it
    (newer runsc: seccomp-trap based, faster than ptrace, needs no /dev/kvm), else
    ``ptrace``, which works everywhere. ``kvm`` is never chosen by itself: on this machine
    class (nested PVM) it hangs instead of failing, and a probe that hangs cannot be told
    from a slow start, so it is used only when set explicitly. Debian bookworm's runsc
    (0.0~20221219) offers ``ptrace`` and ``kvm`` only."""
    if requested:
        return requested
    return "systrap" if "systrap" in set(available) else "ptrace"


def host_limits(resources: Resources, default_pids: int) -> CgroupLimits:
    """The host cgroup's limits around all of runsc for a sandbox with ``resources``."""
    pids = resources.pids or default_pids
    return CgroupLimits(
        memory_bytes=None
        if resources.memory_bytes is None
        else resources.memory_bytes + SENTRY_MEMORY,
        pids=SENTRY_PIDS + HOST_PIDS_PER_PROCESS * pids,
        cpu_millicores=resources.cpu_millicores,
    )


class GvisorBackend(NamespaceBackend):
    """runsc (gVisor) + cgroups + the in-sandbox agent; ``namespace``'s exec, file and
    log code over the same agent protocol."""

    name = "gvisor"

    def __init__(
        self,
        run_dir: Path,
        state_dir: Path,
        *,
        instance: str,
        default_pids: int = 512,
        platform: str | None = None,
    ) -> None:
        # Its own run directory and cgroup parent: a `namespace` backend of the same
        # daemon never lists (or cleans) a gvisor sandbox, nor the other way round.
        super().__init__(
            run_dir, state_dir, instance=f"{instance}-gv", default_pids=default_pids, pool_size=0
        )
        self._requested_platform = platform
        self._platform = "ptrace"
        self._state = self._root / "runsc"
        self._bundles = self._root / "bundles"
        self._rootfs = self._root / "rootfs"
        self._tools = self._root / "stockade"
        self._agent = self._tools / "agent"

    # Set-up.

    def unavailable_reason(self) -> str | None:
        if os.geteuid() != 0:
            return "the gvisor backend needs the daemon to run as root (runsc, mounts, cgroups)"
        if shutil.which(RUNSC) is None:
            return "runsc not installed: run `make install` (Debian's runsc package)"
        if self._requested_platform == "kvm" and not os.path.exists("/dev/kvm"):
            return "the kvm platform was asked for, and this host has no /dev/kvm"
        return cgroups_unavailable()

    async def start(self) -> None:
        """Prepare the run directory: the agent, the statx fix, /etc, the empty root and
        runsc's state directory; and choose the platform."""
        if self._ready:
            return
        reason = self.unavailable_reason()
        if reason:
            raise SandboxError(reason)
        self._layout = CgroupLayout.detect()
        binary = await asyncio.to_thread(agent_binary)
        library = await asyncio.to_thread(statx_fix_library)
        await asyncio.to_thread(self._mount_root)
        self._logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._tools.mkdir(mode=0o755, exist_ok=True)
        for source, target, mode in ((binary, self._agent, 0o755), (library, self._fix, 0o644)):
            staged = target.with_name(target.name + ".new")
            shutil.copyfile(source, staged)
            staged.chmod(mode)
            staged.replace(target)
        await asyncio.to_thread(self._lay_out_root)
        self._platform = choose_platform(self._requested_platform, await _platforms())
        self._ready = True

    @property
    def _fix(self) -> Path:
        return self._tools / "statx-fix.so"

    @property
    def platform(self) -> str:
        """The gVisor platform sandboxes run on (``choose_platform``)."""
        return self._platform

    def _lay_out_root(self) -> None:
        """/etc, the aliases, runsc's state and bundle directories, and the root: empty
        mount points and the merged-/usr links, read-only inside every sandbox.

        Every mount costs the Sentry and the gofer at each start, so there are few: the
        agent, the statx fix and the aliases share one directory (``/.stockade``), and
        Debian's alternatives (symbolic links) are copied into /etc, not bound."""
        etc = self._root / "etc"
        etc.mkdir(mode=0o755, exist_ok=True)
        files = {**ETC_FILES, "ld.so.preload": f"{STATX_FIX}\n"}
        for name, text in files.items():
            (etc / name).write_text(text)
            (etc / name).chmod(0o644)
        if _copy_host_etc(etc):
            shutil.rmtree(etc / "alternatives")  # a restarted daemon's copy is made afresh
            shutil.copytree(HOST_ALTERNATIVES, etc / "alternatives", symlinks=True)
        aliases = self._tools / "bin"
        aliases.mkdir(mode=0o755, exist_ok=True)
        for name, target in ALIASES.items():
            link = aliases / name
            if not link.is_symlink():
                link.symlink_to(target)
        self._state.mkdir(mode=0o700, exist_ok=True)
        self._bundles.mkdir(mode=0o700, exist_ok=True)
        root = self._rootfs
        for directory in ("usr", "etc", "tmp", "proc", "dev", "home/sandbox", TOOLS[1:]):
            (root / directory).mkdir(mode=0o755, parents=True, exist_ok=True)
        for relative, target in HOST_IMAGE_LINKS:
            path = root / target[1:]
            if not path.is_symlink():
                path.symlink_to(relative)

    def _runsc(self, *argv: str) -> list[str]:
        """A runsc command line with this backend's global flags."""
        return [
            RUNSC,
            f"--root={self._state}",
            f"--platform={self._platform}",
            "--network=none",
            "--ignore-cgroups",  # ours, made before runsc starts (host_limits)
            "--oci-seccomp",
            "--file-access-mounts=exclusive",  # only the sandbox changes its storage
            *argv,
        ]

    # The interface.

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        if not spec.network.isolated:
            raise InvalidInput(
                "This daemon's gvisor backend gives sandboxes no network; egress "
                "(allow_internet, allowed_egress_cidrs) is not available yet."
            )
        return await super().create(spec)

    async def stats(self, sandbox_id: str) -> Stats:
        """Memory and cpu of the whole sandbox (runsc included) from its cgroup; the
        processes as the sandbox's own /proc lists them, less the agent."""
        live = self._require(sandbox_id)
        usage = await asyncio.to_thread(live.group.stats)
        return Stats(
            cpu_nanoseconds=usage.cpu_ns or 0,
            memory_bytes=usage.memory_bytes or 0,
            pids=max(0, await self._count_processes(live) - 1),
            disk_bytes=live.workspace.usage(),
        )

    def kill(self, sandbox_id: str) -> None:
        live = self._live.get(sandbox_id)
        if live is None or not live.alive:
            return
        live.stopping = True
        live.killed = True
        _kill_children(live.process.pid)

    async def recover(self, known: Iterable[str]) -> Recovery:
        await self.start()
        assert self._layout
        found = set(list_sandbox_groups(self._layout, self._parent))
        found.update(await self._listed())
        for directory in (self._sandboxes, self._bundles):
            if directory.is_dir():
                found.update(p.name for p in directory.iterdir())
        found -= {live.key for live in self._live.values()}
        found -= self._spawning
        for name in sorted(found):
            await asyncio.to_thread(self._remove_remains, name, None, None)
        return Recovery(adopted=(), cleaned=tuple(sorted(found)))

    # Internals.

    async def _spawn(
        self, spec: SandboxSpec, key: str, *, background: bool = False
    ) -> RunningSandbox:
        """Start a sandbox whose cgroup, storage, bundle and container are named ``key``;
        on failure nothing of it is left."""
        assert self._layout is not None
        if spec.image not in IMAGES:
            raise InvalidInput(f"Unknown image {spec.image!r}.")
        layout = self._layout
        uid = 1000 if spec.run_as_user is None else spec.run_as_user
        gid = uid if spec.run_as_group is None else spec.run_as_group
        workspace = Workspace(self._sandboxes / key)
        bundle_dir = self._bundles / key
        group: SandboxCgroup | None = None
        live: RunningSandbox | None = None
        self._spawning.add(key)
        try:
            # The storage is owned by the uid inside: runsc has no user namespace here
            # (oci.py), and only root may enter the directory around it.
            workspace.create(size=storage_size(spec.resources), uid=uid, gid=gid)
            workspace.directory.chmod(0o700)
            try:
                group = SandboxCgroup.create(
                    layout,
                    key,
                    host_limits(spec.resources, self._default_pids),
                    parent=self._parent,
                )
            except FileExistsError as exc:
                raise Conflict(f"Sandbox {spec.id} exists.") from exc
            bundle_dir.mkdir(mode=0o700)
            (bundle_dir / "config.json").write_text(
                json.dumps(self._bundle(spec, workspace, uid, gid).config())
            )
            argv = self._runsc(
                f"--log={bundle_dir / 'runsc.log'}", "run", f"--bundle={bundle_dir}", key
            )
            procs = [str(d / "cgroup.procs") for d in group.dirs]
            process = subprocess.Popen(  # noqa: S603, ASYNC220 - every argument is ours
                ["/bin/sh", "-c", JOIN_CGROUP, "sh", *procs, "--", *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                close_fds=True,
                start_new_session=True,
                cwd="/",
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
            live = self._running(spec, key, process, group, workspace)
            await self._greeted(live, lambda: _tail(bundle_dir / "runsc.log"))
        except BaseException:
            if live is not None:
                await self._teardown(live)
            else:
                await asyncio.to_thread(self._remove_remains, key, group, workspace)
            raise
        finally:
            self._spawning.discard(key)
        return live

    def _bundle(self, spec: SandboxSpec, workspace: Workspace, uid: int, gid: int) -> Bundle:
        writable = [(str(workspace.source(name)), target) for name, target, _ in BINDS]
        if spec.read_only_root:
            writable = [(source, target) for source, target in writable if target != HOME]
        return Bundle(
            root=self._rootfs,
            uid=uid,
            gid=gid,
            pids=spec.resources.pids or self._default_pids,
            env={"PATH": SANDBOX_PATH, "HOME": HOME},
            args=(AGENT_PATH, "serve"),
            read_only=(
                ("/usr", "/usr"),
                (str(self._root / "etc"), "/etc"),
                (str(self._tools), TOOLS),
            ),
            writable=writable,
        )

    def _take_pooled(self, spec: SandboxSpec) -> RunningSandbox | None:
        """No pool: a spare's RLIMIT_NPROC cannot be changed from outside the Sentry."""
        return None

    async def _count_processes(self, live: RunningSandbox) -> int:
        """The sandbox's processes, as its /proc lists them (the agent's LIST: no process
        is started to count them)."""
        count = 0
        request = self._request(live, lambda ch: [proto.path_request(proto.LIST, ch, "/proc")])
        async for item in request:
            if item.type == proto.LISTING:
                entries = proto.listing_entries("/proc", item.payload)
                count += sum(1 for e in entries if e.is_dir and e.path[6:].isdigit())
        return count

    async def _terminate(self, live: RunningSandbox, grace: float) -> None:
        """SIGTERM every process but the agent, and give them ``grace`` seconds to end."""
        with contextlib.suppress(Conflict):
            live.send(proto.signal_request(0, signal.SIGTERM, proto.SCOPE_TREE))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        with contextlib.suppress(SandboxError, Conflict):
            while loop.time() < deadline and live.alive:
                if await self._count_processes(live) <= 1:
                    return
                await asyncio.sleep(0.02)

    async def _teardown(self, live: RunningSandbox) -> None:
        """Kill runsc's sandbox and gofer: ``runsc run`` (our child) then deletes the
        container's state and exits. Then the cgroup, storage and bundle go."""
        live.stopping = True
        if self._live.get(live.spec.id) is live:
            del self._live[live.spec.id]
        if live.process.poll() is None:
            live.killed = True
            if not _kill_children(live.process.pid):
                live.process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.exited.wait(), RUNSC_TIMEOUT / 6)
        if live.process.poll() is None:
            live.process.kill()
            await asyncio.to_thread(live.process.wait)
        live.lose("the sandbox was destroyed")
        live.release()
        group = live.group
        try:
            if not group.empty() or self._has_state(live.key):
                raise OSError("runsc left something behind")
            for directory in group.dirs:
                os.rmdir(directory)
            live.workspace.remove()
            shutil.rmtree(self._bundles / live.key)
        except OSError:
            await asyncio.to_thread(self._remove_remains, live.key, group, live.workspace)

    def _has_state(self, key: str) -> bool:
        return (self._state / f"{key}_sandbox:{key}.state").exists()

    def _remove_remains(
        self, name: str, group: SandboxCgroup | None, workspace: Workspace | None
    ) -> None:
        """Delete the container from runsc's state, then remove its cgroup, storage and
        bundle, whatever state they are in."""
        if self._has_state(name):
            done = subprocess.run(  # noqa: S603 - every argument is ours
                self._runsc("delete", "--force", name),
                capture_output=True,
                text=True,
                timeout=RUNSC_TIMEOUT,
                check=False,
            )
            if done.returncode != 0:
                logger.error("runsc delete %s: %s", name, done.stderr.strip()[-500:])
        super()._remove_remains(name, group, workspace)
        shutil.rmtree(self._bundles / name, ignore_errors=True)

    async def _listed(self) -> list[str]:
        """The ids of the containers runsc lists under our root."""
        if not self._state.is_dir():
            return []
        process = await asyncio.create_subprocess_exec(
            *self._runsc("list", "--format=json"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), RUNSC_TIMEOUT)
        if process.returncode != 0:
            raise SandboxError(f"runsc list failed: {err.decode(errors='replace').strip()}")
        return [str(c["id"]) for c in json.loads(out or b"[]") or []]


async def _platforms() -> list[str]:
    """The platforms this runsc offers (``runsc help platforms``)."""
    process = await asyncio.create_subprocess_exec(
        RUNSC, "help", "platforms", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), RUNSC_TIMEOUT)
    return out.decode(errors="replace").split()


def _kill_children(pid: int) -> bool:
    """SIGKILL every child of ``pid`` (runsc run's gofer and sandbox: Go forks them from
    any of its threads, so every thread's children are read)."""
    killed = False
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(child), signal.SIGKILL)
                        killed = True
    return killed


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""

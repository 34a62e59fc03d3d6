"""The floor of ``bench/sandbox.py``: a raw bubblewrap + cgroup cycle, without the daemon.

Not a test and not part of the package. One cycle is what the ``namespace`` backend does
at its core, and nothing else (no HTTP, no database, no tmpfs workspace, no agent):

1. ``SandboxCgroup.create`` under the bench's own parent (``stockade-benchfloor``), with
   the daemon's default limits (memory 512Mi, pids 512, cpu 1000m);
2. a fresh seccomp memfd (``program_fd(bpf_program())``), passed with ``pass_fds``;
3. ``stockade-agent launch UID GID <cgroup.procs files> -- bwrap …`` as the backend
   starts its sandboxes: the agent binary's ``launch`` mode (not ``serve``) writes its own
   pid into every ``cgroup.procs`` file while still root, drops to the ``stockade-sandbox``
   account (what ``setpriv`` would do, and ``setpriv`` cannot run after it) and execs
   bwrap with ``bwrap.command(Profile(Account.lookup()), ["sh", "-c", "echo hi"])`` -
   the default profile: every namespace, ``--die-with-parent``, ``--new-session``,
   ``--disable-userns``, the host's ``/usr`` read-only, a 64 MiB tmpfs ``/tmp`` and the
   seccomp program;
4. read ``hi`` from its stdout, wait for it to exit;
5. ``SandboxCgroup.destroy`` (the ``cgroup.kill`` backstop, then ``rmdir``).

``cycle`` runs one cycle synchronously (``subprocess.Popen`` + ``communicate``);
``cycle_async`` runs one on the running event loop (``Popen`` on the loop's thread, stdout
and a pidfd watched by the loop, as the daemon watches its sandboxes), so that many can
run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from stockade.sandbox.bwrap import Account, Profile, command
from stockade.sandbox.cgroups import (
    CgroupLayout,
    CgroupLimits,
    SandboxCgroup,
    list_sandbox_groups,
    remove_parent,
)
from stockade.sandbox.native import agent_binary
from stockade.sandbox.seccomp import bpf_program, program_fd

FLOOR_PARENT = "stockade-benchfloor"
ARGV = ("sh", "-c", "echo hi")
EXPECTED = b"hi\n"
TIMEOUT = 10.0
CHILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
# The daemon's defaults (settings.py: sandbox_memory 512Mi, sandbox_pids 512, sandbox_cpu 1).
LIMITS = CgroupLimits(memory_bytes=512 * 2**20, pids=512, cpu_millicores=1000)


@dataclass(frozen=True)
class CycleTimes:
    """One raw cycle, in milliseconds from its start."""

    total_ms: float
    cgroup_ms: float  # the cgroup made and limited
    hi_ms: float  # "hi" read from the sandbox (it ran)
    exited_ms: float  # bwrap exited and was reaped


class RawCycle:
    """Everything the raw cycles share: the layout, the account, the BPF program."""

    def __init__(self, parent: str = FLOOR_PARENT) -> None:
        self.parent = parent
        self.layout = CgroupLayout.detect()
        self.account = Account.lookup()
        self.program = bpf_program()
        self.agent = str(agent_binary())
        self.profile = Profile(self.account)
        self._serial = 0

    def _name(self) -> str:
        self._serial += 1
        return f"floor-{os.getpid()}-{self._serial}"

    def _spawn(self, group: SandboxCgroup) -> subprocess.Popen[bytes]:
        launcher = [
            self.agent,
            "launch",
            str(self.account.uid),
            str(self.account.gid),
            *(str(d / "cgroup.procs") for d in group.dirs),
            "--",
        ]
        fd = program_fd(self.program)
        try:
            return subprocess.Popen(
                command(self.profile, list(ARGV), seccomp_fd=fd, launcher=launcher),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(fd,),
                close_fds=True,
                start_new_session=True,
                cwd="/",
                env=CHILD_ENV,
            )
        finally:
            os.close(fd)

    def cycle(self) -> CycleTimes:
        """One cycle, synchronously."""
        started = time.perf_counter()
        group = SandboxCgroup.create(self.layout, self._name(), LIMITS, parent=self.parent)
        try:
            made = time.perf_counter()
            process = self._spawn(group)
            try:
                output, _ = process.communicate(timeout=TIMEOUT)
            except BaseException:
                process.kill()
                process.wait()
                raise
            exited = time.perf_counter()
            _check(output, process.returncode)
        finally:
            group.destroy()
        done = time.perf_counter()
        return CycleTimes(
            total_ms=(done - started) * 1000,
            cgroup_ms=(made - started) * 1000,
            hi_ms=(exited - started) * 1000,  # communicate() returns at exit only
            exited_ms=(exited - started) * 1000,
        )

    async def cycle_async(self, started: float | None = None) -> CycleTimes:
        """One cycle on the running event loop; times count from ``started`` when given
        (a batch's common start), else from the call."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter() if started is None else started
        group = SandboxCgroup.create(self.layout, self._name(), LIMITS, parent=self.parent)
        try:
            made = time.perf_counter()
            process = self._spawn(group)  # on the loop's thread, as the daemon does
            assert process.stdout is not None
            out_fd = process.stdout.fileno()
            os.set_blocking(out_fd, False)
            pidfd = os.pidfd_open(process.pid)
            output = bytearray()
            said_hi: asyncio.Future[float] = loop.create_future()
            eof: asyncio.Future[None] = loop.create_future()
            exited: asyncio.Future[float] = loop.create_future()

            def on_output() -> None:
                try:
                    data = os.read(out_fd, 65536)
                except BlockingIOError:
                    return
                if data:
                    output.extend(data)
                    if EXPECTED in output and not said_hi.done():
                        said_hi.set_result(time.perf_counter())
                    return
                loop.remove_reader(out_fd)
                eof.set_result(None)

            def on_exit() -> None:
                loop.remove_reader(pidfd)
                exited.set_result(time.perf_counter())

            loop.add_reader(out_fd, on_output)
            loop.add_reader(pidfd, on_exit)
            try:
                await asyncio.wait_for(asyncio.gather(eof, exited), TIMEOUT)
            finally:
                loop.remove_reader(out_fd)
                loop.remove_reader(pidfd)
                os.close(pidfd)
                process.stdout.close()
                if process.poll() is None:
                    process.kill()
                process.wait()
            _check(bytes(output), process.returncode)
            hi_at = said_hi.result()
            exited_at = exited.result()
        finally:
            group.destroy()
        done = time.perf_counter()
        return CycleTimes(
            total_ms=(done - started) * 1000,
            cgroup_ms=(made - started) * 1000,
            hi_ms=(hi_at - started) * 1000,
            exited_ms=(exited_at - started) * 1000,
        )

    def leftovers(self) -> list[Path]:
        """The floor's cgroup directories that exist (the parent in each hierarchy)."""
        return [root / self.parent for root in self.layout.roots() if (root / self.parent).exists()]

    def cleanup(self) -> None:
        """Kill and remove every floor group and the parent itself."""
        if self.leftovers():
            with contextlib.suppress(OSError):
                remove_parent(self.layout, self.parent)

    def groups(self) -> list[str]:
        return list_sandbox_groups(self.layout, self.parent)


def _check(output: bytes, returncode: int | None) -> None:
    if output != EXPECTED or returncode != 0:
        raise RuntimeError(
            f"raw cycle: expected {EXPECTED!r} and exit 0, got exit {returncode}: {output[:500]!r}"
        )

"""What is particular to the ``gvisor`` backend: its platform choice, its host limits, and
that runsc leaves nothing behind, after ``destroy`` and after a crash and ``recover``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from stockade.sandbox.base import Resources
from stockade.sandbox.gvisor import (
    HOST_PIDS_PER_PROCESS,
    SENTRY_MEMORY,
    SENTRY_PIDS,
    GvisorBackend,
    choose_platform,
    host_limits,
)
from stockade.sandbox.oci import GVISOR_DENIED

pytest.register_assert_rewrite("tests.sandbox.contract")
from tests.sandbox import contract  # noqa: E402
from tests.sandbox import test_contract_gvisor as gvisor  # noqa: E402
from tests.sandbox.contract import Sandboxes, run  # noqa: E402
from tests.sandbox.test_contract_gvisor import GvisorHome, runsc_processes  # noqa: E402

backend = gvisor.backend
gvisor_home = gvisor.gvisor_home
abandon = gvisor.abandon
reopen = gvisor.reopen
sandboxes = contract.sandboxes


def test_the_platform_is_ptrace_unless_systrap_exists_or_one_is_asked_for() -> None:
    assert choose_platform(None, ["kvm", "ptrace"]) == "ptrace"
    assert choose_platform(None, ["kvm", "ptrace", "systrap"]) == "systrap"
    assert choose_platform("kvm", ["kvm", "ptrace"]) == "kvm"
    assert choose_platform(None, []) == "ptrace"


def test_host_limits_leave_room_for_the_sentry() -> None:
    limits = host_limits(Resources(memory_bytes=64 << 20, pids=64, cpu_millicores=500), 512)
    assert limits.memory_bytes == (64 << 20) + SENTRY_MEMORY
    assert limits.pids == SENTRY_PIDS + HOST_PIDS_PER_PROCESS * 64
    assert limits.cpu_millicores == 500
    default = host_limits(Resources(), 512)
    assert default.memory_bytes is None
    assert default.pids == SENTRY_PIDS + HOST_PIDS_PER_PROCESS * 512
    assert "syslog" not in GVISOR_DENIED


async def test_the_host_pids_limit_leaves_room_for_runsc_threads(
    backend: GvisorBackend, sandboxes: Sandboxes, gvisor_home: GvisorHome
) -> None:
    sandbox_id = await sandboxes.create(resources=Resources(pids=32))
    group = gvisor_home.group(sandbox_id)
    idle = len(group.pids())  # host processes and threads are both tasks in cgroup v1
    host_idle = int((group.v1["pids"] / "pids.current").read_text())
    assert 0 < idle <= host_idle < SENTRY_PIDS
    # 24 sandbox processes: the sandbox's own limit (32) is not reached, nor is the
    # host's, though the host counts far more than 24 tasks for them.
    script = "for i in $(seq 24); do sleep 300 & done; echo started"
    started = await run(backend, sandbox_id, ["sh", "-c", script])
    assert (started.exit_code, started.stdout, started.stderr) == (0, b"started\n", b"")
    assert (await backend.stats(sandbox_id)).pids == 24
    busy = int((group.v1["pids"] / "pids.current").read_text())
    assert host_idle + 24 < busy <= SENTRY_PIDS + HOST_PIDS_PER_PROCESS * 32
    # Past the sandbox's own limit, fork fails inside (RLIMIT_NPROC), not on the host.
    over = await run(backend, sandbox_id, ["sh", "-c", "for i in $(seq 16); do sleep 300 & done"])
    assert b"fork" in over.stderr.lower()
    assert (await backend.stats(sandbox_id)).pids < 32


def runsc_list(state: Path) -> list[str]:
    """What runsc itself lists under its state directory ``state``."""
    done = subprocess.run(
        ["runsc", f"--root={state}", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [c["id"] for c in json.loads(done.stdout or "[]") or []]


async def test_runsc_leaves_nothing_after_destroy_or_a_crash(
    backend: GvisorBackend,
    sandboxes: Sandboxes,
    gvisor_home: GvisorHome,
    abandon: Callable[[str], Awaitable[None]],
    reopen: Callable[[], contextlib.AbstractAsyncContextManager[GvisorBackend]],
) -> None:
    destroyed, crashed = await sandboxes.create(), await sandboxes.create()
    for sandbox_id in (destroyed, crashed):
        started = await run(backend, sandbox_id, ["sh", "-c", "sleep 300 > /dev/null 2>&1 &"])
        assert started.exit_code == 0
    listed = await asyncio.to_thread(runsc_list, gvisor_home.root / "runsc")
    assert sorted(listed) == sorted([destroyed, crashed])
    await backend.destroy(destroyed)
    assert gvisor.sandbox_traces(gvisor_home, destroyed) == []
    assert await asyncio.to_thread(runsc_list, gvisor_home.root / "runsc") == [crashed]
    await abandon(crashed)
    # The crash leaves runsc's record of the container (runsc run was killed before it
    # could delete it), the cgroup, the storage and the bundle; no process.
    assert await asyncio.to_thread(runsc_list, gvisor_home.root / "runsc") == [crashed]
    left = gvisor.sandbox_traces(gvisor_home, crashed)
    assert not [trace for trace in left if trace.startswith("process")]
    assert {trace.split()[0] for trace in left} >= {"cgroup", "storage", "bundle", "runsc"}
    async with reopen() as restarted:
        recovery = await restarted.recover([crashed])
        assert recovery.cleaned == (crashed,)
        assert recovery.adopted == ()
        assert gvisor.sandbox_traces(gvisor_home, crashed) == []
        assert await asyncio.to_thread(runsc_list, gvisor_home.root / "runsc") == []
    assert runsc_processes(str(gvisor_home.root)) == []

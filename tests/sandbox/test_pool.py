"""The warm pool: sandboxes started ahead, made into the caller's spec on create."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from stockade.sandbox.base import Resources, SandboxSpec, collect
from stockade.sandbox.cgroups import CgroupLayout
from stockade.sandbox.namespace import SPARE_NICE, NamespaceBackend

RUN_DIR = Path("/run/stockade")


async def settled(backend: NamespaceBackend, spares: int) -> None:
    """Wait (bounded) for the backend's background work, then expect ``spares``."""
    with anyio.fail_after(10):
        await backend.settle()
    assert len(backend._pool) == spares


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[NamespaceBackend]:
    backend = NamespaceBackend(
        RUN_DIR, tmp_path / "state", instance=f"pool-{tmp_path.name[-10:]}", pool_size=2
    )
    await backend.start()
    await settled(backend, 2)
    yield backend
    await backend.close()


def limit(backend: NamespaceBackend, sandbox_id: str, controller: str, name: str) -> str:
    live = backend._live[sandbox_id]
    return (live.group.v1[controller] / name).read_text().strip()


async def test_a_pooled_sandbox_takes_the_callers_limits_storage_and_env(
    backend: NamespaceBackend,
) -> None:
    pooled = {live.key for live in backend._pool}
    spec = SandboxSpec(
        id="env-pooled",
        resources=Resources(memory_bytes=96 << 20, storage_bytes=8 << 20, cpu_millicores=300),
        env={"GREETING": "hello"},
        command=("sh", "-c", "echo main runs"),
    )
    await backend.create(spec)
    live = backend._live["env-pooled"]
    assert live.key in pooled  # it came from the pool
    assert limit(backend, "env-pooled", "memory", "memory.limit_in_bytes") == str(96 << 20)
    assert limit(backend, "env-pooled", "cpu", "cpu.cfs_quota_us") == "30000"
    result = await collect(
        backend.exec("env-pooled", ["sh", "-c", "echo $GREETING; df -k /tmp | tail -1; nice"])
    )
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "hello"
    assert lines[1].split()[1] == str(8 << 10)  # the tmpfs was resized to 8 MiB
    assert lines[2] == "0"  # spares wait at background priority; handed out, they run at 0
    fill = await collect(backend.exec("env-pooled", ["sh", "-c", "head -c 16M /dev/zero > /tmp/f"]))
    assert b"No space left on device" in fill.stderr
    with anyio.fail_after(10):
        first = await anext(aiter(backend.logs("env-pooled", follow=True)))
    assert first.message == "main runs"
    # Handing one out starts another in the background.
    await settled(backend, 2)
    assert not pooled <= {live.key for live in backend._pool}


async def test_spares_wait_at_background_priority(backend: NamespaceBackend) -> None:
    for live in backend._pool:
        for pid in live.group.pids():
            assert os.getpriority(os.PRIO_PROCESS, pid) == SPARE_NICE


async def test_other_uids_and_a_read_only_home_start_fresh(backend: NamespaceBackend) -> None:
    pooled = {live.key for live in backend._pool}
    await backend.create(SandboxSpec(id="env-uid", run_as_user=2000))
    await backend.create(SandboxSpec(id="env-ro", read_only_root=True))
    assert backend._live["env-uid"].key == "env-uid"
    assert backend._live["env-ro"].key == "env-ro"
    assert {live.key for live in backend._pool} == pooled
    whoami = await collect(backend.exec("env-uid", ["id", "-u"]))
    assert whoami.stdout == b"2000\n"


async def test_a_pooled_sandbox_that_dies_is_replaced(backend: NamespaceBackend) -> None:
    victim = backend._pool[0]
    victim.group.kill()
    with anyio.fail_after(10):
        await victim.exited.wait()  # the backend notices through the same pidfd
    await settled(backend, 2)
    assert victim not in backend._pool
    assert not victim.workspace.directory.exists()
    layout = CgroupLayout.detect()
    assert not any((root / backend._parent / victim.key).exists() for root in layout.roots())


async def test_close_takes_the_pool_with_it(tmp_path: Path) -> None:
    instance = f"poolc-{tmp_path.name[-10:]}"
    backend = NamespaceBackend(RUN_DIR, tmp_path / "state", instance=instance, pool_size=3)
    await backend.start()
    await settled(backend, 3)
    await backend.close()
    assert not (RUN_DIR / instance).exists()
    layout = CgroupLayout.detect()
    assert not any((root / f"stockade-{instance}").exists() for root in layout.roots())

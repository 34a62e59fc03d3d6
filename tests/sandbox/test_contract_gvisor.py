"""The backend contract (``tests/sandbox/contract.py``) on the ``gvisor`` backend, on this
host for real: runsc (ptrace platform), cgroups and a capped tmpfs per sandbox under
``/run/stockade``. Each test gets its own backend instance (its own run directory, runsc
root and cgroup parent), and closing it must leave nothing of that instance on the host."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from stockade.sandbox.cgroups import CgroupLayout, SandboxCgroup
from stockade.sandbox.gvisor import GvisorBackend

# The contract's asserts explain their failures like this module's own.
pytest.register_assert_rewrite("tests.sandbox.contract")
from tests.sandbox.contract import *  # noqa: E402, F403 - the contract's tests and fixtures
from tests.sandbox.test_contract_namespace import mounts_under  # noqa: E402

RUN_DIR = Path("/run/stockade")
LAYOUT = CgroupLayout.detect()


@dataclass(frozen=True)
class GvisorHome:
    """Where one backend instance keeps its state on the host (the same questions as the
    namespace tests' ``NamespaceHome`` answers, so the escape tests can ask either)."""

    run_dir: Path
    state_dir: Path
    instance: str

    @property
    def root(self) -> Path:
        return self.run_dir / f"{self.instance}-gv"

    @property
    def parent(self) -> str:
        return f"stockade-{self.instance}-gv"

    def group(self, sandbox_id: str) -> SandboxCgroup:
        return SandboxCgroup.locate(LAYOUT, sandbox_id, parent=self.parent)

    def storage(self, sandbox_id: str) -> Path:
        return self.root / "sandboxes" / sandbox_id

    def bundle(self, sandbox_id: str) -> Path:
        return self.root / "bundles" / sandbox_id

    def runsc_state(self) -> list[str]:
        """The files under runsc's root: one state and one lock file per container."""
        state = self.root / "runsc"
        return sorted(p.name for p in state.iterdir()) if state.is_dir() else []

    def backend(self) -> GvisorBackend:
        return GvisorBackend(self.run_dir, self.state_dir, instance=self.instance)

    def traces(self) -> list[str]:
        """Whatever of the whole instance is on the host."""
        found = [str(p) for p in (self.root,) if p.exists()]
        found += [
            str(root / self.parent) for root in LAYOUT.roots() if (root / self.parent).exists()
        ]
        found += mounts_under(self.root)
        found += [f"process {pid}" for pid in runsc_processes(str(self.root))]
        return found


def runsc_processes(needle: str) -> list[int]:
    """Host processes whose command line names ``needle`` (runsc's root or a bundle)."""
    found = []
    wanted = needle.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if wanted in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


@pytest.fixture
def gvisor_home(tmp_path: Path) -> GvisorHome:
    return GvisorHome(RUN_DIR, tmp_path / "state", f"ct{secrets.token_hex(5)}")


@pytest.fixture
async def backend(gvisor_home: GvisorHome) -> AsyncIterator[GvisorBackend]:
    backend = gvisor_home.backend()
    reason = backend.unavailable_reason()
    if reason:
        pytest.fail(f"the gvisor backend cannot run here: {reason}", pytrace=False)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()
    assert gvisor_home.traces() == []


def sandbox_traces(home: GvisorHome, sandbox_id: str) -> list[str]:
    """Whatever of one sandbox is on the host: cgroup, storage, mounts, bundle, runsc's
    state, and runsc's processes (their command lines name the bundle)."""
    group = home.group(sandbox_id)
    storage = home.storage(sandbox_id)
    bundle = home.bundle(sandbox_id)
    found = [f"cgroup {d}" for d in group.dirs if d.exists()]
    found += [f"storage {storage}"] if storage.exists() else []
    found += mounts_under(storage)
    found += [f"bundle {bundle}"] if bundle.exists() else []
    found += [f"runsc state {n}" for n in home.runsc_state() if sandbox_id in n]
    found += [f"process {pid}" for pid in runsc_processes(f"{bundle}")]
    return found


@pytest.fixture
def host_traces(gvisor_home: GvisorHome) -> Callable[[str], list[str]]:
    return lambda sandbox_id: sandbox_traces(gvisor_home, sandbox_id)


@pytest.fixture
def abandon(backend: GvisorBackend) -> Callable[[str], Awaitable[None]]:
    """What a daemon crash does to a sandbox: ``runsc run`` (the daemon's child) is
    killed with it, and the daemon's ends of the agent's pipes close; the agent, the
    container's init, reads the end of its input and the container ends. runsc's state,
    the cgroup, the storage and the bundle stay behind."""

    async def leave(sandbox_id: str) -> None:
        live = backend._live[sandbox_id]
        runsc_run = live.process.pid
        os.kill(runsc_run, 9)
        async with asyncio.timeout(30):
            await live.exited.wait()
        del backend._live[sandbox_id]
        live.release()  # closes the pipes, as the dying daemon's kernel would

        async def gone() -> bool:
            return not live.group.pids()

        await wait_for(gone, "the abandoned sandbox's processes to end", patience=30)  # noqa: F405

    return leave


@pytest.fixture
def reopen(
    gvisor_home: GvisorHome,
) -> Callable[[], contextlib.AbstractAsyncContextManager[GvisorBackend]]:
    @contextlib.asynccontextmanager
    async def restarted() -> AsyncIterator[GvisorBackend]:
        backend = gvisor_home.backend()
        await backend.start()
        try:
            yield backend
        finally:
            await backend.close()

    return restarted

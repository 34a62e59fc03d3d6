"""The backend contract (``tests/sandbox/contract.py``) on the ``namespace`` backend, on
this host for real: bubblewrap, cgroups and a capped tmpfs per sandbox under
``/run/stockade``. Each test gets its own backend instance (its own run directory and
cgroup parent), and closing it must leave nothing of that instance on the host."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from stockade.sandbox.cgroups import CgroupLayout, SandboxCgroup
from stockade.sandbox.namespace import NamespaceBackend

# The contract's asserts explain their failures like this module's own.
pytest.register_assert_rewrite("tests.sandbox.contract")
from tests.sandbox.contract import *  # noqa: E402, F403 - the contract's tests and fixtures

RUN_DIR = Path("/run/stockade")
LAYOUT = CgroupLayout.detect()


@dataclass(frozen=True)
class NamespaceHome:
    """Where one backend instance keeps its state on the host."""

    run_dir: Path
    state_dir: Path
    instance: str

    @property
    def root(self) -> Path:
        return self.run_dir / self.instance

    @property
    def parent(self) -> str:
        return f"stockade-{self.instance}"

    def group(self, sandbox_id: str) -> SandboxCgroup:
        return SandboxCgroup.locate(LAYOUT, sandbox_id, parent=self.parent)

    def storage(self, sandbox_id: str) -> Path:
        return self.root / "sandboxes" / sandbox_id

    def backend(self) -> NamespaceBackend:
        return NamespaceBackend(self.run_dir, self.state_dir, instance=self.instance)

    def traces(self) -> list[str]:
        """Whatever of the whole instance is on the host."""
        found = [str(p) for p in (self.root,) if p.exists()]
        found += [
            str(root / self.parent) for root in LAYOUT.roots() if (root / self.parent).exists()
        ]
        found += mounts_under(self.root)
        return found


def mounts_under(directory: Path) -> list[str]:
    prefix = f"{directory}/"
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [f"mount {p}" for p in points if p == str(directory) or p.startswith(prefix)]


@pytest.fixture
def namespace_home(tmp_path: Path) -> NamespaceHome:
    return NamespaceHome(RUN_DIR, tmp_path / "state", f"ct{secrets.token_hex(5)}")


@pytest.fixture
async def backend(namespace_home: NamespaceHome) -> AsyncIterator[NamespaceBackend]:
    backend = namespace_home.backend()
    reason = backend.unavailable_reason()
    if reason:
        pytest.fail(f"the namespace backend cannot run here: {reason}", pytrace=False)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()
    assert namespace_home.traces() == []


@pytest.fixture
def host_traces(namespace_home: NamespaceHome) -> Callable[[str], list[str]]:
    def traces(sandbox_id: str) -> list[str]:
        group = namespace_home.group(sandbox_id)
        storage = namespace_home.storage(sandbox_id)
        found = [f"cgroup {d}" for d in group.dirs if d.exists()]
        found += [f"storage {storage}"] if storage.exists() else []
        found += mounts_under(storage)
        # bubblewrap's command line names the storage it binds.
        needle = f"{storage}/".encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if needle in (entry / "cmdline").read_bytes():
                        found.append(f"process {entry.name}")
        return found

    return traces


@pytest.fixture
def abandon(backend: NamespaceBackend) -> Callable[[str], Awaitable[None]]:
    """What a daemon crash does to a sandbox: ``--die-with-parent`` kills its processes,
    and its cgroup, storage and logs stay behind."""

    async def leave(sandbox_id: str) -> None:
        live = backend._live[sandbox_id]
        monitor = live.process.pid
        # Kill the sandbox's init (bubblewrap's child), as the parent-death signal would;
        # bubblewrap, our child, then exits and is reaped here.
        children_of = Path(f"/proc/{monitor}/task/{monitor}/children")
        children = (await asyncio.to_thread(children_of.read_text)).split()
        assert children
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
        async with asyncio.timeout(30):
            await live.exited.wait()
        del backend._live[sandbox_id]
        live.release()
        assert not live.group.pids()

    return leave


@pytest.fixture
def reopen(
    namespace_home: NamespaceHome,
) -> Callable[[], contextlib.AbstractAsyncContextManager[NamespaceBackend]]:
    @contextlib.asynccontextmanager
    async def restarted() -> AsyncIterator[NamespaceBackend]:
        backend = namespace_home.backend()
        await backend.start()
        try:
            yield backend
        finally:
            await backend.close()

    return restarted

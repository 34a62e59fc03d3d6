"""A sandbox whose main command floods its output slows itself, not the daemon."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from stockade.sandbox.base import SandboxSpec, collect
from stockade.sandbox.logbook import LOG_LINES_PER_SECOND
from stockade.sandbox.namespace import NamespaceBackend


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[NamespaceBackend]:
    backend = NamespaceBackend(
        Path("/run/stockade"), tmp_path / "state", instance=f"logs-{tmp_path.name[-12:]}"
    )
    await backend.start()
    yield backend
    await backend.close()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def test_a_log_flood_is_capped_and_costs_the_daemon_little(
    backend: NamespaceBackend,
) -> None:
    await backend.create(SandboxSpec(id="flood", command=("yes",)))
    before = cpu_seconds()
    # The flood is cut at each second's budget, and the next second begins with a note
    # of what was dropped: two notes are two seconds of flood.
    notes = 0
    with anyio.fail_after(15):
        async with contextlib.aclosing(backend.logs("flood", tail=1, follow=True)) as followed:
            async for line in followed:
                notes += line.message.startswith("[stockade]")
                if notes == 2:
                    break
    spent = cpu_seconds() - before
    # Unthrottled, splitting `yes` into lines kept one core busy the whole time.
    assert spent < 1.0, spent
    answer = await collect(backend.exec("flood", ["echo", "still here"]))
    assert answer.stdout == b"still here\n"
    lines = [line async for line in backend.logs("flood")]
    assert 0 < len(lines) <= 4 * (LOG_LINES_PER_SECOND + 1)
    assert lines[0].message == "y"
    notes = [line for line in lines if line.message.startswith("[stockade]")]
    assert notes, "the dropped output was not reported"
    assert all(line.stream == "stderr" for line in notes)
    assert "bytes of output dropped" in notes[0].message

"""``bench/sandbox.py --backend gvisor``: the ``gvisor`` backend's costs, each beside the
floor ``runsc --network=none do /bin/true`` measured in the same run (issue 6, item 5).

Not a test. It drives ``GvisorBackend`` in this process (no daemon, no HTTP: what is
measured is the backend), as root, and measures, in --rounds interleaved rounds (a floor
run, then the backend's, so that a noisy neighbour slows both alike):

(a) cycle: ``create`` -> ``exec ["echo", "hi"]`` -> ``destroy``, --cycles times.
    "create -> first output" is from the call to ``create`` to the first output of the
    exec; the whole cycle includes ``destroy``. Target: create -> first output p50
    <= 1.3x the floor.
(b) exec round trip of ``true`` in one running sandbox, --execs times, through the agent
    (what the backend does), and beside it through ``runsc exec`` (the alternative).
(c) memory per idle sandbox: --idle sandboxes, --settle seconds of rest, then the memory
    cgroup's usage (runsc's sandbox, gofer and stubs, and the storage's pages) summed and
    divided by the count; and the Rss and Pss of the processes in their cgroups.

Floor: ``runsc --root <tmp> --network=none --platform=<the backend's> do /bin/true``, a
whole cold start and exit of a gVisor sandbox with runsc's own defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stockade.sandbox.base import Output, SandboxSpec, collect
from stockade.sandbox.gvisor import GvisorBackend

RUN_DIR = Path("/run/stockade")
TARGET_RATIO = 1.3


@dataclass
class Results:
    platform: str
    floor_ms: list[float]
    first_output_ms: list[float]
    cycle_ms: list[float]
    destroy_ms: list[float]
    exec_agent_ms: list[float]
    exec_runsc_ms: list[float]
    idle_count: int
    idle_cgroup_mib: float
    idle_rss_mib: float
    idle_pss_mib: float


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def floor_once(platform: str, root: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["runsc", f"--root={root}", "--network=none", f"--platform={platform}", "do", "/bin/true"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return (time.perf_counter() - started) * 1000


async def cycle_once(backend: GvisorBackend) -> tuple[float, float, float]:
    """(create -> first output, whole cycle, destroy) in ms."""
    sandbox_id = f"bench-{secrets.token_hex(5)}"
    started = time.perf_counter()
    await backend.create(SandboxSpec(id=sandbox_id))
    first = 0.0
    try:
        async for event in backend.exec(sandbox_id, ["echo", "hi"]):
            if isinstance(event, Output) and not first:
                first = (time.perf_counter() - started) * 1000
                assert event.data == b"hi\n", event
    finally:
        before_destroy = time.perf_counter()
        await backend.destroy(sandbox_id)
    ended = time.perf_counter()
    return first, (ended - started) * 1000, (ended - before_destroy) * 1000


async def measure(args: argparse.Namespace, backend: GvisorBackend, floor_root: Path) -> Results:
    platform = backend.platform
    floors: list[float] = []
    firsts: list[float] = []
    cycles: list[float] = []
    destroys: list[float] = []
    for _ in range(args.warmup):
        await asyncio.to_thread(floor_once, platform, floor_root)
        await cycle_once(backend)
    per_round = max(1, args.cycles // args.rounds)
    for index in range(args.rounds):
        print(f"(a) round {index + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for _ in range(per_round):
            floors.append(await asyncio.to_thread(floor_once, platform, floor_root))
            first, whole, destroy = await cycle_once(backend)
            firsts.append(first)
            cycles.append(whole)
            destroys.append(destroy)
    print("(b) exec round trips", file=sys.stderr, flush=True)
    agent, runsc = await exec_round_trips(args, backend)
    print("(c) idle memory", file=sys.stderr, flush=True)
    cgroup, rss, pss = await idle_memory(args, backend)
    return Results(
        platform, floors, firsts, cycles, destroys, agent, runsc, args.idle, cgroup, rss, pss
    )


async def exec_round_trips(
    args: argparse.Namespace, backend: GvisorBackend
) -> tuple[list[float], list[float]]:
    sandbox_id = f"bench-{secrets.token_hex(5)}"
    await backend.create(SandboxSpec(id=sandbox_id))
    agent: list[float] = []
    runsc: list[float] = []
    try:
        for _ in range(args.warmup * 4):
            await collect(backend.exec(sandbox_id, ["true"]))
        argv = [*backend._runsc("exec", "--user=1000:1000", sandbox_id, "/bin/true")]
        for _ in range(args.execs):
            started = time.perf_counter()
            result = await collect(backend.exec(sandbox_id, ["true"]))
            agent.append((time.perf_counter() - started) * 1000)
            assert result.exit_code == 0
            started = time.perf_counter()
            await asyncio.to_thread(subprocess.run, argv, check=True, capture_output=True)
            runsc.append((time.perf_counter() - started) * 1000)
    finally:
        await backend.destroy(sandbox_id)
    return agent, runsc


async def idle_memory(
    args: argparse.Namespace, backend: GvisorBackend
) -> tuple[float, float, float]:
    ids = [f"bench-{secrets.token_hex(5)}" for _ in range(args.idle)]
    try:
        for sandbox_id in ids:
            await backend.create(SandboxSpec(id=sandbox_id))
        await asyncio.sleep(args.settle)
        cgroup = rss = pss = 0
        for sandbox_id in ids:
            live = backend._live[sandbox_id]
            cgroup += live.group.stats().memory_bytes or 0
            for pid in live.group.pids():
                rss_kib, pss_kib = _smaps(pid)
                rss += rss_kib * 1024
                pss += pss_kib * 1024
    finally:
        for sandbox_id in ids:
            await backend.destroy(sandbox_id)
    mib = float(args.idle * (1 << 20))
    return cgroup / mib, rss / mib, pss / mib


def _smaps(pid: int) -> tuple[int, int]:
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0, 0
    fields = {line.split(":")[0]: int(line.split()[1]) for line in lines[1:] if ":" in line}
    return fields.get("Rss", 0), fields.get("Pss", 0)


def print_table(results: Results) -> None:
    floor = p50(results.floor_ms)
    first = p50(results.first_output_ms)
    print(f"gvisor backend, platform {results.platform}; p50 in ms (n per row in brackets)")
    print(f"  floor: runsc do /bin/true          {floor:8.1f}  [{len(results.floor_ms)}]")
    ratio = first / floor
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(
        f"  (a) create -> first output          {first:8.1f}  = {ratio:.2f}x floor "
        f"(target <= {TARGET_RATIO}x: {verdict})"
    )
    print(f"      create -> exec -> destroy       {p50(results.cycle_ms):8.1f}")
    print(f"      of which destroy                {p50(results.destroy_ms):8.1f}")
    agent, runsc = p50(results.exec_agent_ms), p50(results.exec_runsc_ms)
    print(f"  (b) exec `true` via the agent       {agent:8.1f}  = {agent / floor:.2f}x floor")
    print(f"      exec `true` via runsc exec      {runsc:8.1f}  = {runsc / floor:.2f}x floor")
    print(
        f"  (c) memory per idle sandbox [{results.idle_count}]: cgroup "
        f"{results.idle_cgroup_mib:.1f} MiB, Rss {results.idle_rss_mib:.1f} MiB, "
        f"Pss {results.idle_pss_mib:.1f} MiB"
    )


async def run(args: argparse.Namespace) -> Results:
    with tempfile.TemporaryDirectory(prefix="stockade-bench-gvisor-") as temp:
        backend = GvisorBackend(
            RUN_DIR, Path(temp) / "state", instance=f"bench{secrets.token_hex(4)}"
        )
        reason = backend.unavailable_reason()
        if reason:
            raise SystemExit(f"the gvisor backend cannot run here: {reason}")
        await backend.start()
        try:
            return await measure(args, backend, Path(temp) / "floor-root")
        finally:
            await backend.close()


def main(args: argparse.Namespace) -> int:
    results = asyncio.run(run(args))
    if args.json:
        print(json.dumps(asdict(results), indent=2))
    else:
        print_table(results)
    return 0

"""Sandbox life-cycle costs through Stockade's REST API, each beside a floor measured in the
same run (issue 3, acceptance item 7).

Not a test: a benchmark to run by hand, as root (the ``namespace`` backend needs it).

    .venv/bin/python bench/sandbox.py [--cycles 200] [--execs 1000] [--concurrent 50]
                                      [--idle 200] [--json] [--backend namespace]

``--backend gvisor`` measures the ``gvisor`` backend instead, in this process and beside
the floor ``runsc --network=none do /bin/true`` (``bench/sandbox_gvisor.py``: (a) the
create -> first output -> destroy cycle, (b) the exec round trip, (c) memory per idle
sandbox), with smaller defaults (30 cycles, 200 execs, 10 idle sandboxes).

It starts ONE ``stockade daemon`` process (``python -m stockade daemon``: uvicorn, one
worker, SQLite) with a temporary STOCKADE_HOME on a free loopback port, rate limits
disabled, log level "warning", STOCKADE_SANDBOX_MAX raised above what (c) and (d) need;
logs in as admin and measures, over a keep-alive http.client connection (httpx, async,
for (c)), on the ``namespace`` backend:

(a) cycle: POST /api/v1/environments {"name": "bench"} -> POST .../{id}/exec
    ["echo", "hi"] (stdout must be "hi\\n") -> DELETE .../{id}?force=true, one after the
    other, --cycles times. p50/p90/p99 of the whole cycle in ms, and of each of its three
    requests; "spawn" is the daemon's own spawn_time_ms from the create answer (time
    inside the backend's create), so create minus spawn is HTTP + service + store.
    Floor: a raw cycle done by this script, no daemon (bench/sandbox_floor.py): make a
    cgroup with the daemon's default limits, spawn ``stockade-agent launch`` -> bwrap
    (default Profile, fresh seccomp fd) -> ``sh -c 'echo hi'``, read "hi", wait,
    destroy the cgroup. Target: p50 <= 2x the floor and <= 20 ms.
(b) exec: POST .../{id}/exec ["true"] in one running sandbox, --execs times.
    Floor: subprocess.run(["/bin/true"]) from this script (a raw fork and exec).
    Beside it, GET /api/v1/auth/me: what any authenticated request costs over HTTP.
    Target: p50 <= 5 ms.
(c) concurrent: --concurrent creates sent at once (async client); wall time from the
    first request to the last answer ("running"), then all deleted at once (wall time
    reported separately), --concurrent-rounds times. Floor: --concurrent raw cycles
    started at once on one event loop (wall time until all are done and their cgroups
    removed; "floor up" is until each said hi). Target: all running within 1 s
    (judged on the median round; the worst round is shown too).
(d) idle memory: --idle sandboxes created, --settle seconds of rest, then summed over
    them: the memory cgroup's usage (v1 memory.usage_in_bytes: their processes' pages,
    kernel objects and their tmpfs pages), and the Rss and Pss (/proc/PID/smaps_rollup)
    of every process in their cgroups; and the daemon's own RSS growth. Each divided by
    the count, in MiB. Target: (cgroup + daemon RSS growth) per sandbox <= 4 MiB.

(a) and (b) run in --rounds interleaved rounds (floor and API alternate which goes
first), so that a noisy neighbour slows both alike; percentiles pool every round, and
"x floor" is the median of the per-round ratios of p50s. Everything is cleaned up at
the end, on Ctrl-C or on failure: the sandboxes (DELETE, then the daemon's own shutdown,
then a direct removal of whatever is still there), the daemon, and the floor's cgroup
parent; the script then checks that no cgroup, mount or run directory is left.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sandbox_gvisor
from sandbox_floor import FLOOR_PARENT, CycleTimes, RawCycle

from stockade.sandbox.cgroups import CgroupLayout, SandboxCgroup, list_sandbox_groups, remove_parent
from stockade.sandbox.namespace import instance_name
from stockade.sandbox.workspace import Workspace, mounts_under, unmount
from stockade.testing import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = Path("/run/stockade")
LOG_LEVEL = "warning"
MIB = 2**20
TARGET_A_RATIO = 2.0
TARGET_A_MS = 20.0
TARGET_B_MS = 5.0
TARGET_C_MS = 1000.0
TARGET_D_MIB = 4.0
REQUEST_TIMEOUT = 60.0


# -- arguments ---------------------------------------------------------------------------------


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n", 1)[0] + "\n\n" + doc.split("\n\n", 2)[2],
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--backend",
        choices=("namespace", "gvisor"),
        default="namespace",
        help="the sandbox backend to measure (gvisor: bench/sandbox_gvisor.py)",
    )
    parser.add_argument(
        "--cycles", type=int, default=None, help="(a) create/exec/destroy cycles (200; gvisor 30)"
    )
    parser.add_argument(
        "--execs", type=int, default=None, help="(b) exec round trips of `true` (1000; gvisor 200)"
    )
    parser.add_argument("--concurrent", type=int, default=50, help="(c) creates sent at once")
    parser.add_argument(
        "--concurrent-rounds", type=int, default=3, help="(c) rounds, each beside a floor round"
    )
    parser.add_argument(
        "--idle", type=int, default=None, help="(d) idle sandboxes to measure (200; gvisor 10)"
    )
    parser.add_argument(
        "--pool",
        type=int,
        default=None,
        help="STOCKADE_SANDBOX_POOL for the daemon (default: its own, 4); 0 measures cold starts",
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="(d) seconds to wait before measuring"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="(a) and (b): split the cycles and execs into this many interleaved rounds",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="unrecorded cycles (a), and 4x as many execs (b), of the API and the floor first",
    )
    parser.add_argument(
        "--only",
        default="abcd",
        help="run only these measurements (letters out of 'abcd'), e.g. --only ab",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=60.0, help="seconds to wait for /health"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the results as JSON on stdout instead of the table (progress goes to stderr)",
    )
    args = parser.parse_args(argv)
    gvisor = args.backend == "gvisor"
    for name, default, small in (("cycles", 200, 30), ("execs", 1000, 200), ("idle", 200, 10)):
        if getattr(args, name) is None:
            setattr(args, name, small if gvisor else default)
    if set(args.only) - set("abcd") or not args.only:
        parser.error("--only takes letters out of 'abcd'")
    if min(args.cycles, args.execs, args.concurrent, args.idle, args.rounds) < 1:
        parser.error("--cycles, --execs, --concurrent, --idle and --rounds must be >= 1")
    if args.concurrent_rounds < 1 or args.warmup < 0 or args.settle < 0:
        parser.error("need --concurrent-rounds >= 1, --warmup >= 0 and --settle >= 0")
    return args


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- statistics --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Distribution:
    n: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Distribution:
        return cls(
            n=len(values),
            p50=percentile(values, 50),
            p90=percentile(values, 90),
            p99=percentile(values, 99),
            max=max(values) if values else float("nan"),
        )


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` nearly equal positive pieces (fewer when total < parts)."""
    parts = min(parts, total)
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def median_ratio(rounds: list[tuple[list[float], list[float]]]) -> float:
    """The median over rounds of (measured p50 / floor p50) within each round."""
    ratios = [
        statistics.median(measured) / statistics.median(floor)
        for measured, floor in rounds
        if measured and floor and statistics.median(floor) > 0
    ]
    return statistics.median(ratios) if ratios else float("nan")


# -- the daemon --------------------------------------------------------------------------------


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    url: str
    home: Path
    log: Path
    instance: str

    @property
    def parent(self) -> str:
        """Its cgroup parent, as ``NamespaceBackend`` names it."""
        return f"stockade-{self.instance}"

    @property
    def run_root(self) -> Path:
        return RUN_DIR / self.instance

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_daemon(
    tmp: Path,
    password: str,
    sandbox_max: int,
    pool: int | None = None,
    env_extra: dict[str, str] | None = None,
) -> Daemon:
    """``env_extra`` (``STOCKADE_*`` variables) overrides the defaults below."""
    home = tmp / "home"
    log = tmp / "daemon.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    env |= {
        "STOCKADE_HOME": str(home),
        "STOCKADE_HOST": "127.0.0.1",
        "STOCKADE_PORT": str(port),
        "STOCKADE_ADMIN_PASSWORD": password,
        "STOCKADE_LOG_LEVEL": LOG_LEVEL,
        "STOCKADE_RATE_LIMIT_ENABLED": "false",
        "STOCKADE_SANDBOX_MAX": str(sandbox_max),
        **({"STOCKADE_SANDBOX_POOL": str(pool)} if pool is not None else {}),
        "PYTHONUNBUFFERED": "1",
        **(env_extra or {}),
    }
    with log.open("wb") as sink:
        # Own session: a Ctrl-C reaches this script, which then cleans up and stops it.
        process = subprocess.Popen(
            [sys.executable, "-m", "stockade", "daemon"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Daemon(process, f"http://127.0.0.1:{port}", home, log, instance_name(home))


def wait_healthy(daemon: Daemon, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise RuntimeError(
                f"daemon exited with {daemon.process.returncode}:\n{daemon.output()}"
            )
        try:
            response = httpx.get(f"{daemon.url}/health", timeout=2.0)
            if response.status_code == 200:
                body = response.json()
                if "namespace: ok" not in json.dumps(body):
                    raise RuntimeError(f"the namespace backend is not available: {body}")
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"/health not 200 after {timeout:g} s:\n{daemon.output()[-4000:]}")


def login(url: str, password: str) -> str:
    response = httpx.post(
        f"{url}/api/v1/auth/login",
        json={"username": "admin", "password": password},
        timeout=REQUEST_TIMEOUT,
    )
    if response.status_code != 200:
        raise RuntimeError(f"login answered {response.status_code}: {response.text[:500]}")
    token: str = response.json()["token"]
    return token


def rss_pss(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of one process in bytes, from /proc/PID/smaps_rollup; (0, 0) if gone."""
    rss = pss = 0
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("Pss:"):
            pss = int(line.split()[1]) * 1024
    return rss, pss


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


# -- the API client ----------------------------------------------------------------------------

ENVIRONMENTS = "/api/v1/environments"
IDLE_RECONNECT = 2.0  # seconds


class Api:
    """The REST calls the benchmark makes, on one keep-alive connection; every sandbox it
    creates is remembered in ``alive`` until it is deleted.

    The timed calls go through the standard library's ``http.client``: httpx costs about
    1 ms more per request on this machine (1.9 ms against 0.9 ms for ``GET auth/me``),
    which would be the client's time, not the daemon's."""

    def __init__(self, url: str, token: str) -> None:
        self.headers = {"Authorization": f"Bearer {token}"}
        self.url = url
        self.client = httpx.Client(base_url=url, headers=self.headers, timeout=REQUEST_TIMEOUT)
        address = httpx.URL(url)
        self._http = http.client.HTTPConnection(address.host, address.port, timeout=REQUEST_TIMEOUT)
        self._json_headers = {**self.headers, "Content-Type": "application/json"}
        self._used = time.monotonic()
        self.alive: set[str] = set()

    def close(self) -> None:
        self.client.close()
        self._http.close()

    def _call(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        if time.monotonic() - self._used > IDLE_RECONNECT:
            self._http.close()  # uvicorn closes a connection idle for 5 s; open a new one
        self._used = time.monotonic()
        payload = None if body is None else json.dumps(body).encode()
        headers = self._json_headers if payload is not None else self.headers
        self._http.request(method, path, body=payload, headers=headers)
        response = self._http.getresponse()
        return response.status, response.read()

    def create(self) -> tuple[str, float]:
        """A sandbox's id and the daemon's spawn_time_ms."""
        status, body = self._call("POST", ENVIRONMENTS, {"name": "bench"})
        return self._created(status, body)

    def _created(self, status: int, raw: bytes) -> tuple[str, float]:
        if status != 201:
            raise RuntimeError(f"create answered {status}: {raw[:500]!r}")
        body = json.loads(raw)
        self.alive.add(body["id"])
        if body["status"] != "running":
            raise RuntimeError(f"sandbox {body['id']} is {body['status']}: {body['status_reason']}")
        return body["id"], float(body.get("spawn_time_ms") or 0.0)

    def exec(self, env_id: str, argv: list[str]) -> dict[str, Any]:
        status, raw = self._call("POST", f"{ENVIRONMENTS}/{env_id}/exec", {"command": argv})
        if status != 200:
            raise RuntimeError(f"exec answered {status}: {raw[:500]!r}")
        result: dict[str, Any] = json.loads(raw)
        return result

    def delete(self, env_id: str) -> None:
        status, raw = self._call("DELETE", f"{ENVIRONMENTS}/{env_id}?force=true")
        self._deleted(env_id, status, raw)

    def _deleted(self, env_id: str, status: int, raw: bytes) -> None:
        if status not in (204, 404):
            raise RuntimeError(f"delete answered {status}: {raw[:500]!r}")
        self.alive.discard(env_id)

    def me(self) -> None:
        status, raw = self._call("GET", "/api/v1/auth/me")
        if status != 200:
            raise RuntimeError(f"auth/me answered {status}: {raw[:500]!r}")

    def live_ids(self) -> list[str]:
        """Every pending or running environment of the daemon (it only has ours)."""
        ids: list[str] = []
        for status in ("pending", "running"):
            response = self.client.get(ENVIRONMENTS, params={"status": status, "limit": 1000})
            response.raise_for_status()
            ids += [e["id"] for e in response.json()["environments"]]
        return ids


def echo_hi(api: Api, env_id: str) -> None:
    result = api.exec(env_id, ["echo", "hi"])
    if result["stdout"] != "hi\n" or result["exit_code"] != 0:
        raise RuntimeError(f"echo hi in {env_id} gave {result}")


# -- (a) create -> exec -> destroy ---------------------------------------------------------------


@dataclass
class CycleResult:
    total: Distribution
    create: Distribution
    spawn: Distribution  # the daemon's spawn_time_ms: inside the backend's create
    exec: Distribution
    destroy: Distribution
    floor: Distribution
    floor_cgroup: Distribution  # cgroup made and limited
    floor_run: Distribution  # bwrap spawned, said hi, exited
    ratio: float


def api_cycle(api: Api) -> tuple[float, float, float, float, float]:
    """(total, create, spawn, exec, destroy) in ms."""
    started = time.perf_counter()
    env_id, spawn = api.create()
    created = time.perf_counter()
    echo_hi(api, env_id)
    executed = time.perf_counter()
    api.delete(env_id)
    done = time.perf_counter()
    return (
        (done - started) * 1000,
        (created - started) * 1000,
        spawn,
        (executed - created) * 1000,
        (done - executed) * 1000,
    )


def measure_cycles(args: argparse.Namespace, api: Api, floor: RawCycle) -> CycleResult:
    for _ in range(args.warmup):
        api_cycle(api)
        floor.cycle()
    samples: list[tuple[float, float, float, float, float]] = []
    floors: list[CycleTimes] = []
    rounds: list[tuple[list[float], list[float]]] = []
    sizes = split(args.cycles, args.rounds)
    for number, size in enumerate(sizes):
        note(f"(a) round {number + 1}/{len(sizes)}: {size} API cycles and {size} raw cycles")
        measured: list[float] = []
        floored: list[float] = []

        def run_api(size: int = size, measured: list[float] = measured) -> None:
            for _ in range(size):
                sample = api_cycle(api)
                samples.append(sample)
                measured.append(sample[0])

        def run_floor(size: int = size, floored: list[float] = floored) -> None:
            for _ in range(size):
                times = floor.cycle()
                floors.append(times)
                floored.append(times.total_ms)

        for step in (run_api, run_floor) if number % 2 == 0 else (run_floor, run_api):
            step()
        rounds.append((measured, floored))
    return CycleResult(
        total=Distribution.of([s[0] for s in samples]),
        create=Distribution.of([s[1] for s in samples]),
        spawn=Distribution.of([s[2] for s in samples]),
        exec=Distribution.of([s[3] for s in samples]),
        destroy=Distribution.of([s[4] for s in samples]),
        floor=Distribution.of([f.total_ms for f in floors]),
        floor_cgroup=Distribution.of([f.cgroup_ms for f in floors]),
        floor_run=Distribution.of([f.exited_ms - f.cgroup_ms for f in floors]),
        ratio=median_ratio(rounds),
    )


# -- (b) exec round trip -----------------------------------------------------------------------


@dataclass
class ExecResult:
    exec: Distribution
    floor: Distribution
    ratio: float
    http: Distribution  # GET /api/v1/auth/me: the HTTP + auth part of any request


def measure_execs(args: argparse.Namespace, api: Api) -> ExecResult:
    env_id, _ = api.create()
    try:

        def one_exec() -> float:
            started = time.perf_counter()
            result = api.exec(env_id, ["true"])
            took = (time.perf_counter() - started) * 1000
            if result["exit_code"] != 0:
                raise RuntimeError(f"`true` in {env_id} gave {result}")
            return took

        def one_fork() -> float:
            started = time.perf_counter()
            subprocess.run(["/bin/true"], check=True)
            return (time.perf_counter() - started) * 1000

        def one_me() -> float:
            started = time.perf_counter()
            api.me()
            return (time.perf_counter() - started) * 1000

        for _ in range(args.warmup * 4):
            one_exec()
            one_fork()
            one_me()
        execs: list[float] = []
        forks: list[float] = []
        mes: list[float] = []
        rounds: list[tuple[list[float], list[float]]] = []
        sizes = split(args.execs, args.rounds)
        note(f"(b) {args.execs} execs of `true` in {env_id} beside as many fork+exec, "
             f"in {len(sizes)} rounds")  # fmt: skip
        for number, size in enumerate(sizes):
            measured = [one_exec() for _ in range(size)] if number % 2 == 0 else []
            floored = [one_fork() for _ in range(size)]
            if number % 2:
                measured = [one_exec() for _ in range(size)]
            mes += [one_me() for _ in range(size)]
            execs += measured
            forks += floored
            rounds.append((measured, floored))
    finally:
        api.delete(env_id)
    return ExecResult(
        Distribution.of(execs), Distribution.of(forks), median_ratio(rounds), Distribution.of(mes)
    )


# -- (c) concurrent creates --------------------------------------------------------------------


@dataclass
class ConcurrentRound:
    create_ms: float  # first request to the last "running" answer
    slowest_create_ms: float  # the slowest single request
    destroy_ms: float  # all DELETEs at once, first to last answer
    floor_ms: float  # all raw cycles done (cgroups removed)
    floor_up_ms: float  # every raw sandbox said hi


@dataclass
class ConcurrentResult:
    count: int
    rounds: list[ConcurrentRound]
    create_ms: float = 0.0  # median over rounds
    create_max_ms: float = 0.0
    destroy_ms: float = 0.0
    floor_ms: float = 0.0
    floor_up_ms: float = 0.0
    ratio: float = 0.0


async def api_concurrent(api: Api, count: int) -> tuple[float, float, float]:
    """(create wall, slowest create, destroy wall) in ms for ``count`` sandboxes at once."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(
        base_url=api.url, headers=api.headers, timeout=REQUEST_TIMEOUT, limits=limits
    ) as client:
        # Open the connections first, so the measurement is of creates, not of TCP set-up.
        await asyncio.gather(*(client.get("/health") for _ in range(count)))

        async def create() -> tuple[str, float]:
            started = time.perf_counter()
            response = await client.post(ENVIRONMENTS, json={"name": "bench"})
            api._created(response.status_code, response.content)
            return response.json()["id"], (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        results = await asyncio.gather(*(create() for _ in range(count)), return_exceptions=True)
        create_wall = (time.perf_counter() - started) * 1000
        failures = [r for r in results if isinstance(r, BaseException)]
        created = [r for r in results if not isinstance(r, BaseException)]

        async def delete(env_id: str) -> None:
            response = await client.delete(f"{ENVIRONMENTS}/{env_id}", params={"force": "true"})
            api._deleted(env_id, response.status_code, response.content)

        started = time.perf_counter()
        await asyncio.gather(*(delete(i) for i in list(api.alive)))
        destroy_wall = (time.perf_counter() - started) * 1000
        if failures:
            raise RuntimeError(f"{len(failures)} of {count} creates failed: {failures[0]}")
        return create_wall, max(took for _, took in created), destroy_wall


async def floor_concurrent(floor: RawCycle, count: int) -> tuple[float, float]:
    """(wall until all done, wall until all said hi) in ms for ``count`` raw cycles."""
    started = time.perf_counter()
    results = await asyncio.gather(
        *(floor.cycle_async(started) for _ in range(count)), return_exceptions=True
    )
    wall = (time.perf_counter() - started) * 1000
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise RuntimeError(f"{len(failures)} of {count} raw cycles failed: {failures[0]}")
    times = [r for r in results if isinstance(r, CycleTimes)]
    return wall, max(t.hi_ms for t in times)


def measure_concurrent(args: argparse.Namespace, api: Api, floor: RawCycle) -> ConcurrentResult:
    rounds: list[ConcurrentRound] = []
    for number in range(args.concurrent_rounds):
        note(f"(c) round {number + 1}/{args.concurrent_rounds}: {args.concurrent} creates at once")
        if number % 2 == 0:
            create, slowest, destroy = asyncio.run(api_concurrent(api, args.concurrent))
            floor_wall, floor_up = asyncio.run(floor_concurrent(floor, args.concurrent))
        else:
            floor_wall, floor_up = asyncio.run(floor_concurrent(floor, args.concurrent))
            create, slowest, destroy = asyncio.run(api_concurrent(api, args.concurrent))
        rounds.append(ConcurrentRound(create, slowest, destroy, floor_wall, floor_up))
    return ConcurrentResult(
        count=args.concurrent,
        rounds=rounds,
        create_ms=statistics.median(r.create_ms for r in rounds),
        create_max_ms=max(r.create_ms for r in rounds),
        destroy_ms=statistics.median(r.destroy_ms for r in rounds),
        floor_ms=statistics.median(r.floor_ms for r in rounds),
        floor_up_ms=statistics.median(r.floor_up_ms for r in rounds),
        ratio=statistics.median(r.create_ms / r.floor_ms for r in rounds),
    )


# -- (d) idle memory ---------------------------------------------------------------------------


@dataclass
class MemoryResult:
    count: int
    processes_per_sandbox: float
    cgroup_mib: float  # memory cgroup usage per sandbox
    pss_mib: float
    rss_mib: float
    daemon_rss_delta_mib: float  # the daemon's RSS growth per sandbox
    total_mib: float  # cgroup + daemon RSS growth, per sandbox: the target's figure
    host_available_drop_mib: float  # MemAvailable before - after, per sandbox (noisy)
    create_s: float
    destroy_s: float
    cgroup_stat_mib: dict[str, float] = field(default_factory=dict)  # memory.stat, per sandbox


_STAT_KEYS = ("total_rss", "total_cache", "total_shmem", "total_mapped_file", "total_kernel_stack")


def measure_memory(
    args: argparse.Namespace, api: Api, daemon: Daemon, layout: CgroupLayout
) -> MemoryResult:
    daemon_before, _ = rss_pss(daemon.process.pid)
    available_before = mem_available()
    note(f"(d) creating {args.idle} idle sandboxes")
    started = time.perf_counter()
    ids = [api.create()[0] for _ in range(args.idle)]
    create_s = time.perf_counter() - started
    time.sleep(args.settle)
    usage = rss = pss = processes = 0
    stat_sums = dict.fromkeys(_STAT_KEYS, 0)
    stat_sums["kmem_usage"] = 0
    # Every sandbox group of the daemon: the created ones and the warm pool's (idle
    # sandboxes too; a handed-out one keeps its pool name, as cgroup v2 cannot rename).
    names = list_sandbox_groups(layout, daemon.parent)
    for name in names:
        group = SandboxCgroup.locate(layout, name, parent=daemon.parent)
        usage += group.stats().memory_bytes or 0
        pids = group.pids()
        processes += len(pids)
        for pid in pids:
            one_rss, one_pss = rss_pss(pid)
            rss += one_rss
            pss += one_pss
        memory_dir = group.v1.get("memory")
        if memory_dir is not None:
            for line in (memory_dir / "memory.stat").read_text().splitlines():
                key, value = line.split()
                if key in stat_sums:
                    stat_sums[key] += int(value)
            kmem = memory_dir / "memory.kmem.usage_in_bytes"
            if kmem.exists():
                stat_sums["kmem_usage"] += int(kmem.read_text())
    daemon_after, _ = rss_pss(daemon.process.pid)
    available_after = mem_available()
    note(f"(d) destroying {len(ids)} idle sandboxes")
    started = time.perf_counter()
    for env_id in ids:
        api.delete(env_id)
    destroy_s = time.perf_counter() - started
    n = len(names)
    daemon_delta = (daemon_after - daemon_before) / n / MIB
    cgroup = usage / n / MIB
    return MemoryResult(
        count=n,
        processes_per_sandbox=processes / n,
        cgroup_mib=cgroup,
        pss_mib=pss / n / MIB,
        rss_mib=rss / n / MIB,
        daemon_rss_delta_mib=daemon_delta,
        total_mib=cgroup + daemon_delta,
        host_available_drop_mib=(available_before - available_after) / n / MIB,
        create_s=create_s,
        destroy_s=destroy_s,
        cgroup_stat_mib={k: v / n / MIB for k, v in stat_sums.items()},
    )


# -- cleaning up -------------------------------------------------------------------------------


def leftovers(daemon: Daemon | None, layout: CgroupLayout) -> list[str]:
    """Whatever of this run's sandboxes and floor is still on the host."""
    found: list[str] = []
    parents = [FLOOR_PARENT] + ([daemon.parent] if daemon else [])
    for root in layout.roots():
        found += [str(root / p) for p in parents if (root / p).exists()]
    if daemon is not None:
        if daemon.run_root.exists():
            found.append(str(daemon.run_root))
        found += [f"mount {m}" for m in mounts_under(daemon.run_root)]
    return found


def remove_daemon_remains(daemon: Daemon, layout: CgroupLayout) -> None:
    """What a daemon that did not shut down cleanly left: its cgroups and mounts."""
    with contextlib.suppress(OSError):
        remove_parent(layout, daemon.parent)
    for mount in mounts_under(daemon.run_root):
        with contextlib.suppress(OSError):
            unmount(mount)
    sandboxes = daemon.run_root / "sandboxes"
    if sandboxes.is_dir():
        for leftover in sandboxes.iterdir():
            with contextlib.suppress(OSError):
                Workspace(leftover).destroy()
    if not list(mounts_under(daemon.run_root)):
        import shutil

        shutil.rmtree(daemon.run_root, ignore_errors=True)


def delete_all(api: Api) -> None:
    """DELETE every sandbox the daemon runs (best effort: the daemon's shutdown follows)."""
    ids = set(api.alive)
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        ids.update(api.live_ids())
    if ids:
        note(f"deleting {len(ids)} sandboxes left running")
    for env_id in ids:
        with contextlib.suppress(httpx.HTTPError, RuntimeError):
            api.delete(env_id)


# -- the report --------------------------------------------------------------------------------


def verdicts(results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    out: list[tuple[str, bool, str]] = []
    a: CycleResult | None = results.get("a")
    if a is not None:
        ok = a.ratio <= TARGET_A_RATIO and a.total.p50 <= TARGET_A_MS
        out.append(
            (
                "a",
                ok,
                f"(a) cycle p50 {a.total.p50:.2f} ms = {a.ratio:.2f}x floor "
                f"(target <= {TARGET_A_RATIO:g}x and <= {TARGET_A_MS:g} ms)",
            )
        )
    b: ExecResult | None = results.get("b")
    if b is not None:
        out.append(
            (
                "b",
                b.exec.p50 <= TARGET_B_MS,
                f"(b) exec p50 {b.exec.p50:.2f} ms (target <= {TARGET_B_MS:g} ms)",
            )
        )
    c: ConcurrentResult | None = results.get("c")
    if c is not None:
        out.append(
            (
                "c",
                c.create_ms <= TARGET_C_MS,
                f"(c) {c.count} concurrent creates all running in {c.create_ms:.0f} ms "
                f"(median of {len(c.rounds)} rounds, worst {c.create_max_ms:.0f} ms; "
                f"target <= {TARGET_C_MS:g} ms)",
            )
        )
    d: MemoryResult | None = results.get("d")
    if d is not None:
        out.append(
            (
                "d",
                d.total_mib <= TARGET_D_MIB,
                f"(d) {d.total_mib:.2f} MiB per idle sandbox (cgroup {d.cgroup_mib:.2f} + daemon "
                f"RSS growth {d.daemon_rss_delta_mib:.2f}; target <= {TARGET_D_MIB:g} MiB)",
            )
        )
    return out


def conditions(args: argparse.Namespace, load: tuple[float, float]) -> list[str]:
    return [
        "daemon: `python -m stockade daemon` (uvicorn, 1 worker, SQLite in a temporary home), "
        f"rate limits disabled, log level {LOG_LEVEL!r}, run dir {RUN_DIR}",
        "client: one keep-alive http.client connection for a, b, d (httpx costs ~1 ms more "
        "per request); httpx async, one connection per request, opened beforehand, for c; "
        "client time is included",
        f"(a) and (b): {args.rounds} interleaved rounds after {args.warmup} (a) and "
        f"{args.warmup * 4} (b) warm-up iterations; percentiles pool all rounds, x floor is "
        "the median of the per-round p50 ratios",
        "floor (a, c): cgroup (daemon's default limits) + stockade-agent launch (cgroup "
        "join + uid drop) + bwrap default Profile + seccomp fd + sh -c 'echo hi' + cgroup "
        "destroy, in this process; the daemon adds a tmpfs workspace, /etc and agent binds, "
        "the agent's HELLO, HTTP, the store",
        "floor (b): subprocess.run(['/bin/true']) from this process; the GET /api/v1/auth/me "
        "row (interleaved with b) is what any authenticated request costs, sandbox aside",
        f"machine: {os.cpu_count()} CPU cores shared by client, daemon and sandboxes; 1-min "
        f"load average {load[0]:.2f} before, {load[1]:.2f} after",
    ]


def row(name: str, dist: Distribution, floor: Distribution | None, ratio: float | None) -> str:
    floor_text = f"{floor.p50:>9.2f}" if floor else f"{'':>9}"
    ratio_text = f"{ratio:>7.2f}x" if ratio is not None else f"{'':>8}"
    return (
        f"{name:<38} {dist.n:>5} {dist.p50:>8.2f} {dist.p90:>8.2f} {dist.p99:>8.2f} "
        f"{floor_text} {ratio_text}"
    )


def print_table(
    results: dict[str, Any], args: argparse.Namespace, load: tuple[float, float]
) -> None:
    header = (
        f"{'measurement (ms)':<38} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} "
        f"{'floor p50':>9} {'x floor':>8}"
    )
    if "a" in results or "b" in results:
        print(header)
        print("-" * len(header))
    a: CycleResult | None = results.get("a")
    if a is not None:
        print(row("(a) create -> exec -> destroy", a.total, a.floor, a.ratio))
        print(row("    POST create", a.create, None, None))
        print(row("      of which backend spawn_time_ms", a.spawn, None, None))
        print(row("    POST exec echo hi", a.exec, None, None))
        print(row("    DELETE ?force=true", a.destroy, None, None))
        print(row("    floor: cgroup create", a.floor_cgroup, None, None))
        print(row("    floor: spawn, hi, exit", a.floor_run, None, None))
    b: ExecResult | None = results.get("b")
    if b is not None:
        print(row("(b) exec `true` round trip", b.exec, b.floor, b.ratio))
        print(row("    GET /api/v1/auth/me (HTTP + auth)", b.http, None, None))
    c: ConcurrentResult | None = results.get("c")
    if c is not None:
        if "a" in results or "b" in results:
            print()
        print(
            f"{'(c) ' + str(c.count) + ' concurrent creates (ms wall)':<38} {'rounds':>6} "
            f"{'median':>8} {'worst':>8} {'floor':>9} {'x floor':>8}"
        )
        worst = max(r.create_ms for r in c.rounds)
        print(
            f"{'    all running':<38} {len(c.rounds):>6} {c.create_ms:>8.0f} {worst:>8.0f} "
            f"{c.floor_ms:>9.0f} {c.ratio:>7.2f}x"
        )
        print(
            f"{'    slowest single create':<38} {len(c.rounds):>6} "
            f"{statistics.median(r.slowest_create_ms for r in c.rounds):>8.0f} "
            f"{max(r.slowest_create_ms for r in c.rounds):>8.0f}"
        )
        print(
            f"{'    all destroyed (after)':<38} {len(c.rounds):>6} {c.destroy_ms:>8.0f} "
            f"{max(r.destroy_ms for r in c.rounds):>8.0f}"
        )
        print(f"{'    floor: all said hi':<38} {len(c.rounds):>6} {c.floor_up_ms:>8.0f}")
    d: MemoryResult | None = results.get("d")
    if d is not None:
        if set(results) & set("abc"):
            print()
        print(f"(d) memory per idle sandbox, over {d.count} (MiB), {d.processes_per_sandbox:g} "
              "processes each")  # fmt: skip
        print(f"    cgroup memory.usage           {d.cgroup_mib:>8.2f}")
        print(f"    PSS sum                       {d.pss_mib:>8.2f}")
        print(f"    RSS sum                       {d.rss_mib:>8.2f}")
        print(f"    daemon RSS growth             {d.daemon_rss_delta_mib:>8.2f}")
        print(f"    cgroup + daemon (target's)    {d.total_mib:>8.2f}")
        print(f"    host MemAvailable drop        {d.host_available_drop_mib:>8.2f}  (noisy)")
        stat = "  ".join(f"{k} {v:.2f}" for k, v in d.cgroup_stat_mib.items())
        print(f"    memory.stat: {stat}")
        print(f"    created in {d.create_s:.1f} s, destroyed in {d.destroy_s:.1f} s (one by one)")
    print()
    for line in conditions(args, load):
        print(f"note: {line}")
    print()
    for _, ok, text in verdicts(results):
        print(f"{'PASS' if ok else 'FAIL'}: {text}")


# -- main --------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _ignoring_signals() -> Iterator[None]:
    """Let the clean-up finish even if Ctrl-C is pressed again."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    results: dict[str, Any] = {}
    layout = CgroupLayout.detect()
    run_dir_existed = RUN_DIR.exists()
    floor: RawCycle | None = None
    daemon: Daemon | None = None
    api: Api | None = None
    code = 0
    daemon_log = ""
    with tempfile.TemporaryDirectory(prefix="stockade-bench-") as tmp:
        password = secrets.token_urlsafe(18)
        try:
            floor = RawCycle()
            sandbox_max = max(256, args.idle + args.concurrent + 16)
            daemon = start_daemon(Path(tmp), password, sandbox_max, args.pool)
            note(f"daemon pid {daemon.process.pid} on {daemon.url} (home {daemon.home})")
            wait_healthy(daemon, args.startup_timeout)
            api = Api(daemon.url, login(daemon.url, password))
            steps: dict[str, Callable[[], Any]] = {
                "a": lambda: measure_cycles(args, api, floor),
                "b": lambda: measure_execs(args, api),
                "c": lambda: measure_concurrent(args, api, floor),
                "d": lambda: measure_memory(args, api, daemon, layout),
            }
            for letter in "abcd":
                if letter in args.only:
                    results[letter] = steps[letter]()
            if daemon.process.poll() is not None:
                raise RuntimeError(f"the daemon died during the run:\n{daemon.output()[-4000:]}")
        except KeyboardInterrupt:
            note("interrupted; cleaning up")
            code = 130
        except (RuntimeError, TimeoutError, ValueError, OSError, httpx.HTTPError) as exc:
            note(f"error: {type(exc).__name__}: {exc}")
            code = 1
        finally:
            with _ignoring_signals():
                if api is not None:
                    if daemon is not None and daemon.process.poll() is None:
                        delete_all(api)
                    api.close()
                clean, daemon_log = shut_down(
                    daemon,
                    layout,
                    run_dir_existed,
                    also=floor.cleanup if floor is not None else None,
                )
                if not clean:
                    code = code or 1
    return code, results, daemon_log


def shut_down(
    daemon: Daemon | None,
    layout: CgroupLayout,
    run_dir_existed: bool,
    *,
    also: Callable[[], None] | None = None,
) -> tuple[bool, str]:
    """Stop the daemon (SIGTERM, then SIGKILL), run ``also`` (more clean-up), remove what
    the daemon left, and check that nothing of this run is left on the host. Returns
    (clean, the daemon's output)."""
    daemon_log = ""
    if daemon is not None:
        stop_process(daemon.process)
        note(f"daemon stopped (exit code {daemon.process.returncode})")
        daemon_log = daemon.output().strip()
    if also is not None:
        also()
    remains = leftovers(daemon, layout) if daemon is not None else []
    if daemon is not None and remains:
        note(f"removing what the daemon left ({len(remains)}): {remains[:6]}")
        remove_daemon_remains(daemon, layout)
    if not run_dir_existed:
        with contextlib.suppress(OSError):
            RUN_DIR.rmdir()  # only when empty: never another daemon's
    left = leftovers(daemon, layout)
    if left:
        note(f"WARNING: left on the host ({len(left)}): {left[:20]}")
        return False, daemon_log
    note("clean-up: no cgroup, mount or run directory of this run is left")
    return True, daemon_log


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        note("error: run as root (the namespace backend and the raw floor need it)")
        return 2
    # Ctrl-C and SIGTERM both unwind through the clean-up (SIGINT explicitly, in case this
    # process was started with it ignored, as `cmd &` does).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    if args.backend == "gvisor":
        return sandbox_gvisor.main(args)
    load_before = os.getloadavg()[0]
    code, results, daemon_log = run(args)
    if code:
        if daemon_log:
            note(f"daemon output:\n{daemon_log[-4000:]}")
        return code
    load = (load_before, os.getloadavg()[0])
    if args.json:
        payload = {
            "conditions": conditions(args, load),
            "results": {k: asdict(v) for k, v in results.items()},
            "verdicts": [{"target": t, "pass": ok, "text": s} for t, ok, s in verdicts(results)],
            "daemon_log": daemon_log,
        }
        print(json.dumps(payload, indent=2))
    else:
        print_table(results, args, load)
        if daemon_log:
            print(f"\ndaemon output (log level {LOG_LEVEL}):\n{daemon_log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Load at a constant rate against a real daemon (issue 7): latency, errors, 429s, and
whether the daemon's memory and file descriptors come back afterwards.

Not a test: a benchmark to run by hand, as root (the ``namespace`` backend needs it).

    .venv/bin/python bench/load.py [--rate 200] [--duration 60] [--probe-seconds 10]
                                   [--json]

The load generator. ``wrk2`` (constant rate, latency corrected for coordinated omission)
is not packaged in Debian and cannot be built here, so this runs locust (a dev extra) in
headless mode, in its own process: as many users as the requests per second, each
sending one request a second on its own fixed slot, with the slots spread evenly over
the second (``Mix.wait_time`` in bench/load_users.py; locust's own
``constant_throughput`` sent every user's request in the same instant, a burst a
second). A user can wait up to a second for an answer before it falls behind the rate.
Plain ``wrk`` was the fallback, but it is closed-loop: it sends the next request only
when the last one answered, so its rate is whatever the daemon gives. Locust's latency
is measured from each request's send, so a daemon that stalls delays later sends rather
than showing in their times (coordinated omission): a stall shows as an achieved rate
below the offered one, which is reported beside every percentile.

The mix (bench/load_users.py): 70% reads (environments list and get, tasks list,
approvals list), 20% exec of ``true`` in one of 10 warm sandboxes, 10% create and
destroy (a create then a DELETE ?force=true).

The run, with the daemon started by bench/sandbox.py's ``start_daemon`` (SQLite, one
uvicorn worker, log level warning):

1. Daemon A, rate limits off. 10 warm sandboxes, a 10 s warm-up at the rate, then the
   daemon's RSS, open fds and the sandboxes on the host ("before").
2. ``--duration`` seconds at ``--rate`` requests/s, then "after phase 1" (as in 4).
3. The capacity probe: ``--probe-seconds`` steps from 1.5x the rate up, each 1.5x the
   last, until a step does not hold (errors, an achieved rate under 95% of the offered,
   or p99 over 250 ms). Capacity is the highest rate the daemon served without an error
   in phase 1 or any step: the offered rate of a step that held, or the achieved rate
   of one offered more than the daemon could serve (its throughput ceiling).
4. "After the capacity probe": the sandboxes the load left (a destroy cut off by the
   end of a run, or refused with 429) are deleted, then the daemon's RSS, fds and
   sandboxes once the load has been over for 11 s (two of the daemon's memory checks,
   which give back what a busy spell freed) and the host's sandbox count is back to its
   count before. "Before" is measured the same way. Daemon A stops.
5. Daemon B, the default rate limits on (what a deployment runs): 10 warm sandboxes,
   the same warm-up at 2x the capacity, "before", then ``--duration`` seconds at 2x the
   capacity, then "after phase 2". (The warm-up also fills whatever the daemon keeps
   per connection; without it "before" misses it.)

Targets: at ``--rate``, p99 <= 100 ms for reads and <= 250 ms overall, no errors; at 2x
capacity, no answer but 2xx and 429 (no 5xx, no timeout); RSS and fds after each run
within 5% of before. Each figure is printed beside its target. The capacity probe drives
daemon A past what it can serve, with a request queued on every connection; the memory
that leaves held is printed too, without a verdict.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sandbox import (
    RUN_DIR,
    Api,
    Daemon,
    delete_all,
    login,
    note,
    percentile,
    rss_pss,
    shut_down,
    start_daemon,
    wait_healthy,
)

from stockade.memory import INTERVAL_SECONDS
from stockade.sandbox.cgroups import CgroupLayout

HERE = Path(__file__).resolve().parent
LOCUST = Path(sys.executable).with_name("locust")
WARM = 10
POOL = 4  # the daemon's warm pool (its default), set explicitly to know the count
WARM_UP = 10.0  # seconds
HOLD_P99_MS = 250.0
# Two of the daemon's memory checks (stockade.memory): a busy spell's free memory is
# given back at the first check that finds the daemon quiet.
QUIET = 2 * INTERVAL_SECONDS + 1.0
HOLD_ACHIEVED = 0.95
PROBE_FACTOR = 1.5
PROBE_MAX = 4000.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s of phase 1")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of each phase")
    parser.add_argument("--probe-seconds", type=float, default=10.0, help="seconds per step")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if min(args.rate, args.duration, args.probe_seconds) <= 0:
        parser.error("--rate, --duration and --probe-seconds must be positive")
    return args


# -- one load run ------------------------------------------------------------------------------


@dataclass
class Load:
    """One run at a constant offered rate, summarised."""

    offered: float
    seconds: float
    requests: int
    achieved: float
    read_p50: float
    read_p99: float
    read_p999: float
    p50: float
    p99: float
    p999: float
    ok: int
    limited: int  # 429
    server_errors: int  # 5xx
    other_errors: int  # any other 4xx, or no answer (timeout, reset)
    by_kind: dict[str, dict[str, float]]
    daemon_cpu_s: float = 0.0  # the daemon's user + system CPU time during the run
    locust_cpu_s: float = 0.0  # the load generator's

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.daemon_cpu_s / max(self.requests, 1)

    @property
    def error_ratio(self) -> float:
        return (self.server_errors + self.other_errors) / max(self.requests, 1)

    @property
    def limited_ratio(self) -> float:
        return self.limited / max(self.requests, 1)

    def holds(self) -> bool:
        return (
            self.server_errors + self.other_errors == 0
            and self.achieved >= HOLD_ACHIEVED * self.offered
            and self.p99 <= HOLD_P99_MS
        )


def run_load(daemon: Daemon, token: str, sandboxes: list[str], rate: float, seconds: float) -> Load:
    """``seconds`` of the mix at ``rate`` requests/s through a locust process."""
    users = max(10, math.ceil(rate))
    with tempfile.NamedTemporaryFile(prefix="stockade-load-", suffix=".jsonl") as out:
        env = os.environ | {
            "LOAD_TOKEN": token,
            "LOAD_SANDBOXES": ",".join(sandboxes),
            "LOAD_RATE": str(rate),
            "LOAD_USERS": str(users),
            "LOAD_OUT": out.name,
        }
        command = [
            str(LOCUST),
            "-f",
            str(HERE / "load_users.py"),
            "--headless",
            "--host",
            daemon.url,
            "--users",
            str(users),
            "--spawn-rate",
            str(users),
            "--run-time",
            f"{seconds:g}s",
            "--stop-timeout",
            "10",
            "--only-summary",
            "--loglevel",
            "WARNING",
            "--exit-code-on-error",
            "0",
        ]
        started = time.monotonic()
        cpu_before = cpu_seconds(daemon.process.pid)
        children_before = children_cpu_seconds()
        finished = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        daemon_cpu = cpu_seconds(daemon.process.pid) - cpu_before
        locust_cpu = children_cpu_seconds() - children_before
        if finished.returncode != 0:
            raise RuntimeError(f"locust exited with {finished.returncode}:\n{finished.stderr}")
        note(f"  locust ran {time.monotonic() - started:.1f} s")
        samples = [json.loads(line) for line in Path(out.name).read_text().splitlines()]
    load = summarise(samples, rate, seconds)
    load.daemon_cpu_s, load.locust_cpu_s = daemon_cpu, locust_cpu
    return load


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def summarise(samples: list[list[Any]], rate: float, seconds: float) -> Load:
    """Percentiles in ms; the first second (users starting) is left out of the rate."""
    if not samples:
        raise RuntimeError("locust recorded no request")
    first = min(s[4] for s in samples)
    steady = [s for s in samples if s[4] >= first + 1.0]
    span = max(seconds - 1.0, 1e-9)
    times = [s[2] for s in samples]
    reads = [s[2] for s in samples if s[0] == "read"]
    statuses = [s[3] for s in samples]
    by_kind: dict[str, dict[str, float]] = {}
    for kind in ("read", "exec", "create", "destroy"):
        mine = [s for s in samples if s[0] == kind]
        by_kind[kind] = {
            "n": len(mine),
            "p50": percentile([s[2] for s in mine], 50),
            "p99": percentile([s[2] for s in mine], 99),
            "429": sum(1 for s in mine if s[3] == 429),
            "errors": sum(1 for s in mine if not (200 <= s[3] < 300 or s[3] == 429)),
        }
    return Load(
        offered=rate,
        seconds=seconds,
        requests=len(samples),
        achieved=len(steady) / span,
        read_p50=percentile(reads, 50),
        read_p99=percentile(reads, 99),
        read_p999=percentile(reads, 99.9),
        p50=percentile(times, 50),
        p99=percentile(times, 99),
        p999=percentile(times, 99.9),
        ok=sum(1 for s in statuses if 200 <= s < 300),
        limited=sum(1 for s in statuses if s == 429),
        server_errors=sum(1 for s in statuses if s >= 500),
        other_errors=sum(1 for s in statuses if s < 200 or (300 <= s < 500 and s != 429)),
        by_kind=by_kind,
    )


# -- the daemon's resources --------------------------------------------------------------------


@dataclass
class Resources:
    rss_mib: float
    fds: int
    sandboxes: int  # on the host: workspaces under the daemon's run directory


def resources(daemon: Daemon) -> Resources:
    """Read from /proc and the host, not the API: polling the API as the admin would spend
    the admin's rate-limit windows on daemon B."""
    rss, _ = rss_pss(daemon.process.pid)
    fds = len(os.listdir(f"/proc/{daemon.process.pid}/fd"))
    workspaces = daemon.run_root / "sandboxes"
    count = len(list(workspaces.iterdir())) if workspaces.is_dir() else 0
    return Resources(rss / 2**20, fds, count)


def settled(daemon: Daemon, target: int, timeout: float = 30.0) -> Resources:
    """Resources once the load has been over for ``QUIET`` seconds, and the host has
    ``target`` sandboxes: the warm ones and a full warm pool (a destroy finishes after
    its 204, and the pool refills in the background). After ``timeout`` seconds more,
    whatever there is."""
    time.sleep(QUIET)
    deadline = time.monotonic() + timeout
    while True:
        found = resources(daemon)
        if found.sandboxes == target or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def remove_leftovers(api: Api, warm: list[str]) -> int:
    """Delete the sandboxes the load created and did not destroy (a DELETE refused with
    429, or cut off by the end of the run): they are the load's, not the daemon's."""
    left = set(api.live_ids()) - set(warm)
    for env_id in left:
        api.delete(env_id)
    return len(left)


def within(after: float, before: float, share: float = 0.05) -> bool:
    return abs(after - before) <= share * before


# -- the phases --------------------------------------------------------------------------------


@contextmanager
def daemon_with_sandboxes(
    tmp: Path, env_extra: dict[str, str]
) -> Iterator[tuple[Daemon, Api, str]]:
    """A daemon with ``WARM`` sandboxes, and an API key for the load: its rate-limit
    windows are its own, so the script's own calls (as the admin) are never refused.
    All of it gone (and checked) on exit."""
    password = secrets.token_urlsafe(18)
    layout = CgroupLayout.detect()
    run_dir_existed = RUN_DIR.exists()
    tmp.mkdir()
    daemon = start_daemon(tmp, password, sandbox_max=256, pool=POOL, env_extra=env_extra)
    api: Api | None = None
    try:
        note(f"daemon pid {daemon.process.pid} on {daemon.url}")
        wait_healthy(daemon, 60.0)
        api = Api(daemon.url, login(daemon.url, password))
        for _ in range(WARM):
            api.create()
        created = api.client.post("/api/v1/api-keys", json={"description": "bench/load.py"})
        created.raise_for_status()
        yield daemon, api, created.json()["key"]
        if daemon.process.poll() is not None:
            raise RuntimeError(f"the daemon died during the run:\n{daemon.output()[-4000:]}")
    finally:
        if api is not None:
            if daemon.process.poll() is None:
                delete_all(api)
            api.close()
        clean, _ = shut_down(daemon, layout, run_dir_existed)
        if not clean:
            raise RuntimeError("the daemon left sandboxes on the host")


def probe(
    daemon: Daemon, api: Api, key: str, first: Load, seconds: float
) -> tuple[float, list[Load]]:
    """The highest rate served without an error, in steps of ``PROBE_FACTOR`` above the
    ``first`` run's rate."""
    start = first.offered
    held = first.achieved if first.server_errors + first.other_errors == 0 else 0.0
    steps: list[Load] = []
    rate = start * PROBE_FACTOR
    while rate <= PROBE_MAX:
        note(f"probe: {rate:.0f} req/s for {seconds:g} s")
        step = run_load(daemon, key, sorted(api.alive), rate, seconds)
        steps.append(step)
        note(f"  achieved {step.achieved:.0f} req/s, p99 {step.p99:.0f} ms, errors "
             f"{step.server_errors + step.other_errors}")  # fmt: skip
        if step.server_errors + step.other_errors == 0:
            held = max(held, rate if step.holds() else step.achieved)
        if not step.holds():
            break
        rate *= PROBE_FACTOR
    return held, steps


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="stockade-load-") as tmp:
        with daemon_with_sandboxes(Path(tmp) / "a", {}) as (daemon, api, key):
            warm = sorted(api.alive)
            # The warm-up runs the same rate and users: "before" is then the daemon with
            # its connections, caches and allocator arenas at this load's size, and a
            # growth after the run is what the run kept.
            note(f"warm-up: {WARM_UP:g} s at {args.rate:.0f} req/s")
            run_load(daemon, key, warm, args.rate, WARM_UP)
            remove_leftovers(api, warm)
            before = settled(daemon, WARM + POOL)
            note(f"phase 1: {args.rate:.0f} req/s for {args.duration:g} s")
            results["steady"] = run_load(daemon, key, warm, args.rate, args.duration)
            results["leftovers_steady"] = remove_leftovers(api, warm)
            results["resources_steady"] = (before, settled(daemon, before.sandboxes))
            capacity, steps = probe(daemon, api, key, results["steady"], args.probe_seconds)
            results["capacity"] = capacity
            results["probe"] = steps
            results["leftovers_probe"] = remove_leftovers(api, warm)
            results["resources_probe"] = (before, settled(daemon, before.sandboxes))
        limited = {"STOCKADE_RATE_LIMIT_ENABLED": "true"}
        with daemon_with_sandboxes(Path(tmp) / "b", limited) as (daemon, api, key):
            rate = 2 * capacity
            warm = sorted(api.alive)
            note(f"warm-up: {WARM_UP:g} s at {rate:.0f} req/s")
            run_load(daemon, key, warm, rate, WARM_UP)
            remove_leftovers(api, warm)
            before = settled(daemon, WARM + POOL)
            note(f"phase 2: {rate:.0f} req/s (2x capacity) for {args.duration:g} s")
            results["overload"] = run_load(daemon, key, warm, rate, args.duration)
            results["leftovers_overload"] = remove_leftovers(api, warm)
            results["resources_overload"] = (before, settled(daemon, before.sandboxes))
    return results


# -- the report --------------------------------------------------------------------------------


def verdicts(results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    steady: Load = results["steady"]
    overload: Load = results["overload"]
    rows = [
        ("reads p99", steady.read_p99 <= 100, f"{steady.read_p99:.1f} ms (target <= 100 ms)"),
        ("overall p99", steady.p99 <= 250, f"{steady.p99:.1f} ms (target <= 250 ms)"),
        ("errors at rate", steady.error_ratio == 0, f"{steady.error_ratio:.4%} (target 0)"),
        (
            "2x capacity: only 2xx and 429",
            overload.server_errors + overload.other_errors == 0,
            f"5xx {overload.server_errors}, other errors {overload.other_errors} (target 0, 0)",
        ),
    ]
    for name, label in RESOURCES:
        if name == "probe":
            continue  # see RESOURCES
        before, after = results[f"resources_{name}"]
        rows.append(
            (
                f"{label}: RSS",
                within(after.rss_mib, before.rss_mib),
                f"{before.rss_mib:.1f} -> {after.rss_mib:.1f} MiB (target within 5%)",
            )
        )
        rows.append(
            (
                f"{label}: fds",
                within(after.fds, before.fds),
                f"{before.fds} -> {after.fds} (target within 5%)",
            )
        )
    return rows


# Where the daemons' resources are measured against their "before". The targets are
# for the two runs (phase 1 and phase 2). The capacity probe's figure is printed
# but not judged: it drives daemon A past what it can serve, with a request queued on
# every connection, and the memory that leaves behind depends on how far past.
RESOURCES = (
    ("steady", "daemon A after phase 1"),
    ("probe", "daemon A after the capacity probe"),
    ("overload", "daemon B after phase 2"),
)


def print_load(title: str, load: Load) -> None:
    print(f"{title}: offered {load.offered:.0f} req/s, achieved {load.achieved:.0f} req/s, "
          f"{load.requests} requests in {load.seconds:g} s")  # fmt: skip
    print(f"    reads    p50 {load.read_p50:7.1f}  p99 {load.read_p99:7.1f}  "
          f"p99.9 {load.read_p999:7.1f} ms")  # fmt: skip
    print(f"    overall  p50 {load.p50:7.1f}  p99 {load.p99:7.1f}  p99.9 {load.p999:7.1f} ms")
    print(f"    daemon CPU {load.daemon_cpu_s:.1f} s ({load.cpu_ms_per_request:.2f} ms a request, "
          f"{load.daemon_cpu_s / load.seconds:.0%} of a core); locust CPU "
          f"{load.locust_cpu_s:.1f} s")  # fmt: skip
    print(f"    2xx {load.ok}  429 {load.limited} ({load.limited_ratio:.2%})  5xx "
          f"{load.server_errors}  other errors {load.other_errors}  (error ratio "
          f"{load.error_ratio:.4%})")  # fmt: skip
    for kind, row in load.by_kind.items():
        print(f"    {kind:<8} n {row['n']:>6.0f}  p50 {row['p50']:7.1f}  p99 {row['p99']:7.1f} "
              f"ms  429 {row['429']:.0f}  errors {row['errors']:.0f}")  # fmt: skip


def print_report(results: dict[str, Any]) -> None:
    print_load("phase 1 (rate limits off)", results["steady"])
    print()
    print(f"capacity (the highest rate served without an error; a step holds with "
          f">= {HOLD_ACHIEVED:.0%} of the offered rate and p99 <= {HOLD_P99_MS:.0f} ms): "
          f"{results['capacity']:.0f} req/s")  # fmt: skip
    for step in results["probe"]:
        print(f"    {step.offered:6.0f} offered  {step.achieved:6.0f} achieved  p99 "
              f"{step.p99:7.1f} ms  errors {step.server_errors + step.other_errors}  "
              f"{'holds' if step.holds() else 'does not hold'}")  # fmt: skip
    print()
    print_load("phase 2 (default rate limits, 2x capacity)", results["overload"])
    print()
    for name, label in RESOURCES:
        before, after = results[f"resources_{name}"]
        left = results[f"leftovers_{name}"]
        print(f"{label}: RSS {before.rss_mib:.1f} -> {after.rss_mib:.1f} MiB, fds "
              f"{before.fds} -> {after.fds}, sandboxes on the host {before.sandboxes} -> "
              f"{after.sandboxes} (after deleting {left} the load left)")  # fmt: skip
    print()
    for _, ok, text in verdicts(results):
        print(f"{'PASS' if ok else 'FAIL'}: {_}: {text}")


def as_json(results: dict[str, Any]) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, Load | Resources):
            return asdict(value)
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    out = {name: plain(value) for name, value in results.items()}
    out["verdicts"] = [{"name": n, "pass": ok, "value": t} for n, ok, t in verdicts(results)]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        note("error: run as root (the namespace backend needs it)")
        return 2
    if not LOCUST.exists():
        note(f"error: {LOCUST} is missing: `make install` installs the dev extras (locust)")
        return 2
    try:
        results = run(args)
    except (RuntimeError, TimeoutError, OSError, httpx.HTTPError) as exc:
        note(f"error: {type(exc).__name__}: {exc}")
        return 1
    if args.json:
        print(json.dumps(as_json(results), indent=2))
    else:
        print_report(results)
    return 0 if all(ok for _, ok, _ in verdicts(results)) else 1


if __name__ == "__main__":
    sys.exit(main())

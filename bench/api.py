"""HTTP throughput of Stockade's real app against a bare-FastAPI floor, measured with wrk.

Not a test: a benchmark to run by hand.

    .venv/bin/python bench/api.py [--duration 10] [--threads 2] [--connections 32] [--json]

It starts ONE uvicorn process (one worker, default loop and http, --no-access-log) on a
free loopback port, serving ``bench/floor_app.py``: ``/__floor/hello`` is a bare
``FastAPI()`` hello-world, every other path is ``create_app(Settings())`` with a temporary
STOCKADE_HOME, rate limits raised out of the way (the limiter stays on, so its cost is
measured) and log level "warning" (so no access lines are written). It logs in as admin,
runs wrk against the floor, ``/health`` and ``/api/v1/auth/me`` (Bearer JWT), prints
requests/s, p50/p99 latency, non-2xx count and the ratio to the floor, and always stops
the server at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from stockade.testing import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
HIGH_LIMIT = "100000000/minute"
LOG_LEVEL = "warning"
TARGET_RATIO = 0.50


@dataclass
class Endpoint:
    name: str
    path: str
    authenticated: bool = False


ENDPOINTS = [
    Endpoint("floor", "/__floor/hello"),
    Endpoint("health", "/health"),
    Endpoint("auth_me", "/api/v1/auth/me", authenticated=True),
]


@dataclass
class Result:
    name: str
    path: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: int
    ratio_to_floor: float = 0.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0]
        + " Starts one uvicorn server (composite app: /__floor -> bare FastAPI, "
        "everything else -> Stockade), logs in as admin, runs wrk against the floor, "
        "/health and /api/v1/auth/me, and prints a table with the ratio to the floor.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds of wrk per endpoint, over all rounds"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="seconds of unrecorded wrk per endpoint before the measured run (0: none)",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (wrk -t)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="split each endpoint's --duration into this many interleaved rounds; "
        "the table shows medians over the rounds",
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="open HTTP connections in wrk (wrk -c)"
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for GET /health to answer 200 before giving up",
    )
    parser.add_argument("--wrk", default="wrk", help="the wrk executable")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the results as JSON on stdout instead of the table (progress goes to stderr)",
    )
    args = parser.parse_args(argv)
    if args.threads < 1 or args.connections < args.threads or args.duration < 1:
        parser.error("need --duration >= 1, --threads >= 1 and --connections >= --threads")
    return args


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the server ------------------------------------------------------------------------------


def server_env(home: Path, admin_password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    env |= {
        "STOCKADE_HOME": str(home),
        "STOCKADE_ADMIN_PASSWORD": admin_password,
        "STOCKADE_LOG_LEVEL": LOG_LEVEL,
        "STOCKADE_RATE_LIMIT_ENABLED": "true",
        "STOCKADE_RATE_LIMIT_AUTH": HIGH_LIMIT,
        "STOCKADE_RATE_LIMIT_CREATION": HIGH_LIMIT,
        "STOCKADE_RATE_LIMIT_EXEC": HIGH_LIMIT,
        "STOCKADE_RATE_LIMIT_OTHER": HIGH_LIMIT,
        "STOCKADE_RATE_LIMIT_TOKEN": HIGH_LIMIT,
        "PYTHONUNBUFFERED": "1",
    }
    return env


def start_server(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # `python -m` puts the repository root (cwd) on sys.path, so `bench.floor_app` imports
    # as a namespace package and bench/api.py never shadows the stdlib `http`.
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.floor_app:build",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--lifespan",
        "on",
        "--no-access-log",
        "--no-server-header",  # as `stockade daemon` runs it
        "--log-level",
        LOG_LEVEL,
    ]
    with log.open("wb") as sink:
        # Own session: a Ctrl-C reaches this script, which then stops the server itself.
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def request(
    url: str, *, data: dict[str, Any] | None = None, token: str | None = None
) -> tuple[int, bytes]:
    headers = {"Accept": "application/json"}
    body = None
    if data is not None:
        body = json.dumps(data).encode()
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 (our own URL)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_healthy(base: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode}:\n{log.read_text(errors='replace')}"
            )
        try:
            if request(f"{base}/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(
        f"/health not 200 after {timeout:g} s:\n{log.read_text(errors='replace')[-4000:]}"
    )


def login(base: str, password: str) -> str:
    status, body = request(
        f"{base}/api/v1/auth/login", data={"username": "admin", "password": password}
    )
    if status != 200:
        raise RuntimeError(f"login answered {status}: {body[:500]!r}")
    token: str = json.loads(body)["token"]
    return token


# -- wrk ---------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+(\d+(?:\.\d+)?)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.M)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(output: str, endpoint: Endpoint) -> Result:
    """Requests/s, p50/p99 (in ms) and error counts from ``wrk --latency`` output."""
    if "Latency Distribution" not in output:
        raise ValueError(f"no 'Latency Distribution' block in wrk output:\n{output}")
    block = output.split("Latency Distribution", 1)[1]
    percentiles = {
        float(p): float(value) * _UNITS_MS[unit] for p, value, unit in _PERCENTILE.findall(block)
    }
    rps = _RPS.search(output)
    total = _TOTAL.search(output)
    if rps is None or total is None or 50.0 not in percentiles or 99.0 not in percentiles:
        raise ValueError(f"cannot parse wrk output:\n{output}")
    non_2xx = _NON_2XX.search(output)
    sockets = _SOCKET.search(output)
    return Result(
        name=endpoint.name,
        path=endpoint.path,
        requests_per_second=float(rps.group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        requests=int(total.group(1)),
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def combine(rounds: list[list[Result]]) -> list[Result]:
    """Per endpoint: the median of each figure over the rounds, the errors summed, and
    the median of the per-round ratios to the floor measured in the same round."""
    combined = []
    for i, first in enumerate(rounds[0]):
        runs = [round_[i] for round_ in rounds]
        ratios = [
            run.requests_per_second / round_[0].requests_per_second
            for run, round_ in zip(runs, rounds, strict=True)
            if round_[0].requests_per_second
        ]
        combined.append(
            Result(
                name=first.name,
                path=first.path,
                requests_per_second=statistics.median(r.requests_per_second for r in runs),
                p50_ms=statistics.median(r.p50_ms for r in runs),
                p99_ms=statistics.median(r.p99_ms for r in runs),
                requests=sum(r.requests for r in runs),
                non_2xx_3xx=sum(r.non_2xx_3xx for r in runs),
                socket_errors=sum(r.socket_errors for r in runs),
                ratio_to_floor=statistics.median(ratios) if ratios else 0.0,
            )
        )
    return combined


def run_wrk(
    args: argparse.Namespace, base: str, endpoint: Endpoint, token: str, seconds: int
) -> str:
    command = [
        args.wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds}s",
        "--latency",
    ]
    if endpoint.authenticated:
        command += ["-H", f"Authorization: Bearer {token}"]
    command.append(base + endpoint.path)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}:\n{done.stderr}{done.stdout}")
    return done.stdout


# -- the report -------------------------------------------------------------------------------


def conditions(args: argparse.Namespace, load: tuple[float, float]) -> list[str]:
    return [
        f"server: one uvicorn process, 1 worker, default loop/http (uvloop/httptools), "
        f"--no-access-log, log level {LOG_LEVEL!r} (Stockade writes no access log lines)",
        f"rate limiter: enabled, every category and the per-token ceiling at {HIGH_LIMIT} "
        "(its cost is measured, 429s are not)",
        f"wrk: -t{args.threads} -c{args.connections} --latency, {args.duration}s per endpoint "
        f"in {args.rounds} interleaved rounds (medians shown; x floor is the median of the "
        f"per-round ratios), +{args.warmup}s unrecorded warm-up per endpoint",
        f"machine: {os.cpu_count()} CPU cores shared by wrk and the server; absolute numbers "
        "are lower than on a machine where the load generator has its own cores",
        f"machine load: 1-min load average {load[0]:.2f} before the run, {load[1]:.2f} at its end "
        f"(above ~{os.cpu_count() or 1} means other processes competed for the cores; rerun "
        "on a quiet machine for stable numbers)",
    ]


def print_table(results: list[Result], args: argparse.Namespace, load: tuple[float, float]) -> None:
    header = f"{'name':<8} {'path':<18} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
    header += f" {'non-2xx':>8} {'sock err':>8} {'x floor':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<8} {r.path:<18} {r.requests_per_second:>10.1f} {r.p50_ms:>8.2f} "
            f"{r.p99_ms:>8.2f} {r.non_2xx_3xx:>8d} {r.socket_errors:>8d} {r.ratio_to_floor:>8.2f}"
        )
    print()
    for line in conditions(args, load):
        print(f"note: {line}")
    print()
    print(verdict(results))


def verdict(results: list[Result]) -> str:
    me = next(r for r in results if r.name == "auth_me")
    ok = me.ratio_to_floor >= TARGET_RATIO and me.non_2xx_3xx == 0
    word = "PASS" if ok else "BELOW TARGET"
    extra = "" if me.non_2xx_3xx == 0 else f"; {me.non_2xx_3xx} non-2xx responses"
    return (
        f"{word}: authenticated /api/v1/auth/me at {me.ratio_to_floor:.0%} of floor "
        f"(target >= {TARGET_RATIO:.0%}){extra}"
    )


# -- main ---------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which(args.wrk) is None:
        note(f"error: {args.wrk!r} not found (Debian: apt-get install -y wrk)")
        return 2
    # Ctrl-C and SIGTERM both unwind through the `finally` that stops the server (SIGINT
    # explicitly, in case this process was started with it ignored, as `cmd &` does).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="stockade-bench-") as tmp:
        home = Path(tmp) / "home"
        log = Path(tmp) / "server.log"
        password = secrets.token_urlsafe(18)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        process = start_server(port, server_env(home, password), log)
        note(f"server pid {process.pid} on {base} (home {home})")
        try:
            wait_healthy(base, process, log, args.startup_timeout)
            token = login(base, password)
            for endpoint in ENDPOINTS:  # fail loudly before measuring anything
                status, body = request(
                    base + endpoint.path, token=token if endpoint.authenticated else None
                )
                if status != 200:
                    raise RuntimeError(f"{endpoint.path} answered {status}: {body[:500]!r}")
            for endpoint in ENDPOINTS:
                if args.warmup > 0:
                    note(f"warming up {endpoint.path} for {args.warmup}s")
                    run_wrk(args, base, endpoint, token, args.warmup)
            # Interleave the endpoints in short rounds, so that a noisy neighbour slows the
            # floor and Stockade alike, and report medians over the rounds.
            seconds = max(1, round(args.duration / args.rounds))
            rounds: list[list[Result]] = []
            for number in range(1, args.rounds + 1):
                note(f"round {number}/{args.rounds}: {seconds}s per endpoint")
                rounds.append(
                    [parse_wrk(run_wrk(args, base, e, token, seconds), e) for e in ENDPOINTS]
                )
            results = combine(rounds)
            if process.poll() is not None:
                raise RuntimeError(f"server died during the run:\n{log.read_text()[-4000:]}")
            server_log = log.read_text(errors="replace").strip()
        except KeyboardInterrupt:
            note("interrupted; stopping the server")
            return 130
        except (RuntimeError, TimeoutError, ValueError, OSError) as exc:
            note(f"error: {exc}")
            return 1
        finally:
            stop_process(process)
            # uvicorn re-raises the SIGTERM it handled, so -15 is a clean shutdown.
            note(f"server stopped (exit code {process.returncode})")

    load = (load_before, os.getloadavg()[0])
    if args.json:
        payload = {
            "conditions": conditions(args, load),
            "results": [asdict(r) for r in results],
            "verdict": verdict(results),
            "server_log": server_log,
        }
        print(json.dumps(payload, indent=2))
    else:
        print_table(results, args, load)
        if server_log:
            print(f"\nserver output (log level {LOG_LEVEL}):\n{server_log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Jobs: how late a due job's code starts in its sandbox, and how many no-op runs a second
the scheduler gets through, each beside a floor measured in the same run (issue 5,
acceptance item 7).

Not a test: a benchmark to run by hand, as root (the ``namespace`` backend needs it).

    .venv/bin/python bench/jobs.py [--runs 200] [--jobs 500] [--concurrency 4] [--json]

It starts ONE ``stockade daemon`` process (``python -m stockade daemon``: uvicorn, one
worker, SQLite) with a temporary STOCKADE_HOME on a free loopback port, rate limits
disabled (the job creation limit too), log level "warning", STOCKADE_JOBS_CONCURRENCY
set to --concurrency (the daemon's default is 4), the warm sandbox pool at its default
(4); logs in as admin and opens ONE SSE stream ``GET /api/v1/events?type=job.run.completed
&type=job.run.failed&type=job.run.interrupted&type=sandbox.running`` (read in a thread on
its own http.client connection) before the first job. Every job's code is the no-op
``def execute():\\n    return {}`` and its priority CRITICAL (it may run whatever the load).
Requests go over one keep-alive http.client connection (httpx, async, for (b)).

A run's own timestamps (``GET /daemon/tasks/{task_id}/history``): ``scheduled_for`` (the
occurrence it runs: when it was due), ``claimed_at`` (the clock read at the start of the
scheduler pass that claimed it), ``started_at`` (the run's task began, before its
sandbox is asked for), ``code_started_at`` (the runner's ``time.time()`` in the sandbox,
after Python started, read the code from stdin, compiled and exec'd it, just before
``execute()``), ``finished_at`` (after the result was read and the sandbox deleted).
The job's sandbox (named ``job-<task_id>``; its id from the ``sandbox.running`` event,
its row from ``GET /api/v1/environments/{id}``) splits started -> code started further:
its ``created_at`` (the service's create began), its ``started_at`` (the backend handed
it over: a warm-pool sandbox, or a fresh spawn), and the ``sandbox.running`` event's
``timestamp`` (its row was stored; the exec of the runner follows).

(a) due -> code started, in one timeline, so that a noisy neighbour slows every part
    alike: one job with ``repeat_interval`` --interval runs throughout, and after each
    of its occurrences, while the next is far enough away (more than --settle +
    --gap-guard s), one one-off job runs, then one round of the floors, each after
    --settle s of rest (a delete's tear-down and the warm pool's refill go on in the
    background after its answer). It goes on until both have --runs recorded samples.
(a1) one-off: ``POST /daemon/tasks/add`` with no repeat, then wait for its run's
     job.run.* end event, then read its history (the first --warmup are not recorded).
     Such a job is due at the moment it was added (its ``scheduled_for`` is its creation
     time) and the add wakes the scheduler, so code_started_at - scheduled_for includes
     the add's remaining work (its audit row, the event) and the scheduler's wake-up.
     Also reported: the client's send of the POST -> code started, and the POST's
     round trip.
(a2) every --interval s: each occurrence is due at a known time and the scheduler must
     wake by itself, on its timer: the truer "due -> started" figure. The first
     occurrence (started by the add) and --warmup more are not recorded, then --runs
     consecutive occurrences are. Skipped occurrences (a gap of scheduled_for > 1.5
     intervals) are counted as failures.
     (a1) and (a2) are broken down alike: due -> claimed (the scheduler's wake-up),
     claimed -> started (the due query, the claim's transaction, the run's task),
     started -> sandbox created_at (the run row's update), sandbox created_at ->
     started_at (the backend's create; beside it its own spawn_time_ms), sandbox
     started_at -> sandbox.running (its row's insert), sandbox.running -> code started
     (the runner's exec: the agent, ``python3 -I`` starting, its imports, reading and
     compiling the code), and code started -> finished (execute, the result's
     download, the delete, the run's record).
     Floors (one round per gap, recorded after the warm-up occurrences): a raw ``POST
     /api/v1/environments`` + ``POST .../exec ["python3", "-I", "-c", "import time;
     print(time.time())"]``, from the client's wall time before the create to the
     printed time (creating a sandbox and starting Python through the API; "x floor" is
     the ratio of the p50s), split at the create's answer; then the same exec again in
     that running sandbox (sent -> printed: what exec + Python start alone cost, to set
     beside sandbox.running -> code started), then ``DELETE ?force=true``. And on the
     host, no sandbox: ``python3 -I -c pass`` through subprocess.run (spawn -> exit),
     and ``python3 -I -c "import time; print(time.time())"`` (spawn -> printed time).
     Target: p50 of due -> code started <= 30 ms, for (a1) and (a2) each.
(b)  throughput: --jobs one-off jobs added as fast as possible (httpx async, all POSTs at
     once over --connections connections opened beforehand), then the time from the
     first POST to the last job.run.* end event read; runs/second = jobs / that time.
     Every job must then show execution_count 1 and success_count 1 on ``GET
     /daemon/tasks``. Per run under load (each job's history): due -> claimed (the
     queue behind the concurrency limit), claimed -> code started, code started ->
     finished, claimed -> finished (how long a run holds its slot). Floor: --jobs raw
     ``POST /api/v1/environments`` + ``POST .../exec ["python3", "-I", "-c", "pass"]``
     + ``DELETE ?force=true`` cycles, by --concurrency workers at once (the same
     concurrency), wall time; "x floor" = jobs' wall time / the floor's. The floor
     runs first, then a pause of 2 s (the pool refills), then the jobs.

Every run must end ``completed`` with the result ``{}`` and a code_started_at; one that
does not is a failure (counted and listed; the exit status is then 1).

Clocks: the daemon stamps with ``datetime.now(UTC)``, the runner and the floor's Python
with ``time.time()`` in the sandbox, this script with ``time.time()``: all the same host
clock (CLOCK_REALTIME), so differences of their wall-clock timestamps are valid (to a
few microseconds plus the stored timestamps' microsecond rounding).

Everything is cleaned up at the end, on Ctrl-C or on failure: the scheduler is stopped,
the floor's environments deleted, the daemon stopped (it ends runs under way), and
whatever it left (cgroups, mounts, its run directory) removed; the script then checks
nothing is left.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from approvals import Api, wall
from events import EventReader
from sandbox import (
    LOG_LEVEL,
    ROOT,
    RUN_DIR,
    Daemon,
    Distribution,
    _ignoring_signals,
    _terminate,
    login,
    note,
    shut_down,
    wait_healthy,
)

from stockade.sandbox.cgroups import CgroupLayout
from stockade.sandbox.namespace import instance_name
from stockade.testing import free_port

TARGET_MS = 30.0
REQUEST_TIMEOUT = 60.0
SANDBOX_MAX = 64
NOOP = "def execute():\n    return {}"
ENDED_TYPES = ("job.run.completed", "job.run.failed", "job.run.interrupted")
EVENT_TYPES = (*ENDED_TYPES, "sandbox.running", "sandbox.updated")
PRINT_TIME = "import time; print(time.time())"
FLOOR_ARGV = ["python3", "-I", "-c", PRINT_TIME]
NOOP_ARGV = ["python3", "-I", "-c", "pass"]
HOST_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"
ENVIRONMENTS = "/api/v1/environments"


# -- arguments ---------------------------------------------------------------------------------


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n", 1)[0] + "\n\n" + doc.split("\n\n", 2)[2],
        formatter_class=_Formatter,
    )
    parser.add_argument("--runs", type=int, default=200, help="(a1) and (a2): recorded runs")
    parser.add_argument("--warmup", type=int, default=3, help="(a1), (a2): unrecorded runs first")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="(a2) the job's repeat_interval, seconds"
    )
    parser.add_argument(
        "--gap-guard",
        type=float,
        default=0.3,
        help="(a) start a one-off job or a floor round between occurrences only if the next "
        "occurrence is still this many seconds away after the --settle rest",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.2,
        help="(a) seconds of rest before each one-off job and each floor round",
    )
    parser.add_argument("--jobs", type=int, default=500, help="(b) jobs added at once")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="STOCKADE_JOBS_CONCURRENCY for the daemon, and (b)'s floor workers",
    )
    parser.add_argument(
        "--warm-runners",
        type=int,
        default=1,
        help="STOCKADE_JOBS_WARM_RUNNERS for the daemon (0: every run starts its own runner)",
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="(b) connections the POSTs share"
    )
    parser.add_argument(
        "--only", default="ab", help="run only these parts (letters out of 'ab'), e.g. --only a"
    )
    parser.add_argument(
        "--run-timeout", type=float, default=30.0, help="seconds one run may take to end"
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
    if set(args.only) - set("ab") or not args.only:
        parser.error("--only takes letters out of 'ab'")
    if args.runs < 1 or args.jobs < 1 or args.warmup < 0:
        parser.error("need --runs >= 1, --jobs >= 1 and --warmup >= 0")
    if args.settle < 0 or args.gap_guard < 0:
        parser.error("need --settle >= 0 and --gap-guard >= 0")
    if args.interval < 1:
        parser.error("--interval must be at least 1 (the daemon's minimum repeat_interval)")
    if not 1 <= args.concurrency <= 256 or args.connections < 1:
        parser.error("need 1 <= --concurrency <= 256 and --connections >= 1")
    return args


class RunFailed(Exception):
    """A run did not go the way the benchmark expects (counted)."""


# -- the daemon --------------------------------------------------------------------------------


def start_daemon(tmp: Path, password: str, concurrency: int, warm_runners: int) -> Daemon:
    """As bench/sandbox.py's, with the job scheduler's concurrency and warm runners set."""
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
        "STOCKADE_SANDBOX_MAX": str(SANDBOX_MAX),
        "STOCKADE_JOBS_CONCURRENCY": str(concurrency),
        "STOCKADE_JOBS_WARM_RUNNERS": str(warm_runners),
        "PYTHONUNBUFFERED": "1",
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


# -- the event stream --------------------------------------------------------------------------


@dataclass
class Arrival:
    received: float  # time.time() when the data line was read
    type: str
    published: float  # the event's own timestamp
    data: dict[str, Any]


class EventLog(EventReader):
    """The daemon's event stream, keeping every job.run.* end event by the job's task_id
    and every sandbox.running event by the sandbox's name, in the order read."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(url, headers, EVENT_TYPES)
        self.ended: dict[str, list[Arrival]] = defaultdict(list)
        self.sandboxes: dict[str, list[Arrival]] = defaultdict(list)
        self.dropped = 0  # events the daemon dropped because this stream fell behind

    def keep(self, received: float, body: dict[str, Any]) -> None:
        kind = str(body["type"])
        data = body.get("data") or {}
        arrival = Arrival(received, kind, wall(body["timestamp"]), data)
        self.dropped += int(body.get("dropped") or 0)
        if kind in ENDED_TYPES:
            self.ended[str(data.get("task_id"))].append(arrival)
        elif kind in ("sandbox.running", "sandbox.updated"):
            # A warm runner's sandbox is renamed job-<task_id> (sandbox.updated) once
            # its run takes it; a run that started its own runner names it so at once.
            self.sandboxes[str(data.get("name"))].append(arrival)

    def ended_count(self, task_id: str) -> int:
        with self._changed:
            return len(self.ended.get(task_id, ()))


# -- samples -----------------------------------------------------------------------------------


@dataclass
class RunSample:
    """One run's times in ms; None where the sandbox's row or event was not found."""

    due_to_code: float  # scheduled_for -> code_started_at: the overhead
    due_to_claimed: float
    claimed_to_started: float
    started_to_code: float
    started_to_env: float | None  # run started_at -> the sandbox's created_at
    env_create: float | None  # the sandbox's created_at -> started_at (the backend's create)
    spawn: float | None  # the backend's own spawn_time_ms
    env_recorded: float | None  # the sandbox's started_at -> sandbox.running published
    exec_to_code: float | None  # sandbox.running published -> code_started_at
    code_to_finished: float
    warm: bool  # the run took a warm runner (the sandbox rows above are then None)
    post_to_code: float | None = None  # (a1) the client sent the add -> code started
    add: float | None = None  # (a1) the add's round trip


@dataclass
class Floors:
    api_total: list[float] = field(default_factory=list)  # create sent -> printed time
    api_create: list[float] = field(default_factory=list)  # POST environments round trip
    api_exec: list[float] = field(default_factory=list)  # create answered -> printed
    api_warm_exec: list[float] = field(default_factory=list)  # 2nd exec sent -> printed
    host_pass: list[float] = field(default_factory=list)  # python3 -I -c pass, spawn -> exit
    host_print: list[float] = field(default_factory=list)  # spawn -> printed time


def ms(later: float, earlier: float) -> float:
    return (later - earlier) * 1000


def check_run(run: dict[str, Any], task_id: str) -> None:
    if run["status"] != "completed":
        raise RunFailed(f"{task_id} run {run['id']} ended {run['status']}: {run.get('error')}")
    if run["trigger"] != "schedule":
        raise RunFailed(f"{task_id} run {run['id']} was triggered by {run['trigger']}")
    if run.get("code_started_at") is None or run.get("started_at") is None:
        raise RunFailed(f"{task_id} run {run['id']} has no started_at or code_started_at")
    if run.get("result") != {}:
        raise RunFailed(f"{task_id} run {run['id']} returned {run.get('result')!r}")


def sample_of(
    run: dict[str, Any], env: dict[str, Any] | None, running: Arrival | None
) -> RunSample:
    due = wall(run["scheduled_for"])
    claimed = wall(run["claimed_at"])
    started = wall(run["started_at"])
    code = wall(run["code_started_at"])
    finished = wall(run["finished_at"])
    if running is not None and running.type == "sandbox.updated":
        # A warm runner: its sandbox and Python started before the run was due.
        env, running = None, None
        warm = True
    else:
        warm = False
    env_created = wall(env["created_at"]) if env and env.get("created_at") else None
    env_started = wall(env["started_at"]) if env and env.get("started_at") else None
    return RunSample(
        due_to_code=ms(code, due),
        due_to_claimed=ms(claimed, due),
        claimed_to_started=ms(started, claimed),
        started_to_code=ms(code, started),
        started_to_env=ms(env_created, started) if env_created is not None else None,
        env_create=(
            ms(env_started, env_created)
            if env_created is not None and env_started is not None
            else None
        ),
        spawn=float(env["spawn_time_ms"]) if env and env.get("spawn_time_ms") is not None else None,
        env_recorded=(
            ms(running.published, env_started)
            if running is not None and env_started is not None
            else None
        ),
        exec_to_code=ms(code, running.published) if running is not None else None,
        code_to_finished=ms(finished, code),
        warm=warm,
    )


def job_body(task_id: str, repeat: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_id": task_id,
        "name": task_id,
        "priority": "CRITICAL",
        "code": NOOP,
    }
    if repeat is not None:
        body["repeat_interval"] = repeat
    return body


# -- (a) due -> code started -------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, url: str, api: Api, events: EventLog) -> None:
        self.args = args
        self.url = url
        self.api = api
        self.events = events
        self.floor_envs: set[str] = set()  # created by the floors and not yet deleted
        self.failures: list[str] = []

    def fail(self, message: str) -> None:
        self.failures.append(message)
        note(f"FAILED: {message}")

    def history(self, task_id: str, limit: int) -> list[dict[str, Any]]:
        body = self.api.json("GET", f"/daemon/tasks/{task_id}/history?limit={limit}")
        runs: list[dict[str, Any]] = body["runs"]
        return runs

    def environment(self, running: Arrival | None) -> dict[str, Any] | None:
        if running is None:
            return None
        status, raw = self.api.call("GET", f"{ENVIRONMENTS}/{running.data['id']}")
        if status != 200:
            return None
        found: dict[str, Any] = json.loads(raw)
        return found

    def running_event(self, task_id: str, run: dict[str, Any]) -> Arrival | None:
        """The sandbox.running event of ``run``'s sandbox (its publication lies between
        the run's started_at and its code_started_at), or the sandbox.updated event of
        the warm runner it took (published after the run started, before it finished)."""
        started, code = wall(run["started_at"]), wall(run["code_started_at"])
        finished = wall(run["finished_at"])
        with self.events._changed:
            candidates = list(self.events.sandboxes.get(f"job-{task_id}", ()))
        return next(
            (
                a
                for a in candidates
                if started <= a.published
                and a.published <= (code if a.type == "sandbox.running" else finished)
            ),
            None,
        )

    # (a1)

    def one_off(self, number: int) -> RunSample:
        api = self.api
        task_id = f"bench-once-{number:04d}"
        sent_wall = time.time()
        sent = time.perf_counter()
        api.json("POST", "/daemon/tasks/add", job_body(task_id))
        add_ms = (time.perf_counter() - sent) * 1000
        if not self.events.wait(lambda: task_id in self.events.ended, self.args.run_timeout):
            raise RunFailed(f"{task_id}: no job.run.* end event within {self.args.run_timeout} s")
        runs = self.history(task_id, 5)
        if len(runs) != 1:
            raise RunFailed(f"{task_id}: {len(runs)} runs, expected 1")
        run = runs[0]
        check_run(run, task_id)
        running = self.running_event(task_id, run)
        sample = sample_of(run, self.environment(running), running)
        sample.post_to_code = ms(wall(run["code_started_at"]), sent_wall)
        sample.add = add_ms
        return sample

    # (a1) and (a2), interleaved

    def measure_a(self, floors: Floors) -> tuple[list[RunSample], list[RunSample], int]:
        """(a1)'s samples, (a2)'s, and how many occurrences the scheduler skipped.

        The repeating job runs throughout; after each of its occurrences, if the next is
        far enough away, one one-off job runs, then one round of the floors."""
        args = self.args
        task_id = "bench-every"
        skip = 1 + args.warmup
        wanted = skip + args.runs
        note(
            f"(a) one job every {args.interval:g} s, and between its occurrences one one-off "
            f"job and one floor round: {skip} unrecorded occurrences, then {args.runs} "
            f"(about {wanted * args.interval:.0f} s)"
        )
        self.api.json("POST", "/daemon/tasks/add", job_body(task_id, args.interval))
        one_offs: list[RunSample] = []
        added = 0  # one-off jobs added (the first --warmup are not recorded)
        seen = 0  # occurrences ended
        give_up = wanted + 2 * args.runs + 10
        try:
            while seen < wanted or len(one_offs) < args.runs:
                if seen >= give_up:
                    self.fail(f"(a1) only {len(one_offs)} one-off jobs fitted between occurrences")
                    break
                have = seen + 1

                def ended(have: int = have) -> bool:
                    return self.events.ended_count(task_id) >= have

                if not self.events.wait(ended, args.interval + args.run_timeout):
                    raise RunFailed(f"{task_id}: occurrence {have} did not end in time")
                seen = self.events.ended_count(task_id)
                due = wall(self.history(task_id, 1)[0]["scheduled_for"])
                following = due + args.interval * (int((time.time() - due) / args.interval) + 1)

                def fits(following: float = following) -> bool:
                    return following - time.time() > float(args.settle + args.gap_guard)

                if len(one_offs) < args.runs and fits():
                    time.sleep(args.settle)
                    try:
                        sample = self.one_off(added)
                        if added >= args.warmup:
                            one_offs.append(sample)
                    except (RunFailed, RuntimeError, KeyError) as exc:
                        self.fail(f"(a1) {type(exc).__name__}: {exc}")
                    added += 1
                if fits():
                    time.sleep(args.settle)
                    self.floor(floors if seen > skip else None)
                if seen > skip and (seen - skip) % 25 == 0:
                    note(
                        f"  {min(seen - skip, args.runs)}/{args.runs} occurrences, "
                        f"{len(one_offs)}/{args.runs} one-off jobs, "
                        f"{len(floors.api_total)} floor rounds"
                    )
            # Read before the delete, which takes the job's runs with it.
            runs = self.history(task_id, seen + 10)
        finally:
            with contextlib.suppress(RuntimeError, OSError, http.client.HTTPException):
                self.api.json("DELETE", f"/daemon/tasks/{task_id}", expect=204)
        # Wait for a run under way (one begun after the last recorded one) to end.
        deadline = time.monotonic() + args.run_timeout
        while self.api.json("GET", "/daemon/status")["active_runs"] and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        repeating, skipped = self._occurrences(task_id, runs, skip, wanted)
        return one_offs, repeating, skipped

    def _occurrences(
        self, task_id: str, runs: list[dict[str, Any]], skip: int, wanted: int
    ) -> tuple[list[RunSample], int]:
        """The samples of occurrences skip+1..wanted, and how many occurrences the
        scheduler skipped among them (a gap of more than 1.5 intervals)."""
        ordered = sorted(runs, key=lambda r: wall(r["scheduled_for"]))[:wanted]
        samples: list[RunSample] = []
        skipped = 0
        previous: float | None = None
        for index, run in enumerate(ordered):
            due = wall(run["scheduled_for"])
            if previous is not None and due - previous > 1.5 * self.args.interval:
                skipped += round((due - previous) / self.args.interval) - 1
            previous = due
            if index < skip:
                continue
            try:
                check_run(run, task_id)
            except RunFailed as exc:
                self.fail(f"(a2) {exc}")
                continue
            running = self.running_event(task_id, run)
            samples.append(sample_of(run, self.environment(running), running))
        if len(ordered) < wanted:
            self.fail(f"(a2) {task_id}: {len(ordered)} runs in its history, expected {wanted}")
        return samples, skipped

    # The floors.

    def floor(self, floors: Floors | None) -> None:
        """One round of the (a) floors; recorded into ``floors`` unless it is None."""
        api = self.api
        sent = time.time()
        created = api.json("POST", ENVIRONMENTS, {"name": "floor"}, expect=201)
        answered = time.time()
        env_id = str(created["id"])
        self.floor_envs.add(env_id)
        try:
            if created["status"] != "running":
                raise RuntimeError(f"the floor environment is {created['status']}")
            first = api.json("POST", f"{ENVIRONMENTS}/{env_id}/exec", {"command": FLOOR_ARGV})
            second_sent = time.time()
            second = api.json("POST", f"{ENVIRONMENTS}/{env_id}/exec", {"command": FLOOR_ARGV})
            printed = [float(r["stdout"]) for r in (first, second)]
        finally:
            api.json("DELETE", f"{ENVIRONMENTS}/{env_id}?force=true", expect=204)
            self.floor_envs.discard(env_id)
        started = time.perf_counter()
        subprocess.run([HOST_PYTHON, "-I", "-c", "pass"], check=True)
        host_pass = (time.perf_counter() - started) * 1000
        spawned = time.time()
        out = subprocess.run(
            [HOST_PYTHON, "-I", "-c", PRINT_TIME], check=True, capture_output=True
        ).stdout
        host_print = ms(float(out), spawned)
        if floors is not None:
            floors.api_total.append(ms(printed[0], sent))
            floors.api_create.append(ms(answered, sent))
            floors.api_exec.append(ms(printed[0], answered))
            floors.api_warm_exec.append(ms(printed[1], second_sent))
            floors.host_pass.append(host_pass)
            floors.host_print.append(host_print)

    def delete_floor_envs(self) -> None:
        for env_id in list(self.floor_envs):
            with contextlib.suppress(Exception):
                self.api.call("DELETE", f"{ENVIRONMENTS}/{env_id}?force=true")
            self.floor_envs.discard(env_id)


# -- (b) throughput ----------------------------------------------------------------------------


@dataclass
class Throughput:
    jobs: int
    concurrency: int
    connections: int
    wall_s: float  # first POST sent -> last job.run.* end event read
    runs_per_s: float
    posted_s: float  # first POST sent -> every POST answered
    adds_per_s: float
    daemon_s: float  # the first run's scheduled_for -> the last run's finished_at
    completed: int  # jobs with execution_count 1 and success_count 1
    floor_s: float  # the raw create + exec + delete cycles' wall time
    floor_per_s: float
    ratio: float  # wall_s / floor_s
    due_to_claimed: Distribution  # the queue behind the concurrency limit
    claimed_to_code: Distribution
    code_to_finished: Distribution
    claimed_to_finished: Distribution  # how long a run holds its slot
    occupancy: float  # started -> finished summed / (concurrency x first start -> last end)
    free_slot_s: float  # time with a free slot while every job was due and one unstarted
    longest_free_ms: float  # the longest such stretch
    floor_cycle: Distribution  # one raw cycle, ms
    seen_by: str  # "SSE" or "polling" (when the stream dropped events)


async def add_burst(
    url: str, headers: dict[str, str], ids: list[str], connections: int
) -> tuple[float, float, list[str]]:
    """Every job of ``ids`` added at once: (first sent, last answered, failures)."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=REQUEST_TIMEOUT, limits=limits
    ) as client:
        # Open the connections first, so the measurement is of adds, not of TCP set-up.
        await asyncio.gather(*(client.get("/health") for _ in range(connections)))

        async def add(task_id: str) -> None:
            response = await client.post("/daemon/tasks/add", json=job_body(task_id))
            if response.status_code != 200:
                raise RuntimeError(f"add {task_id}: {response.status_code} {response.text[:300]}")

        started = time.time()
        results = await asyncio.gather(*(add(t) for t in ids), return_exceptions=True)
        answered = time.time()
    return started, answered, [str(r) for r in results if isinstance(r, BaseException)]


async def floor_burst(
    url: str, headers: dict[str, str], count: int, workers: int, alive: set[str]
) -> tuple[float, list[float], list[str]]:
    """``count`` raw create + exec python3 + delete cycles by ``workers`` at once:
    (wall s, each cycle's ms, failures)."""
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    left = iter(range(count))
    cycles: list[float] = []
    failures: list[str] = []
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=REQUEST_TIMEOUT, limits=limits
    ) as client:
        await asyncio.gather(*(client.get("/health") for _ in range(workers)))

        async def cycle() -> None:
            began = time.perf_counter()
            response = await client.post(ENVIRONMENTS, json={"name": "floor"})
            if response.status_code != 201:
                raise RuntimeError(f"create: {response.status_code} {response.text[:300]}")
            env_id = response.json()["id"]
            alive.add(env_id)
            try:
                response = await client.post(
                    f"{ENVIRONMENTS}/{env_id}/exec", json={"command": NOOP_ARGV}
                )
                if response.status_code != 200 or response.json()["exit_code"] != 0:
                    raise RuntimeError(f"exec: {response.status_code} {response.text[:300]}")
            finally:
                response = await client.delete(f"{ENVIRONMENTS}/{env_id}?force=true")
                if response.status_code == 204:
                    alive.discard(env_id)
            cycles.append((time.perf_counter() - began) * 1000)

        async def worker() -> None:
            for _ in left:
                try:
                    await cycle()
                except (RuntimeError, httpx.HTTPError, ValueError, KeyError) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        took = time.perf_counter() - started
    return took, cycles, failures


def slot_use(runs: list[dict[str, Any]], concurrency: int) -> tuple[float, float, float]:
    """(occupancy, free-slot seconds, longest free-slot stretch in ms) of a burst's runs.

    A run holds its slot from just after its claim to just after its finished_at (the
    audit row follows); started_at -> finished_at stands for it here (claimed_at is
    the clock read when its scheduler pass began, which may precede the end of the run
    whose slot it takes). Occupancy: the runs' started -> finished summed, over
    concurrency x (the first start -> the last finish). Free-slot time: from the moment
    every job was due (the last scheduled_for) to the last start, how long fewer than
    ``concurrency`` runs were under way: time the scheduler could have started a
    waiting job and did not."""
    if not runs:
        return float("nan"), float("nan"), float("nan")
    claims = [wall(r["started_at"]) for r in runs]
    ends = [wall(r["finished_at"]) for r in runs]
    held = sum(e - c for c, e in zip(claims, ends, strict=True))
    span = max(ends) - min(claims)
    occupancy = held / (concurrency * span) if span > 0 else float("nan")
    begin, until = max(wall(r["scheduled_for"]) for r in runs), max(claims)
    changes = sorted([(c, 1) for c in claims] + [(e, -1) for e in ends])
    active = 0
    previous = min(claims)
    free = longest = stretch = 0.0
    for at, step in changes:
        low, high = max(previous, begin), min(at, until)
        if high > low:  # [previous, at) had ``active`` runs under way
            if active < concurrency:
                free += high - low
                stretch += high - low
                longest = max(longest, stretch)
            else:
                stretch = 0.0
        if at >= until:
            break
        active += step
        previous = at
    return occupancy, free, longest * 1000


def measure_throughput(args: argparse.Namespace, bench: Bench) -> Throughput:
    api, events = bench.api, bench.events
    note(f"(b) floor: {args.jobs} raw create + exec python3 + delete, {args.concurrency} at once")
    floor_s, floor_cycles, floor_failures = asyncio.run(
        floor_burst(bench.url, api.headers, args.jobs, args.concurrency, bench.floor_envs)
    )
    for failure in floor_failures:
        bench.fail(f"(b) floor cycle: {failure}")
    time.sleep(2.0)  # let the warm pool refill and the tear-downs finish
    ids = [f"bench-burst-{n:04d}" for n in range(args.jobs)]
    note(f"(b) {args.jobs} CRITICAL no-op jobs added at once over {args.connections} connections")
    dropped_before = events.dropped
    started, answered, add_failures = asyncio.run(
        add_burst(bench.url, api.headers, ids, args.connections)
    )
    for failure in add_failures:
        bench.fail(f"(b) {failure}")
    expected = int(args.jobs) - len(add_failures)
    timeout = max(60.0, args.jobs * 0.5)

    def all_ended() -> bool:
        return sum(1 for t in ids if t in events.ended) >= expected

    seen_by = "SSE"
    if events.wait(all_ended, timeout):
        with events._changed:
            last = max(events.ended[t][0].received for t in ids if t in events.ended)
    else:
        # The stream fell behind (events dropped) or a run never ended: poll the counts.
        seen_by = "polling"
        note(f"(b) the stream did not report every run (dropped {events.dropped}); polling")
        deadline = time.monotonic() + timeout
        while True:
            listed = api.json("GET", "/daemon/tasks")["tasks"]
            done = sum(1 for j in listed if j["task_id"] in ids and j["execution_count"] >= 1)
            last = time.time()
            if done >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    if events.dropped > dropped_before:
        note(f"(b) the event stream dropped {events.dropped - dropped_before} events")
    wall_s = last - started
    # Every job ran once, and succeeded.
    listed = {j["task_id"]: j for j in api.json("GET", "/daemon/tasks")["tasks"]}
    completed = 0
    for task_id in ids:
        job = listed.get(task_id)
        if job is None:
            continue  # its add failed (counted)
        if job["execution_count"] == 1 and job["success_count"] == 1:
            completed += 1
        else:
            bench.fail(
                f"(b) {task_id}: execution_count {job['execution_count']}, success_count "
                f"{job['success_count']}, last_result {job.get('last_result')!r}"
            )
    note(f"(b) reading {len(ids)} histories")
    runs: list[dict[str, Any]] = []
    for task_id in ids:
        if task_id not in listed:
            continue
        found = bench.history(task_id, 5)
        if len(found) != 1:
            bench.fail(f"(b) {task_id}: {len(found)} runs, expected 1")
            continue
        try:
            check_run(found[0], task_id)
        except RunFailed as exc:
            bench.fail(f"(b) {exc}")
            continue
        runs.append(found[0])

    def dist(later: str, earlier: str) -> Distribution:
        return Distribution.of([ms(wall(r[later]), wall(r[earlier])) for r in runs])

    daemon_s = (
        max(wall(r["finished_at"]) for r in runs) - min(wall(r["scheduled_for"]) for r in runs)
        if runs
        else float("nan")
    )
    occupancy, free_slot_s, longest_free_ms = slot_use(runs, args.concurrency)
    return Throughput(
        jobs=args.jobs,
        concurrency=args.concurrency,
        connections=args.connections,
        wall_s=wall_s,
        runs_per_s=completed / wall_s if wall_s > 0 else float("nan"),
        posted_s=answered - started,
        adds_per_s=expected / (answered - started) if answered > started else float("nan"),
        daemon_s=daemon_s,
        completed=completed,
        floor_s=floor_s,
        floor_per_s=len(floor_cycles) / floor_s if floor_s > 0 else float("nan"),
        ratio=wall_s / floor_s if floor_s > 0 else float("nan"),
        due_to_claimed=dist("claimed_at", "scheduled_for"),
        claimed_to_code=dist("code_started_at", "claimed_at"),
        code_to_finished=dist("finished_at", "code_started_at"),
        claimed_to_finished=dist("finished_at", "claimed_at"),
        occupancy=occupancy,
        free_slot_s=free_slot_s,
        longest_free_ms=longest_free_ms,
        floor_cycle=Distribution.of(floor_cycles),
        seen_by=seen_by,
    )


# -- the measurement ---------------------------------------------------------------------------


@dataclass
class Overhead:
    """(a1) or (a2): distributions of RunSample's fields, in ms."""

    runs: int
    due_to_code: Distribution
    due_to_claimed: Distribution
    claimed_to_started: Distribution
    started_to_code: Distribution
    started_to_env: Distribution
    env_create: Distribution
    spawn: Distribution
    env_recorded: Distribution
    exec_to_code: Distribution
    code_to_finished: Distribution
    post_to_code: Distribution | None
    add: Distribution | None
    warm_runs: int  # runs that took a warm runner
    cold_due_to_code: Distribution  # due -> code started of the runs that did not
    ratio: float  # due_to_code p50 / the API floor's p50

    @classmethod
    def of(cls, samples: list[RunSample], floor: Distribution) -> Overhead:
        def dist(name: str) -> Distribution:
            values = [getattr(s, name) for s in samples]
            return Distribution.of([v for v in values if v is not None])

        due_to_code = dist("due_to_code")
        client = any(s.add is not None for s in samples)
        return cls(
            runs=len(samples),
            due_to_code=due_to_code,
            due_to_claimed=dist("due_to_claimed"),
            claimed_to_started=dist("claimed_to_started"),
            started_to_code=dist("started_to_code"),
            started_to_env=dist("started_to_env"),
            env_create=dist("env_create"),
            spawn=dist("spawn"),
            env_recorded=dist("env_recorded"),
            exec_to_code=dist("exec_to_code"),
            code_to_finished=dist("code_to_finished"),
            post_to_code=dist("post_to_code") if client else None,
            add=dist("add") if client else None,
            warm_runs=sum(s.warm for s in samples),
            cold_due_to_code=Distribution.of([s.due_to_code for s in samples if not s.warm]),
            ratio=due_to_code.p50 / floor.p50 if floor.p50 > 0 else float("nan"),
        )


@dataclass
class FloorResult:
    api_total: Distribution
    api_create: Distribution
    api_exec: Distribution
    api_warm_exec: Distribution
    host_pass: Distribution
    host_print: Distribution


@dataclass
class Result:
    failures: list[str]
    one_off: Overhead | None
    repeating: Overhead | None
    skipped_occurrences: int
    floor: FloorResult | None
    throughput: Throughput | None
    events_dropped: int


def measure(args: argparse.Namespace, bench: Bench) -> Result:
    floors = Floors()
    one_off: list[RunSample] | None = None
    repeating: list[RunSample] | None = None
    skipped = 0
    throughput: Throughput | None = None
    if "a" in args.only:
        try:
            one_off, repeating, skipped = bench.measure_a(floors)
        except (RunFailed, RuntimeError, KeyError) as exc:
            bench.fail(f"(a) {type(exc).__name__}: {exc}")
    if "b" in args.only:
        throughput = measure_throughput(args, bench)
    floor = (
        FloorResult(
            api_total=Distribution.of(floors.api_total),
            api_create=Distribution.of(floors.api_create),
            api_exec=Distribution.of(floors.api_exec),
            api_warm_exec=Distribution.of(floors.api_warm_exec),
            host_pass=Distribution.of(floors.host_pass),
            host_print=Distribution.of(floors.host_print),
        )
        if floors.api_total
        else None
    )
    api_floor = floor.api_total if floor else Distribution.of([])
    if skipped:
        bench.fail(f"(a2) the scheduler skipped {skipped} occurrence(s)")
    return Result(
        failures=bench.failures,
        one_off=Overhead.of(one_off, api_floor) if one_off else None,
        repeating=Overhead.of(repeating, api_floor) if repeating else None,
        skipped_occurrences=skipped,
        floor=floor,
        throughput=throughput,
        events_dropped=bench.events.dropped,
    )


# -- the report --------------------------------------------------------------------------------


def verdicts(result: Result, args: argparse.Namespace) -> list[tuple[str, bool, str]]:
    out: list[tuple[str, bool, str]] = []
    for name, what, overhead in (
        ("a1", "one-off job due -> code started", result.one_off),
        ("a2", f"every {args.interval:g} s: due -> code started", result.repeating),
    ):
        if overhead is not None:
            d = overhead.due_to_code
            out.append(
                (
                    name,
                    d.p50 <= TARGET_MS,
                    f"({name}) {what} p50 {d.p50:.2f} ms, p99 {d.p99:.2f} ms = "
                    f"{overhead.ratio:.2f}x floor (target p50 <= {TARGET_MS:g} ms)",
                )
            )
        elif "a" in args.only:
            out.append((name, False, f"({name}) {what}: no run measured"))
    t = result.throughput
    if t is not None:
        out.append(
            (
                "b",
                t.completed == t.jobs,
                f"(b) {t.completed} of {t.jobs} no-op jobs ran in {t.wall_s:.2f} s: "
                f"{t.runs_per_s:.1f} runs/s at concurrency {t.concurrency} = {t.ratio:.2f}x "
                f"the floor's time ({t.floor_per_s:.1f} raw cycles/s; no target)",
            )
        )
    out.append(
        (
            "checks",
            not result.failures,
            f"every run completed with the result {{}}; {len(result.failures)} failure(s)",
        )
    )
    return out


def conditions(args: argparse.Namespace, load: tuple[float, float]) -> list[str]:
    parts = [
        "daemon: `python -m stockade daemon` (uvicorn, 1 worker, SQLite in a temporary home), "
        f"rate limits disabled, log level {LOG_LEVEL!r}, STOCKADE_JOBS_CONCURRENCY="
        f"{args.concurrency}, STOCKADE_JOBS_WARM_RUNNERS={args.warm_runners}, warm pool "
        "default (4), STOCKADE_JOBS_TICK default (1 s)",
        "client: one keep-alive http.client connection; one SSE stream (http.client, in a "
        "thread) for job.run.<end>, sandbox.running and sandbox.updated; httpx async for (b)",
        "timestamps: the daemon's (datetime.now(UTC)), the runner's and this script's "
        "(time.time()) are the same host clock, so their differences are valid",
        f"jobs: CRITICAL, code {NOOP!r}",
    ]
    if "a" in args.only:
        parts += [
            f"(a) one job every {args.interval:g} s ({args.runs} occurrences recorded after "
            f"{1 + args.warmup}) and, between its occurrences, one-off jobs one at a time "
            f"({args.runs} recorded after {args.warmup})",
            f"floor (a), one round between occurrences (after the one-off job; each after "
            f"{args.settle:g} s of rest, and only when the next occurrence is > "
            f"{args.settle + args.gap_guard:g} s away): POST environments + exec {FLOOR_ARGV} "
            f"-> printed time, a 2nd exec in it, DELETE; on the host {HOST_PYTHON} -I -c pass "
            "(spawn -> exit) and -c print(time.time()) (spawn -> printed); x floor = p50 / "
            "API floor p50",
        ]
    if "b" in args.only:
        parts += [
            f"(b) {args.jobs} jobs added at once over {args.connections} connections",
            f"floor (b): {args.jobs} raw create + exec {NOOP_ARGV} + DELETE by "
            f"{args.concurrency} workers at once, first; x floor = jobs' wall time / floor's "
            "wall time",
        ]
    parts.append(
        f"machine: {os.cpu_count()} CPU cores shared by client, daemon and sandboxes; 1-min "
        f"load average {load[0]:.2f} before, {load[1]:.2f} after"
    )
    return parts


WIDTH = 50


def row(name: str, dist: Distribution, floor: Distribution | None, ratio: float | None) -> str:
    floor_text = f"{floor.p50:>9.2f}" if floor else f"{'':>9}"
    ratio_text = f"{ratio:>7.2f}x" if ratio is not None else f"{'':>8}"
    return (
        f"{name:<{WIDTH}} {dist.n:>5} {dist.p50:>8.2f} {dist.p90:>8.2f} {dist.p99:>8.2f} "
        f"{floor_text} {ratio_text}"
    )


def print_overhead(title: str, o: Overhead, floor: FloorResult | None) -> None:
    api_floor = floor.api_total if floor else None
    print(row(title, o.due_to_code, api_floor, o.ratio if floor else None))
    print(row("     due -> claimed (scheduler wake-up)", o.due_to_claimed, None, None))
    print(row("     claimed -> started (due query, claim, task)", o.claimed_to_started, None, None))
    print(row("     started -> code started", o.started_to_code, None, None))
    print(f"     {o.warm_runs} of {o.runs} runs took a warm runner; the rest started their own:")
    print(row("     own runner: due -> code started", o.cold_due_to_code, None, None))
    print(row("       started -> sandbox created_at (run row)", o.started_to_env, None, None))
    print(row("       sandbox created_at -> started_at", o.env_create, None, None))
    print(row("         of which backend spawn_time_ms", o.spawn, None, None))
    print(row("       sandbox started_at -> running (its row)", o.env_recorded, None, None))
    print(row("       sandbox running -> code (exec, python3)", o.exec_to_code, None, None))
    print(row("     code started -> finished", o.code_to_finished, None, None))
    if o.post_to_code is not None and o.add is not None:
        print(row("     client: POST add sent -> code started", o.post_to_code, None, None))
        print(row("     client: POST /daemon/tasks/add round trip", o.add, None, None))


def print_table(result: Result, args: argparse.Namespace, load: tuple[float, float]) -> None:
    r = result
    header = (
        f"{'measurement (ms)':<{WIDTH}} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} "
        f"{'floor p50':>9} {'x floor':>8}"
    )
    if r.one_off or r.repeating or r.floor:
        print(header)
        print("-" * len(header))
    if r.one_off:
        print_overhead("(a1) one-off: due -> code started", r.one_off, r.floor)
    if r.repeating:
        title = f"(a2) every {args.interval:g} s: due -> code started"
        print_overhead(title, r.repeating, r.floor)
    if r.floor:
        f = r.floor
        print(row("floor: POST environments + exec -> printed", f.api_total, None, None))
        print(row("     POST environments round trip", f.api_create, None, None))
        print(row("     exec python3 sent -> printed (new sandbox)", f.api_exec, None, None))
        print(row("     again in that sandbox: sent -> printed", f.api_warm_exec, None, None))
        print(row("floor: host python3 -I -c pass (spawn -> exit)", f.host_pass, None, None))
        print(row("floor: host python3 -I spawn -> printed time", f.host_print, None, None))
    t = r.throughput
    if t is not None:
        if r.one_off or r.repeating or r.floor:
            print()
        head = (
            f"{f'(b) {t.jobs} no-op jobs, concurrency {t.concurrency}':<{WIDTH}} "
            f"{'s':>8} {'per s':>8} {'floor s':>8} {'floor/s':>8} {'x floor':>8}"
        )
        print(head)
        print("-" * len(head))
        print(
            f"{f'first POST -> last run ended ({t.seen_by})':<{WIDTH}} {t.wall_s:>8.2f} "
            f"{t.runs_per_s:>8.1f} {t.floor_s:>8.2f} {t.floor_per_s:>8.1f} {t.ratio:>7.2f}x"
        )
        print(
            f"{f'     POSTs answered ({t.connections} connections)':<{WIDTH}} "
            f"{t.posted_s:>8.2f} {t.adds_per_s:>8.1f}"
        )
        print(
            f"{'     daemon: first due -> last finished_at':<{WIDTH}} {t.daemon_s:>8.2f} "
            f"{t.completed / t.daemon_s if t.daemon_s > 0 else float('nan'):>8.1f}"
        )
        print()
        print(header)
        print("-" * len(header))
        print(row("(b) per run: due -> claimed (queued)", t.due_to_claimed, None, None))
        print(row("     claimed -> code started", t.claimed_to_code, None, None))
        print(row("     code started -> finished", t.code_to_finished, None, None))
        print(row("     claimed -> finished (a slot held)", t.claimed_to_finished, None, None))
        print(row("     floor: one raw create+exec+delete cycle", t.floor_cycle, None, None))
        print(
            f"slots: {t.occupancy:.0%} occupied (started -> finished over {t.concurrency} x the "
            f"burst); once all were due, a slot stood free while jobs waited for "
            f"{t.free_slot_s * 1000:.0f} ms in all, {t.longest_free_ms:.0f} ms at the longest"
        )
    print()
    if r.events_dropped:
        print(f"the event stream dropped {r.events_dropped} events (the daemon's queue)")
    if r.failures:
        print(f"failures ({len(r.failures)}):")
        for failure in r.failures[:20]:
            print(f"  {failure}")
        print()
    for line in conditions(args, load):
        print(f"note: {line}")
    print()
    for _, ok, text in verdicts(result, args):
        print(f"{'PASS' if ok else 'FAIL'}: {text}")


# -- main --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> tuple[int, Result | None, str]:
    result: Result | None = None
    layout = CgroupLayout.detect()
    run_dir_existed = RUN_DIR.exists()
    daemon: Daemon | None = None
    api: Api | None = None
    events: EventLog | None = None
    bench: Bench | None = None
    code = 0
    daemon_log = ""
    with tempfile.TemporaryDirectory(prefix="stockade-bench-") as tmp:
        password = secrets.token_urlsafe(18)
        try:
            daemon = start_daemon(Path(tmp), password, args.concurrency, args.warm_runners)
            note(f"daemon pid {daemon.process.pid} on {daemon.url} (home {daemon.home})")
            wait_healthy(daemon, args.startup_timeout)
            token = login(daemon.url, password)
            api = Api(daemon.url, token)
            events = EventLog(daemon.url, api.headers)
            events.start()
            bench = Bench(args, daemon.url, api, events)
            result = measure(args, bench)
            if events.error is not None:
                raise RuntimeError(f"the event stream failed: {events.error}")
            if daemon.process.poll() is not None:
                raise RuntimeError(f"the daemon died during the run:\n{daemon.output()[-4000:]}")
        except KeyboardInterrupt:
            note("interrupted; cleaning up")
            code = 130
        except (RuntimeError, TimeoutError, ValueError, KeyError, OSError, httpx.HTTPError) as exc:
            note(f"error: {type(exc).__name__}: {exc}")
            code = 1
        finally:
            with _ignoring_signals():
                if api is not None and daemon is not None and daemon.process.poll() is None:
                    with contextlib.suppress(Exception):
                        api.call("POST", "/daemon/stop")  # no new runs while it shuts down
                    if bench is not None:
                        bench.delete_floor_envs()
                if api is not None:
                    api.close()
                if events is not None:
                    events.close()
                clean, daemon_log = shut_down(daemon, layout, run_dir_existed)
                if not clean:
                    code = code or 1
    return code, result, daemon_log


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        note("error: run as root (the namespace backend needs it)")
        return 2
    if shutil.which(HOST_PYTHON) is None:
        note(f"error: no {HOST_PYTHON} on this host (the host floor needs it)")
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    # The SSE thread wakes on a read while the main thread waits: let it have the GIL soon.
    sys.setswitchinterval(0.0005)
    load_before = os.getloadavg()[0]
    code, result, daemon_log = run(args)
    if result is None:
        if daemon_log:
            note(f"daemon output:\n{daemon_log[-4000:]}")
        return code or 1
    load = (load_before, os.getloadavg()[0])
    if args.json:
        payload = {
            "conditions": conditions(args, load),
            "results": asdict(result),
            "verdicts": [
                {"target": t, "pass": ok, "text": s} for t, ok, s in verdicts(result, args)
            ],
            "daemon_log": daemon_log,
        }
        print(json.dumps(payload, indent=2))
    else:
        print_table(result, args, load)
        if daemon_log:
            print(f"\ndaemon output (log level {LOG_LEVEL}):\n{daemon_log}")
    return code or (1 if result.failures else 0)


if __name__ == "__main__":
    sys.exit(main())

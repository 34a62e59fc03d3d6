"""The approval cliff's latencies through Stockade's REST API, each beside a floor measured in
the same run (issue 4, acceptance item 8).

Not a test: a benchmark to run by hand, as root (the ``namespace`` backend needs it).

    .venv/bin/python bench/approvals.py [--tasks 200] [--warmup 3] [--keep-going] [--json]

It starts ONE ``stockade daemon`` process (``python -m stockade daemon``: uvicorn, one
worker, SQLite, the rule-based planner: no STOCKADE_LLM_MODEL) with a temporary
STOCKADE_HOME on a free loopback port, rate limits disabled, log level "warning", and
STOCKADE_APPROVAL_ANSWER_WAIT left at its default (2 s); logs in as admin, opens ONE SSE
stream ``GET /api/v1/events?type=approval.&type=apikey.`` (read in a thread on its own
http.client connection) before the first task, and runs --tasks tasks one after another
(after --warmup unrecorded ones), each on one keep-alive http.client connection:

    POST /api/v1/tasks {"description": "run rm -f /home/sandbox/x"}

The planner turns "run <command>" into one run_command call; the policy rates ``rm`` high,
so the call pauses for approval. The approval's ``created_at`` is the moment the tool
asked (the tool's own timestamp, taken before the task's files are archived and the
approval row stored). Then:

(a1) asked -> visible: right after the POST returns, ``GET /api/v1/approvals?status=pending``
     in a tight loop (--poll-interval 0) until it lists an approval of this task;
     (a1) = the wall time that poll's answer was read - ``created_at``. Its resolution is
     one poll round trip (reported: "poll round trip"). "already visible" counts the
     tasks whose first poll already listed it (then (a1) includes the time before the
     first poll was sent). The polling is load on the daemon while the task runs.
(a2) asked -> SSE: the wall time this script read the ``approval.requested`` event whose
     data has this task's ``task_id`` - the data's ``created_at``. Split at the event's
     own ``timestamp`` (taken when it was published): asked -> published is the daemon's
     work (the run's pause: archive of the home directory, the store), published ->
     received is delivery.
(b)  approve -> running: ``POST /api/v1/approvals/{id} {"approved": true}``; the client's
     wall time just before sending, then ``GET /api/v1/tasks/{id}`` until the task has
     ended; (b) = the approved step's ``detail.started_at`` (taken just before the action
     executes in the sandbox) - the send time. The POST itself waits for the resumed run
     to finish (STOCKADE_APPROVAL_ANSWER_WAIT), so its latency is reported apart, as
     "approve round trip (includes the resumed run)". (b) is split with the daemon's own
     timestamps: the approval's ``responded_at``, the step's ``started_at`` and ``at``
     (recorded after the action), the task's ``completed_at``.
cycle: POST /api/v1/tasks -> visible -> approve -> task ended, per task.

Every task must end ``completed`` with one run_command step whose decision is "approved"
and outcome "completed", and its approval.requested event must arrive; a task that does
not is a failure (the run stops at the first one unless --keep-going; failures are
counted and listed, and make the exit status 1).

Floors, measured after every task in the same run (so a noisy neighbour slows both):
for (a1) ``GET /api/v1/auth/me`` (what any authenticated round trip costs; the best a
poll can see), --me-per-task times, each beside the same ``GET /api/v1/approvals
?status=pending`` with nothing pending and no task running (what a poll costs when the
daemon is idle; the polls during a task wait on its run, which shares the event loop);
for (a2) the SSE delivery of a cheap event: ``POST
/api/v1/api-keys`` then ``DELETE`` it publish ``apikey.created`` and ``apikey.revoked``,
and their delivery is the read time - the event's ``timestamp`` (that event's
publication costs nothing before it; the approval's does); for (b) a raw ``POST
/api/v1/environments/{id}/exec ["rm", "-f", "/home/sandbox/x"]`` in one running
environment: the whole round trip of the same action without the approval machinery (an
upper bound on its send -> start). "x floor" is the ratio of the p50s. Target: p50 <=
50 ms for (a1), (a2) and (b).

Clocks: the daemon runs on this machine and stamps with ``datetime.now(UTC)``, this
script with ``time.time()``: the same host clock (CLOCK_REALTIME), so differences of
the two sides' wall-clock timestamps are valid (to a few microseconds, plus the daemon's
timestamps' microsecond rounding).

Everything is cleaned up at the end, on Ctrl-C or on failure: tasks still active are
cancelled, the floor environment deleted, the daemon stopped, and whatever it left
(cgroups, mounts, its run directory) removed; the script then checks nothing is left.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from events import EventReader
from sandbox import (
    LOG_LEVEL,
    RUN_DIR,
    Daemon,
    Distribution,
    _ignoring_signals,
    _terminate,
    login,
    note,
    shut_down,
    start_daemon,
    wait_healthy,
)

from stockade.sandbox.cgroups import CgroupLayout

TARGET_MS = 50.0
REQUEST_TIMEOUT = 60.0
IDLE_RECONNECT = 2.0  # seconds; uvicorn closes a connection idle for 5 s
DESCRIPTION = "run rm -f /home/sandbox/x"
FLOOR_ARGV = ["rm", "-f", "/home/sandbox/x"]
EVENT_TYPES = ("approval.", "apikey.")  # the stream's filter (type prefixes)
KEPT_EVENTS = {"approval.requested", "apikey.created", "apikey.revoked"}  # what is matched
SANDBOX_MAX = 64
ENDED = ("completed", "failed", "cancelled")


# -- arguments ---------------------------------------------------------------------------------


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n", 1)[0] + "\n\n" + doc.split("\n\n", 2)[2],
        formatter_class=_Formatter,
    )
    parser.add_argument("--tasks", type=int, default=200, help="recorded tasks, one at a time")
    parser.add_argument("--warmup", type=int, default=3, help="unrecorded tasks first")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.0,
        help="(a1) seconds between polls of GET /api/v1/approvals (0: a tight loop)",
    )
    parser.add_argument(
        "--me-per-task", type=int, default=3, help="floor GET /api/v1/auth/me calls per task"
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="count a failed task and go on, instead of stopping at the first",
    )
    parser.add_argument(
        "--task-timeout",
        type=float,
        default=30.0,
        help="seconds a task may take to pause, and again to end, before it counts as failed",
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
    if args.tasks < 1 or args.warmup < 0 or args.me_per_task < 1:
        parser.error("need --tasks >= 1, --warmup >= 0 and --me-per-task >= 1")
    if args.poll_interval < 0 or args.task_timeout <= 0:
        parser.error("need --poll-interval >= 0 and --task-timeout > 0")
    return args


def wall(stamp: str) -> float:
    """A daemon's ISO UTC timestamp as seconds since the epoch (time.time()'s scale)."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class TaskFailed(Exception):
    """A task did not go the way the benchmark expects (counted; see --keep-going)."""


# -- the API client ----------------------------------------------------------------------------


class Api:
    """The REST calls the benchmark makes, on one keep-alive http.client connection
    (httpx costs about 1 ms more per request here, which would be the client's time)."""

    def __init__(self, url: str, token: str) -> None:
        self.headers = {"Authorization": f"Bearer {token}"}
        address = httpx.URL(url)
        self._http = http.client.HTTPConnection(address.host, address.port, timeout=REQUEST_TIMEOUT)
        self._json_headers = {**self.headers, "Content-Type": "application/json"}
        self._used = time.monotonic()

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        if time.monotonic() - self._used > IDLE_RECONNECT:
            self._http.close()  # a new connection rather than one uvicorn may be closing
        payload = None if body is None else json.dumps(body).encode()
        headers = self._json_headers if payload is not None else self.headers
        self._http.request(method, path, body=payload, headers=headers)
        response = self._http.getresponse()
        raw = response.read()
        self._used = time.monotonic()
        return response.status, raw

    def json(self, method: str, path: str, body: object = None, expect: int = 200) -> Any:
        status, raw = self.call(method, path, body)
        if status != expect:
            raise RuntimeError(f"{method} {path} answered {status}: {raw[:500]!r}")
        return json.loads(raw) if raw else None


# -- the event stream --------------------------------------------------------------------------


@dataclass
class Arrival:
    received: float  # time.time() when the data line was read
    body: dict[str, Any]  # {id, type, timestamp, data}


class EventListener(EventReader):
    """The daemon's event stream, keeping each event of ``kept`` types with the wall time
    its data line was read, by (type, key), the key being the data's task_id (approvals)
    or id (API keys)."""

    def __init__(
        self, url: str, headers: dict[str, str], types: tuple[str, ...], kept: set[str]
    ) -> None:
        super().__init__(url, headers, types)
        self._kept = kept
        self._arrivals: dict[tuple[str, str], Arrival] = {}

    def keep(self, received: float, body: dict[str, Any]) -> None:
        kind = str(body["type"])
        if kind in self._kept:
            data = body.get("data") or {}
            key = str(data.get("task_id") or data.get("id") or "")
            self._arrivals[(kind, key)] = Arrival(received, body)

    def arrival(self, type: str, key: str, timeout: float) -> Arrival | None:
        """The arrival of the event (type, key), waiting up to ``timeout`` seconds."""
        if not self.wait(lambda: (type, key) in self._arrivals, timeout):
            return None
        with self._changed:
            return self._arrivals.pop((type, key))


# -- one task ----------------------------------------------------------------------------------


@dataclass
class TaskSample:
    task_id: str
    create_ms: float  # POST /api/v1/tasks round trip
    a1_ms: float  # asked -> visible on GET /api/v1/approvals
    polls: int  # polls sent until it was listed (1: the first poll listed it)
    post_to_asked_ms: float  # the POST's answer -> the tool asked (negative: asked first)
    a2_ms: float  # asked -> approval.requested read from the SSE stream
    asked_to_published_ms: float  # created_at -> the event's timestamp (the daemon's work)
    published_to_received_ms: float  # the event's timestamp -> read here
    b_ms: float  # approve sent -> the step's started_at
    sent_to_responded_ms: float  # -> the approval's responded_at
    responded_to_started_ms: float  # responded_at -> started_at: resume up to the action
    started_to_step_ms: float  # started_at -> the step's at (the exec, then its record)
    step_to_completed_ms: float  # the step's at -> the task's completed_at
    completed_to_reply_ms: float  # completed_at -> the approve POST's answer read here
    approve_ms: float  # the approve POST's round trip (includes the resumed run)
    cycle_ms: float  # POST /tasks -> task seen ended
    task_started_to_asked_ms: float  # the task's started_at (sandbox running) -> asked


@dataclass
class Floors:
    me: list[float] = field(default_factory=list)  # GET /api/v1/auth/me round trips
    poll_idle: list[float] = field(default_factory=list)  # GET approvals, none pending, no task
    sse: list[float] = field(default_factory=list)  # apikey.* published -> read here
    exec: list[float] = field(default_factory=list)  # raw exec rm -f round trips
    apikey_create: list[float] = field(default_factory=list)  # POST /api/v1/api-keys


class Bench:
    def __init__(self, args: argparse.Namespace, api: Api, events: EventListener) -> None:
        self.args = args
        self.api = api
        self.events = events
        self.polls: list[float] = []  # every poll's round trip, ms
        self.active: set[str] = set()  # tasks that have not ended (cancelled on clean-up)
        self.floor_env: str | None = None

    # The task.

    def task(self, record: bool) -> TaskSample:
        api = self.api
        timeout = self.args.task_timeout
        began = time.perf_counter()
        task = api.json("POST", "/api/v1/tasks", {"description": DESCRIPTION}, expect=201)
        posted_wall = time.time()
        create_ms = (time.perf_counter() - began) * 1000
        task_id = str(task["id"])
        self.active.add(task_id)
        if task["status"] != "running":
            raise TaskFailed(f"task {task_id} is {task['status']} after create: {task['error']}")

        # (a1): poll until the approval is listed.
        approval: dict[str, Any] | None = None
        polls = 0
        deadline = time.monotonic() + timeout
        polls_here: list[float] = []
        while approval is None:
            if time.monotonic() > deadline:
                raise TaskFailed(f"task {task_id}: no pending approval after {timeout:g} s")
            sent = time.perf_counter()
            listed = api.json("GET", "/api/v1/approvals?status=pending")
            seen_wall = time.time()
            polls_here.append((time.perf_counter() - sent) * 1000)
            polls += 1
            approval = next((a for a in listed if a["task_id"] == task_id), None)
            if approval is None and self.args.poll_interval:
                time.sleep(self.args.poll_interval)
        asked = wall(approval["created_at"])
        a1_ms = (seen_wall - asked) * 1000

        # (a2): the event, published just after the row was stored; read by the SSE thread
        # while this thread polled.
        arrival = self.events.arrival("approval.requested", task_id, timeout=5.0)
        if arrival is None:
            raise TaskFailed(f"task {task_id}: no approval.requested event within 5 s")
        if arrival.body["data"]["id"] != approval["id"]:
            raise TaskFailed(f"task {task_id}: the event names another approval")
        published = wall(arrival.body["timestamp"])

        # (b): approve, then read the task once it has ended.
        sent_wall = time.time()
        sent = time.perf_counter()
        answered = api.json("POST", f"/api/v1/approvals/{approval['id']}", {"approved": True})
        replied_wall = time.time()
        approve_ms = (time.perf_counter() - sent) * 1000
        if answered["status"] != "approved":
            raise TaskFailed(f"task {task_id}: the approval reads {answered['status']}")
        deadline = time.monotonic() + timeout
        while True:
            final = api.json("GET", f"/api/v1/tasks/{task_id}")
            if final["status"] in ENDED:
                break
            if time.monotonic() > deadline:
                raise TaskFailed(f"task {task_id}: still {final['status']} after {timeout:g} s")
            time.sleep(0.002)
        cycle_ms = (time.perf_counter() - began) * 1000
        self.active.discard(task_id)
        step = check(final)
        if record:
            self.polls += polls_here
        started = wall(step["detail"]["started_at"])
        responded = wall(answered["responded_at"])
        return TaskSample(
            task_id=task_id,
            create_ms=create_ms,
            a1_ms=a1_ms,
            polls=polls,
            post_to_asked_ms=(asked - posted_wall) * 1000,
            a2_ms=(arrival.received - asked) * 1000,
            asked_to_published_ms=(published - asked) * 1000,
            published_to_received_ms=(arrival.received - published) * 1000,
            b_ms=(started - sent_wall) * 1000,
            sent_to_responded_ms=(responded - sent_wall) * 1000,
            responded_to_started_ms=(started - responded) * 1000,
            started_to_step_ms=(wall(step["at"]) - started) * 1000,
            step_to_completed_ms=(wall(final["completed_at"]) - wall(step["at"])) * 1000,
            completed_to_reply_ms=(replied_wall - wall(final["completed_at"])) * 1000,
            approve_ms=approve_ms,
            cycle_ms=cycle_ms,
            task_started_to_asked_ms=(asked - wall(final["started_at"])) * 1000,
        )

    # The floors.

    def start_floor_env(self) -> None:
        body = self.api.json("POST", "/api/v1/environments", {"name": "floor"}, expect=201)
        self.floor_env = str(body["id"])
        if body["status"] != "running":
            raise RuntimeError(f"the floor environment is {body['status']}")

    def floors(self, floors: Floors | None) -> None:
        """One round of every floor; recorded into ``floors`` unless it is None."""
        api = self.api
        for _ in range(self.args.me_per_task):
            started = time.perf_counter()
            api.json("GET", "/api/v1/auth/me")
            if floors is not None:
                floors.me.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            if api.json("GET", "/api/v1/approvals?status=pending"):
                raise RuntimeError("an approval is pending between tasks")
            if floors is not None:
                floors.poll_idle.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        result = api.json(
            "POST", f"/api/v1/environments/{self.floor_env}/exec", {"command": FLOOR_ARGV}
        )
        took = (time.perf_counter() - started) * 1000
        if result["exit_code"] != 0:
            raise RuntimeError(f"the floor's rm -f gave {result}")
        started = time.perf_counter()
        key = api.json("POST", "/api/v1/api-keys", {"description": "bench"}, expect=201)
        created = (time.perf_counter() - started) * 1000
        api.json("DELETE", f"/api/v1/api-keys/{key['id']}", expect=204)
        delivered = []
        for kind in ("apikey.created", "apikey.revoked"):
            arrival = self.events.arrival(kind, str(key["id"]), timeout=5.0)
            if arrival is None:
                raise RuntimeError(f"no {kind} event within 5 s")
            delivered.append((arrival.received - wall(arrival.body["timestamp"])) * 1000)
        if floors is not None:
            floors.exec.append(took)
            floors.apikey_create.append(created)
            floors.sse += delivered

    def cancel_active(self) -> None:
        for task_id in list(self.active):
            with contextlib.suppress(Exception):
                self.api.call("DELETE", f"/api/v1/tasks/{task_id}")
            self.active.discard(task_id)


def check(task: dict[str, Any]) -> dict[str, Any]:
    """The approved step of a task that ended as it should; TaskFailed otherwise."""
    if task["status"] != "completed":
        raise TaskFailed(f"task {task['id']} ended {task['status']}: {task.get('error')}")
    steps = task.get("steps") or []
    approved = [s for s in steps if s["decision"] == "approved"]
    if len(approved) != 1 or approved[0]["tool"] != "run_command":
        shown = [(s["tool"], s["decision"], s["outcome"]) for s in steps]
        raise TaskFailed(f"task {task['id']}: expected one approved run_command step: {shown}")
    step: dict[str, Any] = approved[0]
    if step["outcome"] != "completed":
        raise TaskFailed(f"task {task['id']}: the approved step's outcome is {step['outcome']}")
    if "started_at" not in step["detail"]:
        raise TaskFailed(f"task {task['id']}: the approved step has no detail.started_at")
    return step


# -- the measurement ---------------------------------------------------------------------------


@dataclass
class Result:
    tasks: int
    failures: list[str]
    already_visible: int  # tasks whose first poll already listed the approval
    a1: Distribution
    poll: Distribution
    poll_idle: Distribution
    me: Distribution
    a2: Distribution
    asked_to_published: Distribution
    published_to_received: Distribution
    sse_floor: Distribution
    b: Distribution
    sent_to_responded: Distribution
    responded_to_started: Distribution
    exec_floor: Distribution
    approve: Distribution
    started_to_step: Distribution
    step_to_completed: Distribution
    completed_to_reply: Distribution
    cycle: Distribution
    create: Distribution
    task_started_to_asked: Distribution
    post_to_asked: Distribution
    apikey_create: Distribution
    polls_per_task: float
    ratio_a1: float
    ratio_a2: float
    ratio_b: float


def ratio(measured: Distribution, floor: Distribution) -> float:
    return measured.p50 / floor.p50 if floor.p50 > 0 else float("nan")


def measure(args: argparse.Namespace, bench: Bench) -> Result:
    failures: list[str] = []

    def attempt(number: int, record: bool) -> TaskSample | None:
        try:
            return bench.task(record)
        except (TaskFailed, RuntimeError, KeyError) as exc:
            # RuntimeError: one of the task's requests got an unexpected status; KeyError:
            # an answer without a field the benchmark reads.
            failures.append(f"{type(exc).__name__}: {exc}")
            note(f"task {number}: FAILED: {exc}")
            bench.cancel_active()
            if not args.keep_going:
                raise TaskFailed(str(exc)) from exc
            return None

    bench.start_floor_env()
    note(f"{args.warmup} warm-up tasks")
    for number in range(args.warmup):
        attempt(number, record=False)
        bench.floors(None)
    warm_failures = len(failures)
    samples: list[TaskSample] = []
    floors = Floors()
    note(f"{args.tasks} tasks, one at a time, each followed by the floors")
    for number in range(args.tasks):
        sample = attempt(number, record=True)
        if sample is not None:
            samples.append(sample)
        bench.floors(floors)
        if (number + 1) % 25 == 0:
            note(f"  {number + 1}/{args.tasks} tasks ({len(failures)} failed)")
    if warm_failures:
        note(f"{warm_failures} warm-up task(s) failed (counted)")

    def dist(name: str) -> Distribution:
        return Distribution.of([getattr(s, name) for s in samples])

    a1, a2, b = dist("a1_ms"), dist("a2_ms"), dist("b_ms")
    me, sse, raw = (
        Distribution.of(floors.me),
        Distribution.of(floors.sse),
        Distribution.of(floors.exec),
    )
    return Result(
        tasks=len(samples),
        failures=failures,
        already_visible=sum(1 for s in samples if s.polls == 1),
        a1=a1,
        poll=Distribution.of(bench.polls),
        poll_idle=Distribution.of(floors.poll_idle),
        me=me,
        a2=a2,
        asked_to_published=dist("asked_to_published_ms"),
        published_to_received=dist("published_to_received_ms"),
        sse_floor=sse,
        b=b,
        sent_to_responded=dist("sent_to_responded_ms"),
        responded_to_started=dist("responded_to_started_ms"),
        exec_floor=raw,
        approve=dist("approve_ms"),
        started_to_step=dist("started_to_step_ms"),
        step_to_completed=dist("step_to_completed_ms"),
        completed_to_reply=dist("completed_to_reply_ms"),
        cycle=dist("cycle_ms"),
        create=dist("create_ms"),
        task_started_to_asked=dist("task_started_to_asked_ms"),
        post_to_asked=dist("post_to_asked_ms"),
        apikey_create=Distribution.of(floors.apikey_create),
        polls_per_task=sum(s.polls for s in samples) / len(samples) if samples else 0.0,
        ratio_a1=ratio(a1, me),
        ratio_a2=ratio(a2, sse),
        ratio_b=ratio(b, raw),
    )


# -- the report --------------------------------------------------------------------------------


def verdicts(result: Result) -> list[tuple[str, bool, str]]:
    def line(name: str, what: str, dist: Distribution, floor_ratio: float) -> tuple[str, bool, str]:
        return (
            name,
            dist.p50 <= TARGET_MS,
            f"({name}) {what} p50 {dist.p50:.2f} ms, p99 {dist.p99:.2f} ms = "
            f"{floor_ratio:.2f}x floor (target p50 <= {TARGET_MS:g} ms)",
        )

    out = [
        line("a1", "asked -> visible on GET approvals", result.a1, result.ratio_a1),
        line("a2", "asked -> approval.requested on SSE", result.a2, result.ratio_a2),
        line("b", "approve sent -> action started", result.b, result.ratio_b),
    ]
    total = result.tasks + len(result.failures)
    out.append(
        (
            "checks",
            not result.failures,
            f"{result.tasks} of {total} tasks completed with their approved step "
            f"approved/completed; {len(result.failures)} failed",
        )
    )
    return out


def conditions(args: argparse.Namespace, load: tuple[float, float]) -> list[str]:
    return [
        "daemon: `python -m stockade daemon` (uvicorn, 1 worker, SQLite in a temporary home, "
        f"rule-based planner), rate limits disabled, log level {LOG_LEVEL!r}, "
        "STOCKADE_APPROVAL_ANSWER_WAIT default (2 s), warm pool default",
        f"tasks: {args.tasks} recorded after {args.warmup} warm-up, one at a time: "
        f"POST /api/v1/tasks {DESCRIPTION!r} -> poll approvals -> approve -> task ended",
        "client: one keep-alive http.client connection; (a1) polls "
        + ("in a tight loop" if not args.poll_interval else f"every {args.poll_interval:g} s")
        + "; one SSE stream (http.client, in a thread) for approval.* and apikey.*; client "
        "time is included",
        "timestamps: the daemon's (datetime.now(UTC)) and this script's (time.time()) are the "
        "same host clock, so their differences are valid",
        f"floors after every task: {args.me_per_task}x GET /api/v1/auth/me (a1), apikey.* "
        "create + revoke events' publish -> read (a2), raw POST exec rm -f in a running "
        "environment, whole round trip (b); x floor = p50 / floor p50",
        f"machine: {os.cpu_count()} CPU cores shared by client, daemon and sandboxes; 1-min "
        f"load average {load[0]:.2f} before, {load[1]:.2f} after",
    ]


WIDTH = 46


def row(name: str, dist: Distribution, floor: Distribution | None, ratio: float | None) -> str:
    floor_text = f"{floor.p50:>9.2f}" if floor else f"{'':>9}"
    ratio_text = f"{ratio:>7.2f}x" if ratio is not None else f"{'':>8}"
    return (
        f"{name:<{WIDTH}} {dist.n:>5} {dist.p50:>8.2f} {dist.p90:>8.2f} {dist.p99:>8.2f} "
        f"{floor_text} {ratio_text}"
    )


def print_table(result: Result, args: argparse.Namespace, load: tuple[float, float]) -> None:
    r = result
    header = (
        f"{'measurement (ms)':<{WIDTH}} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} "
        f"{'floor p50':>9} {'x floor':>8}"
    )
    print(header)
    print("-" * len(header))
    print(row("(a1) asked -> visible on GET approvals", r.a1, r.me, r.ratio_a1))
    print(row("     poll round trip (resolution)", r.poll, None, None))
    print(row("     the same poll between tasks (idle)", r.poll_idle, None, None))
    print(row("     floor: GET /api/v1/auth/me", r.me, None, None))
    print(row("(a2) asked -> approval.requested read (SSE)", r.a2, r.sse_floor, r.ratio_a2))
    print(row("     asked -> published (daemon's work)", r.asked_to_published, None, None))
    print(row("     published -> read (delivery)", r.published_to_received, None, None))
    print(row("     floor: apikey.* published -> read", r.sse_floor, None, None))
    print(row("(b) approve sent -> action started", r.b, r.exec_floor, r.ratio_b))
    print(row("     sent -> responded_at", r.sent_to_responded, None, None))
    print(row("     responded_at -> started_at (resume)", r.responded_to_started, None, None))
    print(row("     floor: POST exec rm -f (round trip)", r.exec_floor, None, None))
    print(row("approve round trip (includes the resumed run)", r.approve, None, None))
    print(row("     started_at -> step recorded (exec)", r.started_to_step, None, None))
    print(row("     step recorded -> task completed_at", r.step_to_completed, None, None))
    print(row("     completed_at -> answer read", r.completed_to_reply, None, None))
    print(row("task cycle (create -> ... -> ended)", r.cycle, None, None))
    print(row("     POST /api/v1/tasks", r.create, None, None))
    print(row("     task started_at -> asked", r.task_started_to_asked, None, None))
    print(row("     POST answered -> asked", r.post_to_asked, None, None))
    print(row("     (floor) POST /api/v1/api-keys", r.apikey_create, None, None))
    print()
    print(
        f"polls per task: {r.polls_per_task:.1f}; approval already listed by the first poll: "
        f"{r.already_visible} of {r.tasks} tasks"
    )
    if r.failures:
        print(f"failures ({len(r.failures)}):")
        for failure in r.failures[:20]:
            print(f"  {failure}")
    print()
    for line in conditions(args, load):
        print(f"note: {line}")
    print()
    for _, ok, text in verdicts(result):
        print(f"{'PASS' if ok else 'FAIL'}: {text}")


# -- main --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> tuple[int, Result | None, str]:
    result: Result | None = None
    layout = CgroupLayout.detect()
    run_dir_existed = RUN_DIR.exists()
    daemon: Daemon | None = None
    api: Api | None = None
    events: EventListener | None = None
    bench: Bench | None = None
    code = 0
    daemon_log = ""
    with tempfile.TemporaryDirectory(prefix="stockade-bench-") as tmp:
        password = secrets.token_urlsafe(18)
        try:
            daemon = start_daemon(Path(tmp), password, SANDBOX_MAX)
            note(f"daemon pid {daemon.process.pid} on {daemon.url} (home {daemon.home})")
            wait_healthy(daemon, args.startup_timeout)
            token = login(daemon.url, password)
            api = Api(daemon.url, token)
            events = EventListener(daemon.url, api.headers, EVENT_TYPES, KEPT_EVENTS)
            events.start()
            bench = Bench(args, api, events)
            result = measure(args, bench)
            if events.error is not None:
                raise RuntimeError(f"the event stream failed: {events.error}")
            if daemon.process.poll() is not None:
                raise RuntimeError(f"the daemon died during the run:\n{daemon.output()[-4000:]}")
        except KeyboardInterrupt:
            note("interrupted; cleaning up")
            code = 130
        except TaskFailed:
            note("stopped at the first failed task (--keep-going counts them and goes on)")
            code = 1
        except (RuntimeError, TimeoutError, ValueError, KeyError, OSError, httpx.HTTPError) as exc:
            note(f"error: {type(exc).__name__}: {exc}")
            code = 1
        finally:
            with _ignoring_signals():
                if bench is not None and daemon is not None and daemon.process.poll() is None:
                    bench.cancel_active()
                    if bench.floor_env is not None and api is not None:
                        with contextlib.suppress(Exception):
                            api.call("DELETE", f"/api/v1/environments/{bench.floor_env}?force=true")
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
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    # The SSE thread wakes on a read while the main thread polls: let it have the GIL soon.
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
            "verdicts": [{"target": t, "pass": ok, "text": s} for t, ok, s in verdicts(result)],
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

"""Issue 7's crash loop: a real daemon process, on SQLite and on PostgreSQL, runs a random
mix of work, is killed with SIGKILL at a random moment while requests are in flight,
and is restarted on the same home and database; then the invariants are checked:

- every acknowledged write (a 2xx received) is still there: sandboxes, tasks, answers,
  jobs, job runs, API keys created, and keys revoked stay revoked;
- nothing ran twice: a task's steps never repeat (``find``, then the approved or refused
  delete, then ``find``), a one-off job has exactly one scheduled run, only idempotent
  jobs get ``retry`` runs (at most one per interrupted run), and a job's counters equal
  its history;
- what the crash interrupted reads so: tasks ``failed`` with ``interrupted``, job runs
  ``interrupted``, sandboxes ``failed`` (or ``terminated`` when their delete had been
  acknowledged);
- pending approvals are still answerable: one is answered after each restart, and its
  task resumes and completes;
- nothing of a sandbox is orphaned: every process, cgroup and mount the killed daemon
  left is gone once the next one has started;
- SQLite's ``PRAGMA integrity_check`` is ``ok`` after every kill.

The kill happens inside the client's request hook, when the k-th request of the mix
(k random) is about to be sent, so the other workers' requests are in flight and the
daemon's background work (task drives, job runs, deletes) is wherever it is.

``STOCKADE_PROOF_ITERATIONS`` sets the number of iterations per store (10 by default;
``make proof`` runs 100), ``STOCKADE_PROOF_SEED`` replays a seed. The counts are printed
at the end (``-s`` shows them); a failure names the seed.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from stockade.sandbox.cgroups import CgroupLayout
from stockade.sandbox.namespace import instance_name
from stockade.testing import ADMIN_PASSWORD, Daemon, daemon_process, old_files, wait_until
from tests.conftest import postgres_url

ITERATIONS = int(os.environ.get("STOCKADE_PROOF_ITERATIONS", "10"))
RUN_DIR = Path("/run/stockade")
INTERRUPTED_RUN = "interrupted: the daemon stopped during this run"
LOGS = {"logs/app.log": 0, "logs/old.log": 30, "logs/older.log.1": 90}
SETTLE_SECONDS = 120.0  # bounds, not waits: each wait ends when its condition holds
WORKERS = 4

# Job code: it runs only inside the daemon's sandboxes.
QUICK = "def execute():\n    return {'ok': True}\n"
SLOW = "def execute():\n    import time\n    time.sleep(2)\n    return {'slept': 2}\n"


@dataclass
class Ledger:
    """What the daemons acknowledged, across every iteration."""

    sandboxes: dict[str, str] = field(default_factory=dict)  # id -> created|deleting|deleted
    tasks: set[str] = field(default_factory=set)
    answers: dict[str, str] = field(default_factory=dict)  # approval id -> approved|denied
    jobs: dict[str, bool] = field(default_factory=dict)  # task_id -> idempotent
    runs: dict[str, str] = field(default_factory=dict)  # run id -> job task_id
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (key, state)
    # What the last iteration touched, checked in detail after the next restart.
    open_tasks: set[str] = field(default_factory=set)
    touched_sandboxes: set[str] = field(default_factory=set)
    touched_jobs: set[str] = field(default_factory=set)
    touched_keys: set[str] = field(default_factory=set)
    jobs_added: int = 0


@dataclass
class Tally:
    iterations: int = 0
    kills: int = 0
    checks: int = 0
    resumed: int = 0  # approvals left by a killed daemon, answered after its restart
    violations: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> bool:
        self.checks += 1
        if not ok:
            self.violations.append(f"iteration {self.iterations}: {what}")
        return ok

    def summary(self, store: str, seed: int) -> str:
        return (
            f"crash loop [{store}] seed={seed}: iterations={self.iterations} "
            f"kills={self.kills} checks={self.checks} violations={len(self.violations)} "
            f"(approvals answered after a restart: {self.resumed})"
        )


# The host's traces of one daemon's sandboxes.


@dataclass(frozen=True)
class Traces:
    processes: frozenset[tuple[int, float]]  # (pid, create time)
    cgroups: frozenset[Path]
    mounts: frozenset[str]

    @classmethod
    def of(cls, instance: str) -> Traces:
        return cls(_processes(instance), _cgroups(instance), _mounts(instance))

    def still_there(self) -> list[str]:
        alive = []
        for pid, created in self.processes:
            try:
                if psutil.Process(pid).create_time() == created:
                    alive.append(f"process {pid}")
            except psutil.Error:
                pass
        return (
            alive
            + [f"cgroup {p}" for p in self.cgroups if p.is_dir()]
            + [f"mount {m}" for m in self.mounts & _mounts_now()]
        )

    def empty(self) -> bool:
        return not (self.processes or self.cgroups or self.mounts)


def _processes(instance: str) -> frozenset[tuple[int, float]]:
    """Processes in the daemon's sandbox cgroups (a process cannot leave its cgroup)."""
    found = set()
    for process in psutil.process_iter(["create_time"]):
        try:
            groups = Path(f"/proc/{process.pid}/cgroup").read_text()
        except OSError:
            continue
        if f"/stockade-{instance}/" in groups:
            found.add((process.pid, process.info["create_time"]))
    return frozenset(found)


def _cgroups(instance: str) -> frozenset[Path]:
    return frozenset(
        group
        for root in CgroupLayout.detect().roots()
        if (root / f"stockade-{instance}").is_dir()
        for group in (root / f"stockade-{instance}").iterdir()
        if group.is_dir()
    )


def _mounts_now() -> frozenset[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        return frozenset(line.split()[4] for line in mountinfo)


def _mounts(instance: str) -> frozenset[str]:
    prefix = f"{RUN_DIR / instance}/"
    return frozenset(m for m in _mounts_now() if m.startswith(prefix))


# The mix.


class Mix:
    """Workers sending random requests until the daemon is killed, by the request hook,
    as the ``kill_at``-th request is about to be sent."""

    def __init__(
        self, daemon: Daemon, token: str, ledger: Ledger, tally: Tally, seed: int, tag: str
    ) -> None:
        self.daemon = daemon
        self.token = token
        self.ledger = ledger
        self.tally = tally
        self.rng = random.Random(seed)
        self.seed = seed
        self.tag = tag
        self.kill_at = self.rng.randint(8, 48)
        self.sent = 0
        self.killed = False
        self.ops = 0

    def kill(self) -> None:
        if not self.killed:
            self.killed = True
            os.kill(self.daemon.process.pid, signal.SIGKILL)

    async def _hook(self, request: httpx.Request) -> None:
        self.sent += 1
        if self.sent >= self.kill_at:
            self.kill()

    async def run(self) -> None:
        async with httpx.AsyncClient(
            base_url=self.daemon.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=60,
            event_hooks={"request": [self._hook]},
        ) as client:
            workers = [
                self._worker(client, random.Random(self.seed * 100 + n), n) for n in range(WORKERS)
            ]
            await asyncio.wait_for(asyncio.gather(*workers), timeout=120)
        self.kill()  # in case every worker ran out of work first

    async def _worker(self, client: httpx.AsyncClient, rng: random.Random, n: int) -> None:
        mine: list[str] = []  # this worker's running sandboxes
        operations = [
            self._sandbox,
            self._exec,
            self._task,
            self._task,
            self._answer,
            self._answer,
            self._add_job,
            self._run_job,
            self._key,
        ]
        for _ in range(100):
            if self.killed:
                return
            try:
                await rng.choice(operations)(client, rng, mine, n)
            except httpx.TransportError:
                if not self.killed:
                    self.tally.check(False, f"a request failed before the kill (worker {n})")
                return
            self.ops += 1

    def _expect(self, response: httpx.Response, *codes: int) -> bool:
        ok = response.status_code in codes
        self.tally.check(
            ok,
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}, not {codes}: {response.text[:300]}",
        )
        return ok and 200 <= response.status_code < 300

    async def _sandbox(
        self, client: httpx.AsyncClient, rng: random.Random, mine: list[str], n: int
    ) -> None:
        created = await client.post("/api/v1/environments", json={"name": f"crash-{n}"})
        if not self._expect(created, 201):
            return
        sandbox_id = created.json()["id"]
        self.ledger.sandboxes[sandbox_id] = "created"
        self.ledger.touched_sandboxes.add(sandbox_id)
        mine.append(sandbox_id)
        if rng.random() < 0.4:
            mine.remove(sandbox_id)
            self.ledger.sandboxes[sandbox_id] = "deleting"
            deleted = await client.delete(f"/api/v1/environments/{sandbox_id}")
            if self._expect(deleted, 204):
                self.ledger.sandboxes[sandbox_id] = "deleted"

    async def _exec(
        self, client: httpx.AsyncClient, rng: random.Random, mine: list[str], n: int
    ) -> None:
        if not mine:
            await self._sandbox(client, rng, mine, n)
            return
        sandbox_id = rng.choice(mine)
        word = secrets.token_hex(4)
        done = await client.post(
            f"/api/v1/environments/{sandbox_id}/exec",
            json={"command": ["sh", "-c", f"echo {word} > /tmp/w; cat /tmp/w"]},
        )
        if self._expect(done, 200):
            body = done.json()
            self.tally.check(
                (body["exit_code"], body["stdout"].strip()) == (0, word),
                f"exec in {sandbox_id} gave {body}",
            )

    async def _task(
        self, client: httpx.AsyncClient, rng: random.Random, mine: list[str], n: int
    ) -> None:
        created = await client.post("/api/v1/tasks", json={"description": "Delete old logs"})
        if self._expect(created, 201):
            task_id = created.json()["id"]
            self.ledger.tasks.add(task_id)
            self.ledger.open_tasks.add(task_id)

    async def _answer(
        self, client: httpx.AsyncClient, rng: random.Random, mine: list[str], n: int
    ) -> None:
        pending = await client.get("/api/v1/approvals", params={"status": "pending"})
        if not self._expect(pending, 200) or not pending.json():
            return
        approval = rng.choice(pending.json())
        approved = rng.random() < 0.7
        answer = await client.post(
            f"/api/v1/approvals/{approval['id']}",
            json={"approved": approved, "reason": f"crash loop {self.tag}"},
        )
        # 409: another worker answered it first.
        if self._expect(answer, 200, 409):
            self.ledger.answers[approval["id"]] = "approved" if approved else "denied"
            self.ledger.open_tasks.add(approval["task_id"])

    async def _add_job(
        self, client: httpx.AsyncClient, rng: random.Random, mine: list[str], n: int
    ) -> None:
        self.ledger.jobs_added += 1
        task_id = f"crash-{self.tag}-{self.ledger.jobs_added}"
        idempotent = rng.random() < 0.5
        added = await client.post(
            "/daemon/tasks/add",
            json={
                "task_id": task_id,
                "name": task_id,
                "priority": "CRITICAL",
                "code": rng.choice([QUICK, SLOW]),
                "idempotent": idempotent,
            },
        )
        if self._expect(added, 200):
            self.ledger.jobs[task_id] = idempotent
            self.ledger.touched_jobs.add(task_id)

    async def _run_job(
        self, client: httpx.AsyncClient, rng: random.Random, mine: list[str], n: int
    ) -> None:
        if not self.ledger.jobs:
            await self._add_job(client, rng, mine, n)
            return
        task_id = rng.choice(sorted(self.ledger.jobs))
        self.ledger.touched_jobs.add(task_id)
        run = await client.post(f"/daemon/tasks/{task_id}/run")
        if self._expect(run, 202):
            self.ledger.runs[run.json()["id"]] = task_id

    async def _key(
        self, client: httpx.AsyncClient, rng: random.Random, mine: list[str], n: int
    ) -> None:
        live = sorted(k for k, (_, state) in self.ledger.keys.items() if state == "live")
        if live and rng.random() < 0.4:
            key_id = rng.choice(live)
            secret = self.ledger.keys[key_id][0]
            self.ledger.keys[key_id] = (secret, "revoking")
            self.ledger.touched_keys.add(key_id)
            revoked = await client.delete(f"/api/v1/api-keys/{key_id}")
            if self._expect(revoked, 204):
                self.ledger.keys[key_id] = (secret, "revoked")
            return
        created = await client.post("/api/v1/api-keys", json={"description": f"crash {n}"})
        if self._expect(created, 201):
            body = created.json()
            self.ledger.keys[body["id"]] = (body["key"], "live")
            self.ledger.touched_keys.add(body["id"])


# The checks after a restart.


class Checker:
    def __init__(self, client: httpx.Client, ledger: Ledger, tally: Tally) -> None:
        self.client = client
        self.ledger = ledger
        self.tally = tally

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        if not self.tally.check(response.status_code == 200, f"GET {path}: {response.text}"):
            return None
        return response.json()

    def all_of(self, path: str, key: str | None, limit: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = self.client.get(path, params={"limit": limit, "offset": len(found)})
            page.raise_for_status()
            items = page.json()[key] if key else page.json()
            found += items
            if len(items) < limit:
                return found

    def listed(self, found: bool, path: str) -> None:
        """An acknowledged object is in its listing, or (the listing's pages shifted
        while it was read) it answers on its own."""
        self.tally.check(found or self.client.get(path).status_code == 200, f"{path} is gone")

    def settle(self) -> None:
        """Wait until no task runs without waiting for a person, and no job run is
        under way or due: what the restart resumed or retried has finished."""

        def settled() -> bool:
            tasks = [self.client.get(f"/api/v1/tasks/{t}").json() for t in self.ledger.open_tasks]
            if any(t.get("status") == "running" and not t["pending_approval_id"] for t in tasks):
                return False
            jobs = self.client.get("/daemon/tasks").json()["tasks"]
            if any(j["next_run_at"] is not None for j in jobs):
                return False
            return bool(self.client.get("/daemon/status").json()["active_runs"] == 0)

        self.tally.check(
            wait_until(settled, timeout=SETTLE_SECONDS, every=0.1),
            "the restarted daemon's work never settled",
        )

    def everything(self, *, detail: bool) -> None:
        """Every acknowledged write is still there; with ``detail``, everything is
        checked in depth, else only what the last iteration touched."""
        ledger = self.ledger
        listed = {e["id"] for e in self.all_of("/api/v1/environments", "environments", 1000)}
        for sandbox_id in ledger.sandboxes:
            self.listed(sandbox_id in listed, f"/api/v1/environments/{sandbox_id}")
        for sandbox_id in ledger.sandboxes if detail else ledger.touched_sandboxes:
            self.sandbox(sandbox_id)
        tasks = {t["id"] for t in self.all_of("/api/v1/tasks", "tasks", 100)}
        for task_id in ledger.tasks:
            self.listed(task_id in tasks, f"/api/v1/tasks/{task_id}")
        for task_id in sorted(ledger.tasks if detail else ledger.open_tasks):
            self.task(task_id)
        for approval_id, status in ledger.answers.items():
            approval = self.get(f"/api/v1/approvals/{approval_id}")
            if approval is not None:
                self.tally.check(
                    approval["status"] == status,
                    f"approval {approval_id} was answered {status}, reads {approval['status']}",
                )
        jobs = {j["task_id"]: j for j in self.get("/daemon/tasks")["tasks"]}
        for task_id in ledger.jobs:
            self.tally.check(task_id in jobs, f"job {task_id} is not listed")
        for task_id in sorted(ledger.jobs if detail else ledger.touched_jobs):
            if task_id in jobs:
                self.job(jobs[task_id])
        self.keys(detail)

    def sandbox(self, sandbox_id: str) -> None:
        body = self.get(f"/api/v1/environments/{sandbox_id}")
        if body is None:
            return
        state = self.ledger.sandboxes[sandbox_id]
        allowed = {
            "created": {"failed"},
            "deleting": {"failed", "terminated"},
            "deleted": {"terminated"},
        }[state]
        self.tally.check(
            body["status"] in allowed,
            f"sandbox {sandbox_id} ({state} before the kill) reads {body['status']}: "
            f"{body['status_reason']}",
        )

    def task(self, task_id: str) -> None:
        task = self.get(f"/api/v1/tasks/{task_id}")
        if task is None:
            return
        decisions = [s["decision"] for s in task["steps"] or []]
        # find (auto), the delete (approved, or refused), find (auto): each at most once.
        pattern_ok = (
            decisions[:1] in ([], ["auto"])
            and (len(decisions) < 2 or decisions[1] in ("approved", "denied", "expired"))
            and decisions[2:] in ([], ["auto"])
        )
        self.tally.check(
            pattern_ok,
            f"task {task_id} steps are not find, delete, find (each at most once): {_steps(task)}",
        )
        status = task["status"]
        if status == "completed":
            self.tally.check(len(decisions) == 3, f"task {task_id} completed: {_steps(task)}")
            self.ledger.open_tasks.discard(task_id)
        elif status == "failed":
            code = (task["error"] or {}).get("code")
            self.tally.check(code == "interrupted", f"task {task_id} failed: {task['error']}")
            self.ledger.open_tasks.discard(task_id)
        else:
            pending = task["pending_approval_id"]
            self.tally.check(
                status == "running" and pending is not None and decisions == ["auto"],
                f"task {task_id} reads {status} ({pending}) after the restart: {decisions}",
            )
            if pending is not None:
                approval = self.get(f"/api/v1/approvals/{pending}")
                # Past its time it reads expired, even before the sweeper resumes the task.
                self.tally.check(
                    approval is not None and approval["status"] in ("pending", "expired"),
                    f"task {task_id} waits on {approval}",
                )

    def job(self, job: dict[str, Any]) -> None:
        task_id = job["task_id"]
        history = self.get(f"/daemon/tasks/{task_id}/history", limit=1000)
        if history is None:
            return
        runs = history["runs"]
        ids = {r["id"] for r in runs}
        for run_id, owner in self.ledger.runs.items():
            if owner == task_id:
                self.tally.check(run_id in ids, f"run {run_id} of {task_id} is missing")
        by_trigger = {t: [r for r in runs if r["trigger"] == t] for t in ("schedule", "retry")}
        self.tally.check(
            len(by_trigger["schedule"]) == 1,
            f"one-off job {task_id} has {len(by_trigger['schedule'])} scheduled runs",
        )
        interrupted = [r for r in runs if r["status"] == "interrupted"]
        retries = len(by_trigger["retry"])
        if self.ledger.jobs[task_id]:
            self.tally.check(
                retries <= len(interrupted),
                f"idempotent job {task_id}: {retries} retries of {len(interrupted)} interrupted",
            )
        else:
            self.tally.check(retries == 0, f"job {task_id} is not idempotent but was retried")
        for run in runs:
            self.tally.check(
                run["status"] in ("completed", "interrupted"),
                f"run {run['id']} of {task_id} reads {run['status']}: {run['error']}",
            )
            if run["status"] == "interrupted":
                self.tally.check(
                    run["error"] == INTERRUPTED_RUN and run["finished_at"] is not None,
                    f"interrupted run {run['id']} of {task_id} reads {run}",
                )
        ended = [r for r in runs if r["status"] in ("completed", "failed", "interrupted")]
        completed = sum(1 for r in ended if r["status"] == "completed")
        counted = (job["execution_count"], job["success_count"], job["failure_count"])
        self.tally.check(
            counted == (len(ended), completed, len(ended) - completed),
            f"job {task_id} counts {counted} but its history has {len(ended)} ended runs, "
            f"{completed} completed",
        )

    def keys(self, detail: bool) -> None:
        listed = {k["id"] for k in self.get("/api/v1/api-keys")["api_keys"]}
        for key_id, (secret, state) in self.ledger.keys.items():
            if state == "revoking":  # unacknowledged: either way is right
                state = "live" if key_id in listed else "revoked"
                self.ledger.keys[key_id] = (secret, state)
            self.tally.check(
                (key_id in listed) == (state == "live"), f"key {key_id} ({state}) listing"
            )
            if detail or key_id in self.ledger.touched_keys:
                used = self.client.get(
                    "/api/v1/api-keys", headers={"Authorization": f"Bearer {secret}"}
                )
                self.tally.check(
                    used.status_code == (200 if state == "live" else 401),
                    f"key {key_id} ({state}) answered {used.status_code}",
                )

    def waiting_task(self) -> None:
        """A task paused on its approval before the mix, so that every kill leaves at
        least one pending approval behind."""
        created = self.client.post("/api/v1/tasks", json={"description": "Delete old logs"})
        if not self.tally.check(created.status_code == 201, f"a task: {created.text}"):
            return
        task_id = created.json()["id"]
        self.ledger.tasks.add(task_id)
        self.ledger.open_tasks.add(task_id)

        def paused() -> bool:
            body = self.client.get(f"/api/v1/tasks/{task_id}").json()
            return body["status"] != "running" or body["pending_approval_id"] is not None

        wait_until(paused, timeout=SETTLE_SECONDS, every=0.1)
        body = self.client.get(f"/api/v1/tasks/{task_id}").json()
        self.tally.check(
            body["pending_approval_id"] is not None, f"task {task_id} never waited: {body}"
        )

    def answer_one(self, rng: random.Random) -> None:
        """A pending approval left by a dead daemon is answerable, and its task goes on
        to the end."""
        pending = self.get("/api/v1/approvals", status="pending")
        if not pending:
            return
        approval = rng.choice(pending)
        approved = rng.random() < 0.7
        answer = self.client.post(
            f"/api/v1/approvals/{approval['id']}",
            json={"approved": approved, "reason": "after the restart"},
        )
        if not self.tally.check(
            answer.status_code == 200, f"answering {approval['id']}: {answer.text}"
        ):
            return
        self.ledger.answers[approval["id"]] = "approved" if approved else "denied"
        self.tally.resumed += 1
        task_id = approval["task_id"]

        def ended() -> bool:
            return bool(self.client.get(f"/api/v1/tasks/{task_id}").json()["status"] != "running")

        wait_until(ended, timeout=SETTLE_SECONDS, every=0.1)
        task = self.get(f"/api/v1/tasks/{task_id}")
        decision = "approved" if approved else "denied"
        steps = [s["decision"] for s in (task or {}).get("steps") or []]
        self.tally.check(
            task is not None
            and task["status"] == "completed"
            and steps == ["auto", decision, "auto"],
            f"task {task_id} after its approval was answered after a restart: {task}",
        )


def _steps(task: dict[str, Any]) -> list[tuple[Any, ...]]:
    """A task's steps, shortly, for a violation's message."""
    return [
        (s["id"], s["decision"], s["outcome"], s["description"], str(s["detail"])[:200])
        for s in task["steps"] or []
    ]


# The loop.


def admin_client(daemon: Daemon) -> httpx.Client:
    login = httpx.post(
        f"{daemon.url}/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    login.raise_for_status()
    return httpx.Client(
        base_url=daemon.url,
        headers={"Authorization": f"Bearer {login.json()['token']}"},
        timeout=60,
    )


def integrity(database: Path) -> str:
    """SQLite's ``integrity_check`` (``ok``), and any row whose foreign key points
    nowhere."""
    connection = sqlite3.connect(database)
    try:
        (result,) = connection.execute("PRAGMA integrity_check").fetchone()
        dangling = connection.execute("PRAGMA foreign_key_check").fetchall()
        return str(result) + (f"; dangling foreign keys: {dangling[:5]}" if dangling else "")
    finally:
        connection.close()


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A database of its own on the throw-away cluster, dropped afterwards."""
    url = make_url(postgres_url())
    name = f"crash_{secrets.token_hex(6)}"

    async def run(statement: str) -> None:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
        await engine.dispose()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def store_url(store: str, home: Path) -> Iterator[str]:
    if store == "sqlite":
        yield f"sqlite+aiosqlite:///{home / 'stockade.db'}"
    else:
        with fresh_postgres() as url:
            yield url


def restarted(
    client: httpx.Client,
    ledger: Ledger,
    tally: Tally,
    rng: random.Random,
    traces: Traces,
    *,
    detail: bool,
) -> None:
    """The checks after a restart."""
    gone = wait_until(lambda: not traces.still_there(), timeout=SETTLE_SECONDS, every=0.1)
    tally.check(gone, f"the killed daemon's sandboxes left {traces.still_there()}")
    checker = Checker(client, ledger, tally)
    checker.settle()
    checker.everything(detail=detail)
    checker.answer_one(rng)
    ledger.touched_sandboxes.clear()
    ledger.touched_jobs.clear()
    ledger.touched_keys.clear()


@pytest.mark.timeout(120 + 40 * ITERATIONS)
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_crash_loop(store: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("STOCKADE_PROOF_SEED") or secrets.randbits(32))
    rng = random.Random(seed)
    home = tmp_path / "state"
    home.mkdir(mode=0o700)
    instance = instance_name(home)
    ledger, tally = Ledger(), Tally()
    traces: Traces | None = None
    with store_url(store, home) as url:
        env = {
            "STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "STOCKADE_DATABASE_URL": url,
            "STOCKADE_RATE_LIMIT_ENABLED": "false",
            "STOCKADE_TASK_TEMPLATE": str(old_files(tmp_path / "template", LOGS)),
            "STOCKADE_SANDBOX_POOL": "2",
            "STOCKADE_JOBS_STOP_GRACE": "0",
        }
        try:
            for iteration in range(ITERATIONS + 1):
                tally.iterations = iteration
                with daemon_process(home, env=env) as daemon, admin_client(daemon) as client:
                    if traces is not None:
                        last = iteration == ITERATIONS
                        restarted(client, ledger, tally, rng, traces, detail=last)
                    if iteration == ITERATIONS:
                        break  # the last daemon stops cleanly
                    Checker(client, ledger, tally).waiting_task()
                    token = str(client.headers["Authorization"]).removeprefix("Bearer ")
                    mix = Mix(daemon, token, ledger, tally, rng.randrange(2**32), str(iteration))
                    asyncio.run(mix.run())
                    daemon.process.wait()
                    tally.kills += 1
                    tally.iterations = iteration + 1  # what follows checks this kill's traces
                    traces = Traces.of(instance)
                (home.parent / f"{home.name}-daemon.log").rename(
                    home.parent / f"daemon-{iteration}.log"
                )
                if store == "sqlite":
                    result = integrity(home / "stockade.db")
                    tally.check(result == "ok", f"integrity_check after the kill: {result}")
                print(tally.summary(store, seed), flush=True)  # progress, shown with -s
            # A clean stop leaves nothing of any sandbox, nor the run directory.
            tally.check(Traces.of(instance).empty(), "a clean stop left sandbox traces")
            tally.check(not (RUN_DIR / instance).exists(), "a clean stop left the run directory")
        finally:
            print(tally.summary(store, seed))
    assert tally.iterations == ITERATIONS
    assert tally.kills == ITERATIONS
    assert not tally.violations, (
        f"{tally.summary(store, seed)} (replay: STOCKADE_PROOF_SEED={seed})\n"
        + "\n".join(tally.violations[:50])
    )

"""Acceptance 6 against a real daemon process: ``kill -9`` of the daemon while two hourly
jobs run, then a restart on the same ``STOCKADE_HOME``. The runs read ``interrupted``;
the ordinary job is not run again (its next occurrence is an hour after the interrupted
one), while the job marked ``idempotent`` gets a ``retry`` run at once."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from stockade.testing import ADMIN_PASSWORD, Daemon, daemon_process

AUTH = ("admin", ADMIN_PASSWORD)
# A clean stop at the end of the test need not wait for the retried run's sleep.
ENV = {"STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD, "STOCKADE_JOBS_STOP_GRACE": "0"}
INTERRUPTED = "interrupted: the daemon stopped during this run"

# Job code: it runs only inside the daemon's sandboxes.
BLOCKS = """\
def execute():
    import time
    time.sleep(60)
    return {"slept": 60}
"""

QUICK = """\
def execute():
    return {"ok": True}
"""


@contextmanager
def events(daemon: Daemon) -> Iterator[Iterator[dict[str, Any]]]:
    """The daemon's SSE stream of job and sandbox events, opened now. Waits on it are
    bounded: the stream pings every 15 s, and reading past a minute fails."""
    deadline = time.monotonic() + 60
    with httpx.stream(
        "GET",
        f"{daemon.url}/api/v1/events",
        params={"type": ["job.", "sandbox."]},
        auth=AUTH,
        timeout=60,
    ) as response:
        assert response.status_code == 200

        def stream() -> Iterator[dict[str, Any]]:
            for line in response.iter_lines():
                assert time.monotonic() < deadline, "waited over a minute for events"
                if line.startswith("data:"):
                    yield json.loads(line[5:])

        yield stream()


def add(daemon: Daemon, task_id: str, code: str, **fields: Any) -> None:
    job = {
        "task_id": task_id,
        "name": task_id,
        "description": "restart test",
        "priority": "CRITICAL",
        "code": code,
        **fields,
    }
    response = httpx.post(f"{daemon.url}/daemon/tasks/add", json=job, auth=AUTH)
    assert response.status_code == 200, response.text


def get(daemon: Daemon, path: str) -> Any:
    response = httpx.get(f"{daemon.url}{path}", auth=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def runs(daemon: Daemon, task_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = get(daemon, f"/daemon/tasks/{task_id}/history")["runs"]
    return found


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_kill_9_during_runs_then_restart(tmp_path: Path) -> None:
    home = tmp_path / "state"
    hourly = {"repeat_hours": 1, "timeout_seconds": 600}
    with daemon_process(home, env=ENV) as daemon:
        with events(daemon) as stream:
            add(daemon, "plain", BLOCKS, **hourly)
            add(daemon, "replayable", BLOCKS, idempotent=True, **hourly)
            # Each run started, and its sandbox (where the code runs) is up: started
            # for it, or a warm runner's renamed for it.
            started: set[str] = set()
            sandboxes: dict[str, str] = {}
            for event in stream:
                data = event["data"]
                if event["type"] == "job.run.started":
                    started.add(data["task_id"])
                if event["type"] in ("sandbox.running", "sandbox.updated"):
                    sandboxes[data["name"]] = data["id"]
                if started == {"plain", "replayable"} and {
                    "job-plain",
                    "job-replayable",
                } <= set(sandboxes):
                    break
        # Besides the two runs' sandboxes, at most the warm runners that waited for them.
        assert set(sandboxes) - {"job-runner"} == {"job-plain", "job-replayable"}
        before = {task_id: runs(daemon, task_id) for task_id in ("plain", "replayable")}
        for found in before.values():
            assert [(r["status"], r["trigger"]) for r in found] == [("running", "schedule")]
        assert get(daemon, "/daemon/status")["active_runs"] == 2
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait()

    with daemon_process(home, env=ENV) as daemon:
        # The plain job: its run reads interrupted, and nothing else.
        (interrupted,) = runs(daemon, "plain")
        assert interrupted["id"] == before["plain"][0]["id"]
        assert interrupted["status"] == "interrupted"
        assert interrupted["error"] == INTERRUPTED
        assert interrupted["finished_at"] is not None
        assert interrupted["result"] is None

        # The idempotent job: the same, and a retry made at once.
        retry, old = runs(daemon, "replayable")
        assert old["id"] == before["replayable"][0]["id"]
        assert (old["status"], old["error"]) == ("interrupted", INTERRUPTED)
        assert retry["trigger"] == "retry"
        assert retry["status"] in ("running", "completed"), retry
        assert at(retry["scheduled_for"]) > at(old["finished_at"]) - timedelta(seconds=1)

        # The old daemon's sandboxes died with it.
        for sandbox_id in sandboxes.values():
            assert get(daemon, f"/api/v1/environments/{sandbox_id}")["status"] == "failed"

        # Once the restarted scheduler has run a pass (it ran a job added now), the plain
        # job has still not run again: its next occurrence is an hour after the one the
        # crash interrupted.
        with events(daemon) as stream:
            add(daemon, "probe", QUICK)
            ended = ("job.run.completed", "job.run.failed", "job.run.interrupted")
            for event in stream:
                if event["type"] in ended and event["data"]["task_id"] == "probe":
                    assert event["type"] == "job.run.completed", event
                    break
        assert [r["status"] for r in runs(daemon, "probe")] == ["completed"]
        assert [r["id"] for r in runs(daemon, "plain")] == [interrupted["id"]]
        jobs = {job["task_id"]: job for job in get(daemon, "/daemon/tasks")["tasks"]}
        for task_id, run in (("plain", interrupted), ("replayable", old)):
            job = jobs[task_id]
            expected = at(run["scheduled_for"]) + timedelta(hours=1)
            assert abs(at(job["next_run_at"]) - expected) < timedelta(seconds=1), job
            assert job["repeat_interval"] == "1:00:00"
        assert (jobs["plain"]["execution_count"], jobs["plain"]["failure_count"]) == (1, 1)
        assert get(daemon, "/daemon/status")["running"] is True

"""Acceptance 1 against a real daemon process: every command of seed 002's "cURL
Examples", and its "Python Client" example, read from the seed at test time and changed
only in the credentials and the daemon's address, run with bash and curl, and with this
venv's Python and ``requests``. Both speak HTTP Basic, as the seed does.

The daemon runs with the priority windows' CPU thresholds at 100%, so that the MEDIUM
and HIGH jobs the examples add run whatever the load of the machine running the tests.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from stockade.testing import ADMIN_PASSWORD, Daemon, daemon_process
from tests.seeds import fenced_block, run_script, seed_text

SEED_URL = "http://localhost:8000"
AUTH = ("admin", ADMIN_PASSWORD)
ENDED = ("job.run.completed", "job.run.failed", "job.run.interrupted")
ENV = {
    "STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD,
    "STOCKADE_JOBS_IDLE_CPU": "100",
    "STOCKADE_JOBS_LOW_ACTIVITY_CPU": "100",
}
STEPS = ["# Get status", "# List tasks", "# Add task", "# Start daemon", "# Stop daemon"]


def curl_examples(base_url: str) -> dict[str, str]:
    """The seed's cURL block with real credentials and address, as its commands, by
    their comment line."""
    script = fenced_block(seed_text("002"), "### cURL Examples")
    assert script.count("username:password") == len(STEPS)
    edited = script.replace("username:password", f"admin:{ADMIN_PASSWORD}")
    edited = edited.replace(SEED_URL, base_url)
    # Nothing else changed.
    undone = edited.replace(f"admin:{ADMIN_PASSWORD}", "username:password")
    assert undone.replace(base_url, SEED_URL) == script
    commands = [chunk.strip() for chunk in edited.split("\n\n")]
    assert [c.splitlines()[0] for c in commands] == STEPS
    return {c.splitlines()[0]: c for c in commands}


def python_client(base_url: str) -> str:
    """The seed's Python client with real credentials and address."""
    code = fenced_block(seed_text("002"), "### Python Client", "python")
    edited = code.replace("HTTPBasicAuth('username', 'password')", f"HTTPBasicAuth{AUTH!r}")
    edited = edited.replace(f"base_url = '{SEED_URL}'", f"base_url = '{base_url}'")
    undone = edited.replace(f"HTTPBasicAuth{AUTH!r}", "HTTPBasicAuth('username', 'password')")
    assert undone.replace(f"'{base_url}'", f"'{SEED_URL}'") == code
    assert edited != code
    return edited


def curl(command: str) -> dict[str, Any]:
    """Run one of the seed's commands with bash; it prints one JSON document."""
    result = run_script(command)
    body: dict[str, Any] = json.loads(result.stdout)
    return body


@contextmanager
def job_events(daemon: Daemon) -> Iterator[Iterator[dict[str, Any]]]:
    """The daemon's SSE stream of job events (HTTP Basic), opened now. Waits on it are
    bounded: the stream pings every 15 s, and reading past a minute fails."""
    deadline = time.monotonic() + 60
    with httpx.stream(
        "GET",
        f"{daemon.url}/api/v1/events",
        params={"type": "job."},
        auth=AUTH,
        timeout=60,
    ) as response:
        assert response.status_code == 200

        def events() -> Iterator[dict[str, Any]]:
            for line in response.iter_lines():
                assert time.monotonic() < deadline, "waited over a minute for job events"
                if line.startswith("data:"):
                    yield json.loads(line[5:])

        yield events()


def run_ended(events: Iterator[dict[str, Any]], task_id: str) -> dict[str, Any]:
    for event in events:
        if event["type"] in ENDED and event["data"]["task_id"] == task_id:
            return event
    raise AssertionError(f"the stream ended before a run of {task_id} ended")


def get(daemon: Daemon, path: str) -> Any:
    response = httpx.get(f"{daemon.url}{path}", auth=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def test_seed_002_curl_examples_run_with_real_credentials(tmp_path: Path) -> None:
    home = tmp_path / "state"
    with daemon_process(home, env=ENV) as daemon:
        commands = curl_examples(daemon.url)
        with job_events(daemon) as events:
            status = curl(commands["# Get status"])
            assert status["state"] == "idle", status
            assert status["running"] is True
            assert (status["tasks_registered"], status["tasks_pending"]) == (0, 0)
            assert set(status["metrics"]) == {
                "cpu_percent",
                "memory_percent",
                "is_idle",
                "is_sleep_time",
            }
            assert status["cloud_enabled"] is False
            assert status["workspace"] == str(home)

            assert curl(commands["# List tasks"]) == {"tasks": [], "total_tasks": 0}

            assert curl(commands["# Add task"]) == {
                "status": "task_added",
                "task_id": "my_task",
                "message": "Task 'My Task' added successfully",
            }
            # The scheduler (started with the daemon) runs the new job at once.
            assert run_ended(events, "my_task")["type"] == "job.run.completed"

            assert curl(commands["# Start daemon"]) == {
                "status": "already_running",
                "message": "Daemon is already running",
            }
            assert curl(commands["# Stop daemon"]) == {
                "status": "stopped",
                "message": "Daemon stopped successfully",
            }
            assert curl(commands["# Stop daemon"])["status"] == "not_running"
            assert get(daemon, "/daemon/status")["running"] is False
            assert curl(commands["# Start daemon"]) == {
                "status": "started",
                "message": "Daemon started successfully",
            }
        (task,) = get(daemon, "/daemon/tasks")["tasks"]
        assert (task["task_id"], task["name"], task["priority"]) == ("my_task", "My Task", "MEDIUM")
        assert task["description"] == "Example task"
        assert task["repeat_interval"] == "2:00:00"
        assert (task["execution_count"], task["success_count"]) == (1, 1)
        assert task["last_result"] == {"status": "done"}
        (run,) = get(daemon, "/daemon/tasks/my_task/history")["runs"]
        assert (run["status"], run["result"]) == ("completed", {"status": "done"})


def test_http_basic_is_checked(tmp_path: Path) -> None:
    with daemon_process(tmp_path / "state", env=ENV) as daemon:
        url = f"{daemon.url}/daemon/status"
        assert httpx.get(url, auth=AUTH).status_code == 200
        for auth in [("admin", "wrong-password"), ("nobody", ADMIN_PASSWORD), None]:
            refused = httpx.get(url, auth=auth)
            assert refused.status_code == 401, (auth, refused.text)
            assert refused.json()["detail"]  # the seed's clients read `detail`
        # The seed's "Authentication" command, with the right and then a wrong password.
        command = fenced_block(seed_text("002"), "## Authentication")
        assert command == f"curl -u <username>:<password> {SEED_URL}/daemon/status"
        command = command.replace(SEED_URL, daemon.url)
        right = command.replace("<username>:<password>", f"admin:{ADMIN_PASSWORD}")
        assert curl(right)["running"] is True
        wrong = command.replace("<username>:<password>", "admin:wrong-password")
        wrong = wrong.replace("curl ", "curl -s -o /dev/null -w '%{http_code}' ", 1)
        assert run_script(wrong).stdout == "401"


def test_seed_002_python_client_runs_with_real_credentials(tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    with daemon_process(tmp_path / "state", env=ENV) as daemon:
        script.write_text(python_client(daemon.url))
        with job_events(daemon) as events:
            result = subprocess.run(
                [sys.executable, str(script)],
                env={k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stderr + result.stdout
            # backup_db runs pg_dump inside a sandbox: whether or not pg_dump can work
            # there, the run ends.
            ended = run_ended(events, "backup_db")
        lines = result.stdout.splitlines()
        assert lines[0] == "Daemon state: idle", lines
        assert lines[1] == "Total tasks: 0", lines
        # print(response.json()): the add's answer as a dict.
        assert ast.literal_eval(lines[2]) == {
            "status": "task_added",
            "task_id": "backup_db",
            "message": "Task 'Database Backup' added successfully",
        }
        assert len(lines) == 3, lines
        (run,) = get(daemon, "/daemon/tasks/backup_db/history")["runs"]
        assert run["status"] == ended["data"]["status"]
        assert run["status"] in ("completed", "failed"), run
        if run["status"] == "completed":
            assert run["result"]["status"] == "completed"
            assert isinstance(run["result"]["size"], int)
        else:
            assert re.search(r"\w+Error: ", run["error"] or ""), run
        job = get(daemon, "/daemon/tasks/backup_db")
        assert (job["priority"], job["repeat_interval"]) == ("HIGH", "1 day, 0:00:00")
        health = httpx.get(f"{daemon.url}/health")
        assert health.status_code == 200
        assert health.json()["status"] == "healthy"
        assert get(daemon, "/daemon/status")["running"] is True

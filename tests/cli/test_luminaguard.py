"""Acceptance 1, 2 and 5 against a real daemon process: LuminaGuard's "Example 1: Run a
Task with Approval" (seed 000), read from the seed at test time and changed only in
``TOKEN`` and ``BASE_URL``, run with bash, curl and jq; the same with ``"approved":
false``; and a task that waits on an approval across ``kill -9`` and a restart.

Every task starts from a template with two old logs and a fresh one
(``STOCKADE_TASK_TEMPLATE``). Whether the old logs are gone is seen from inside the
task's own sandbox: the planner's last step lists the old logs that are left.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from stockade.testing import ADMIN_PASSWORD, Daemon, daemon_process, old_files
from tests.seeds import fenced_block, run_script, seed_text

LOGS = {"logs/app.log": 0, "logs/old.log": 30, "logs/older.log.1": 90}
OLD = ["./logs/old.log", "./logs/older.log.1"]


def example_1(base_url: str, token: str, *, approved: bool = True) -> str:
    script = fenced_block(seed_text("000"), "### Example 1: Run a Task with Approval")
    edited = script.replace('TOKEN="your-api-token"', f'TOKEN="{token}"')
    edited = edited.replace('BASE_URL="http://localhost:8080"', f'BASE_URL="{base_url}"')
    if not approved:
        edited = edited.replace('"approved": true', '"approved": false')
    changed = set(script.splitlines()) - set(edited.splitlines())
    assert len(changed) == (2 if approved else 3), changed
    return edited


def token_for(daemon: Daemon) -> str:
    login = httpx.post(
        f"{daemon.url}/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    login.raise_for_status()
    token: str = login.json()["token"]
    return token


@contextmanager
def task_events(daemon: Daemon, token: str) -> Iterator[Iterator[dict[str, Any]]]:
    """The daemon's SSE stream of task and approval events, opened now."""
    with httpx.stream(
        "GET",
        f"{daemon.url}/api/v1/events",
        params={"type": ["task.", "approval."]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200

        def events() -> Iterator[dict[str, Any]]:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    yield json.loads(line[5:])

        yield events()


def wait_for(
    events: Iterator[dict[str, Any]], kinds: tuple[str, ...], task_id: str
) -> dict[str, Any]:
    for event in events:
        data = event["data"]
        if event["type"] in kinds and data.get("task_id", data.get("id")) == task_id:
            return event
    raise AssertionError(f"the stream ended before {kinds} of {task_id}")


def get(daemon: Daemon, token: str, path: str) -> Any:
    response = httpx.get(f"{daemon.url}{path}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


def left_over(task: dict[str, Any]) -> list[str]:
    """The old logs the task's last step (a find in its sandbox) still saw."""
    return sorted(str(task["steps"][-1]["detail"].get("stdout", "")).split())


def environment(tmp_path: Path) -> dict[str, str]:
    template = old_files(tmp_path / "template", LOGS)
    return {"STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD, "STOCKADE_TASK_TEMPLATE": str(template)}


def test_example_1_runs_unchanged_and_deletes_the_old_logs(tmp_path: Path) -> None:
    with daemon_process(tmp_path / "state", env=environment(tmp_path)) as daemon:
        token = token_for(daemon)
        with task_events(daemon, token) as events:
            result = run_script(example_1(daemon.url, token))
            created = re.search(r"Task created: ([0-9a-f-]{36})", result.stdout)
            assert created, result.stdout
            task_id = created.group(1)
            approval = re.search(r"Approval required: ([0-9a-f-]{36})", result.stdout)
            assert approval, result.stdout
            wait_for(events, ("task.completed", "task.failed"), task_id)
        out = result.stdout
        assert '"status": "approved"' in out
        assert '"reason": "Looks good"' in out
        card = get(daemon, token, f"/api/v1/approvals/{approval.group(1)}")
        assert card["task_id"] == task_id
        assert (card["action_type"], card["risk_level"]) == ("CommandExec", "high")
        assert card["changes"]
        assert card["changes"][0]["command"].startswith("rm -f -- ")
        assert sorted(c["path"] for c in card["changes"][1:]) == [
            "/home/sandbox/logs/old.log",
            "/home/sandbox/logs/older.log.1",
        ]
        task = get(daemon, token, f"/api/v1/tasks/{task_id}")
        assert task["status"] == "completed", task
        assert task["result"]["exit_code"] == 0
        assert [s["decision"] for s in task["steps"]] == ["auto", "approved", "auto"]
        assert left_over(task) == []
        # Step 4 of the script printed this task.
        assert f'"id": "{task_id}"' in out


def test_example_1_denied_leaves_the_files(tmp_path: Path) -> None:
    with daemon_process(tmp_path / "state", env=environment(tmp_path)) as daemon:
        token = token_for(daemon)
        with task_events(daemon, token) as events:
            result = run_script(example_1(daemon.url, token, approved=False))
            created = re.search(r"Task created: ([0-9a-f-]{36})", result.stdout)
            assert created, result.stdout
            wait_for(events, ("task.completed", "task.failed"), created.group(1))
        assert '"status": "denied"' in result.stdout
        task = get(daemon, token, f"/api/v1/tasks/{created.group(1)}")
        assert task["status"] == "completed"
        refusal = task["steps"][1]
        assert (refusal["decision"], refusal["outcome"]) == ("denied", "refused")
        assert refusal["detail"]["reason"] == "Looks good"  # the script's reason, unchanged
        assert left_over(task) == OLD


def test_a_waiting_task_survives_kill_9_and_completes_after_the_restart(tmp_path: Path) -> None:
    home = tmp_path / "state"
    env = environment(tmp_path)
    with daemon_process(home, env=env) as daemon:
        token = token_for(daemon)
        headers = {"Authorization": f"Bearer {token}"}
        with task_events(daemon, token) as events:
            created = httpx.post(
                f"{daemon.url}/api/v1/tasks",
                json={"description": "Delete old logs"},
                headers=headers,
            ).json()
            requested = wait_for(events, ("approval.requested",), created["id"])
        first_vm = created["vm_id"]
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait()
    with daemon_process(home, env=env) as daemon:
        token = token_for(daemon)
        headers = {"Authorization": f"Bearer {token}"}
        pending = get(daemon, token, "/api/v1/approvals?status=pending")
        assert [a["id"] for a in pending] == [requested["data"]["id"]]
        waiting = get(daemon, token, f"/api/v1/tasks/{created['id']}")
        assert waiting["status"] == "running"
        assert waiting["pending_approval_id"] == requested["data"]["id"]
        # The old daemon's sandbox died with it.
        assert get(daemon, token, f"/api/v1/vms/{first_vm}")["status"] == "failed"
        with task_events(daemon, token) as events:
            answer = httpx.post(
                f"{daemon.url}/api/v1/approvals/{requested['data']['id']}",
                json={"approved": True, "reason": "after the restart"},
                headers=headers,
            )
            assert answer.status_code == 200, answer.text
            wait_for(events, ("task.completed", "task.failed"), created["id"])
        task = get(daemon, token, f"/api/v1/tasks/{created['id']}")
        assert task["status"] == "completed", task
        assert task["vm_id"] != first_vm
        assert [s["decision"] for s in task["steps"]] == ["auto", "approved", "auto"]
        # The fresh sandbox had the task's files (restored), and the approved delete
        # removed them there.
        assert left_over(task) == []

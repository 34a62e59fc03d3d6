"""Acceptance: AgentBox's "Complete Workflow Example" (seed 004) runs against a real
daemon with curl and jq. The script is read from the seed and changed only where the
issue allows: the server address and token, the image name (``host``), and the
``pip install`` step, which needs the internet this machine does not have."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from stockade.sandbox.cgroups import CgroupLayout
from stockade.testing import ADMIN_PASSWORD, daemon_process, sse_sandbox_event
from tests.seeds import fenced_block, run_script, seed_text

PIP_STEP = re.compile(r'echo "Installing dependencies\.\.\."\ncurl .*?\| jq\n', re.DOTALL)


SEED_TIMEOUT = '    "timeout": 1800\n'


def workflow(server: str, token: str, runtime_class: str | None = None) -> str:
    """The seed's script with the allowed edits; with ``runtime_class``, also the issue's
    one: ``"isolation": {"runtime_class": ...}`` added to the create body."""
    script = fenced_block(seed_text("004"), "## Complete Workflow Example")
    edited = script.replace('SERVER="https://your-server/api/v1"', f'SERVER="{server}/api/v1"')
    edited = edited.replace('TOKEN="your-jwt-token"', f'TOKEN="{token}"')
    edited = edited.replace('"image": "python:3.11-slim"', '"image": "host"')
    edited, removed = PIP_STEP.subn("", edited)
    assert removed == 1, "the seed's pip install step was not found"
    if runtime_class is not None:
        assert edited.count(SEED_TIMEOUT) == 1
        isolation = f'    "isolation": {{"runtime_class": "{runtime_class}"}}\n'
        isolation = '    "timeout": 1800,\n' + isolation
        edited = edited.replace(SEED_TIMEOUT, isolation)
    # Only the allowed edits: every other line of the seed is still there.
    kept = [line for line in script.splitlines() if line not in edited.splitlines()]
    assert all(
        "your-server" in k
        or "your-jwt-token" in k
        or "python:3.11-slim" in k
        or (runtime_class is not None and k == SEED_TIMEOUT.rstrip("\n"))
        or k in removed_lines(script)
        for k in kept
    ), kept
    return edited


def removed_lines(script: str) -> list[str]:
    match = PIP_STEP.search(script)
    assert match
    return match.group(0).splitlines()


@pytest.mark.parametrize("runtime_class", [None, "gvisor"], ids=["default", "gvisor"])
def test_seed_004_workflow_runs_unchanged(tmp_path: Path, runtime_class: str | None) -> None:
    home = tmp_path / "state"
    env = {"STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with daemon_process(home, env=env) as daemon:
        login = httpx.post(
            f"{daemon.url}/api/v1/auth/login",
            json={"username": "admin", "password": ADMIN_PASSWORD},
        )
        token = login.json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        # Subscribed before the script runs, to see its environment end.
        with httpx.stream(
            "GET",
            f"{daemon.url}/api/v1/events",
            params={"type": "sandbox."},
            headers=headers,
            timeout=30,
        ) as events:
            result = run_script(workflow(daemon.url, token, runtime_class))
            created = re.search(r"Created environment: (env-[0-9a-f]+)", result.stdout)
            assert created, result.stdout + result.stderr
            # The DELETE answered at once; the host is cleaned, then this is published.
            sse_sandbox_event(events.iter_lines(), "sandbox.terminated", created.group(1))
        out = result.stdout
        assert result.returncode == 0, result.stderr + out
        env_id = re.search(r"Created environment: (env-[0-9a-f]+)", out)
        assert env_id, out
        assert "Environment is running!" in out
        assert '"stdout": "NumPy version: ' in out
        assert "Array mean: 3.0" in out
        assert '"exit_code": 0' in out
        assert '"logs": []' in out  # no `command` was given, so nothing was logged
        assert out.rstrip().endswith("Done!")
        after = httpx.get(
            f"{daemon.url}/api/v1/environments/{env_id.group(1)}", headers=headers
        ).json()
        assert after["status"] == "terminated"
        # It ran on the backend asked for: the one whose spawn was counted.
        metrics = httpx.get(f"{daemon.url}/metrics", headers=headers).text
        backend = "gvisor" if runtime_class else "namespace"
        assert f'vm_spawn_time_seconds_count{{backend="{backend}"}} 1.0' in metrics, metrics
        layout = CgroupLayout.detect()
        leftovers = [
            group
            for root in layout.roots()
            for parent in root.glob("stockade-*")
            for group in parent.iterdir()
            if group.is_dir() and group.name == env_id.group(1)
        ]
        assert leftovers == []

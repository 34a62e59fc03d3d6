"""Acceptance: Luna's curl examples (seed 001) run against a real daemon with bash and
curl. Each script is read from the seed and changed only where the issue allows: the
server address, and an added ``Authorization`` header (Stockade needs credentials)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from stockade.testing import ADMIN_PASSWORD, daemon_process, sse_sandbox_event
from tests.seeds import fenced_block, run_script, seed_text

SEED_URL = "http://localhost:8000"
CONTENT_TYPE = '-H "Content-Type: application/json"'


def example(heading: str, server: str, token: str) -> str:
    """The seed's curl example under ``heading``, pointed at ``server`` with a token."""
    script = fenced_block(seed_text("001"), heading)
    assert script.count(SEED_URL) == 1, script
    assert script.count(CONTENT_TYPE) == 1, script
    auth = f'  -H "Authorization: Bearer {token}" \\\n'
    edited = script.replace(SEED_URL, server).replace(
        f"{CONTENT_TYPE} \\\n", f"{CONTENT_TYPE} \\\n{auth}"
    )
    # Only the two allowed edits: undoing them gives the seed's script back.
    assert edited.replace(auth, "").replace(server, SEED_URL) == script
    assert auth in edited
    return edited


def curl(script: str) -> dict[str, Any]:
    result = run_script(script)
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def test_seed_001_curl_examples_run_unchanged(tmp_path: Path) -> None:
    env = {"STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with daemon_process(tmp_path / "state", env=env) as daemon:
        login = httpx.post(
            f"{daemon.url}/api/v1/auth/login",
            json={"username": "admin", "password": ADMIN_PASSWORD},
        )
        token = login.json()["token"]
        headers = {"Authorization": f"Bearer {token}"}

        plan = curl(example("### curl: parse a command", daemon.url, token))
        assert re.fullmatch(r"plan-[0-9a-f]{12}", plan["task_id"]), plan
        assert [s["id"] for s in plan["steps"]] == [1, 2, 3]
        assert [s["risk"] for s in plan["steps"]] == ["safe", "moderate", "safe"]
        assert {s["status"] for s in plan["steps"]} == {"pending"}
        assert plan["requires_confirmation"] is True
        assert plan["estimated_time"] == "2-3 minutes"

        # Subscribed before the run, to see its sandbox end.
        with httpx.stream(
            "GET",
            f"{daemon.url}/api/v1/events",
            params={"type": "sandbox."},
            headers=headers,
            timeout=30,
        ) as events:
            ran = curl(example("### curl: execute steps", daemon.url, token))
            listed = httpx.get(
                f"{daemon.url}/api/v1/environments",
                params={"label": "stockade.plan=task_001"},
                headers=headers,
            ).json()["environments"]
            assert len(listed) == 1, listed
            sse_sandbox_event(events.iter_lines(), "sandbox.terminated", listed[0]["id"])

        # The seed's step is `which brew`; there is no Homebrew in a sandbox, so it fails
        # like any failed first step: listed, with its error, and the run reads "failed".
        assert ran["task_id"] == "task_001"
        [result] = ran["results"]
        assert result["step_id"] == 1
        assert result["status"] == "failed"
        assert result["error"]
        assert result["risk"] == "safe"
        assert ran["overall_status"] == "failed"
        after = httpx.get(f"{daemon.url}/api/v1/environments/{listed[0]['id']}", headers=headers)
        assert after.json()["status"] == "terminated"

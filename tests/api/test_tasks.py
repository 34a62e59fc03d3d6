"""Tasks and approvals (seed 000) in-process, on real sandboxes: the loop with the
rule-based planner, the approval cliff, races, binding, expiry, cancel, timeout, reach,
events, metrics and the audit trail.

Command strings here are data for the daemon's policy and sandboxes; none is ever given
to a shell on the host.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from stockade.errors import InvalidInput
from stockade.events import Subscription
from stockade.services import Services
from stockade.store.tables import approvals, tasks
from stockade.testing import TestApp, bearer, make_settings, old_files, running_app, task_event
from tests.problems import assert_problem

DONE = ("task.completed", "task.failed", "task.cancelled")
LOGS = {"logs/app.log": 0, "logs/old.log": 30, "logs/older.log.1": 90, "notes.txt": 400}


@pytest.fixture
async def stockade(tmp_path: Path) -> AsyncIterator[TestApp]:
    """A daemon whose tasks start with two old logs, a fresh one and an old note."""
    template = old_files(tmp_path / "template", LOGS)
    settings = make_settings(tmp_path / "home", task_template=template)
    async with running_app(settings) as app:
        yield app


@pytest.fixture
def events(stockade: TestApp) -> Iterator[Subscription]:
    subscription = stockade.services.events.subscribe(["task.", "approval."])
    yield subscription
    subscription.close()


async def create(app: TestApp, token: str, description: str, **fields: Any) -> dict[str, Any]:
    response = await app.client.post(
        "/api/v1/tasks", json={"description": description, **fields}, headers=bearer(token)
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def task(app: TestApp, token: str, task_id: str) -> dict[str, Any]:
    response = await app.client.get(f"/api/v1/tasks/{task_id}", headers=bearer(token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def waiting(
    app: TestApp, token: str, events: Subscription, description: str, **fields: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A task created and paused on its first approval: (task, approval)."""
    created = await create(app, token, description, **fields)
    event = await task_event(events, ("approval.requested", *DONE), created["id"])
    assert event.type == "approval.requested", event
    return created, event.data


async def answer(
    app: TestApp, token: str, approval_id: str, approved: bool, reason: str = ""
) -> Any:
    return await app.client.post(
        f"/api/v1/approvals/{approval_id}",
        json={"approved": approved, "reason": reason or None},
        headers=bearer(token),
    )


async def ended(app: TestApp, token: str, events: Subscription, task_id: str) -> dict[str, Any]:
    """The task once it has ended (waits for its event unless it already has)."""
    body = await task(app, token, task_id)
    if (
        body["status"] in ("completed", "failed", "cancelled")
        and body["pending_approval_id"] is None
    ):
        return body
    await task_event(events, DONE, task_id)
    return await task(app, token, task_id)


def last_output(body: dict[str, Any]) -> str:
    """The stdout of the task's last step."""
    return str(body["steps"][-1]["detail"].get("stdout", ""))


# The seed's flow.


async def test_a_task_answers_running_with_its_sandbox(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    body = await create(stockade, admin_token, "list files", metadata={"ticket": 7})
    assert body["status"] == "running"
    assert body["vm_id"].startswith("env-")
    assert body["created_at"]
    assert body["started_at"]
    assert body["metadata"] == {"ticket": 7}
    vm = await stockade.client.get(f"/api/v1/vms/{body['vm_id']}", headers=bearer(admin_token))
    assert vm.status_code == 200
    done = await ended(stockade, admin_token, events, body["id"])
    assert done["status"] == "completed"
    assert done["result"]["exit_code"] == 0
    [step] = done["steps"]
    assert (step["tool"], step["risk"], step["decision"], step["outcome"]) == (
        "list_files",
        "low",
        "auto",
        "completed",
    )
    # Green actions ran without a person; its sandbox is gone.
    assert (
        await stockade.client.get("/api/v1/approvals", headers=bearer(admin_token))
    ).json() == []
    await stockade.services.sandboxes.settled()
    assert not stockade.services.sandboxes.is_running(body["vm_id"])


async def test_delete_old_logs_waits_for_a_person_then_deletes_them(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    created, _ = await waiting(stockade, admin_token, events, "Delete old logs")
    paused = await task(stockade, admin_token, created["id"])
    assert paused["status"] == "running"
    listing = await stockade.client.get(
        "/api/v1/approvals?status=pending", headers=bearer(admin_token)
    )
    [approval] = listing.json()
    assert paused["pending_approval_id"] == approval["id"]
    assert approval["task_id"] == created["id"]
    assert (approval["action_type"], approval["risk_level"], approval["status"]) == (
        "CommandExec",
        "high",
        "pending",
    )
    command = approval["changes"][0]
    assert command["type"] == "CommandExec"
    assert command["command"].startswith("rm -f -- ")
    deleted = {c["path"]: c["size_bytes"] for c in approval["changes"][1:]}
    assert deleted == {
        "/home/sandbox/logs/old.log": len("logs/old.log\n") * 8,
        "/home/sandbox/logs/older.log.1": len("logs/older.log.1\n") * 8,
    }
    assert "deletes 2 files" in approval["description"]
    expires = datetime.fromisoformat(approval["expires_at"])
    assert expires - datetime.fromisoformat(approval["created_at"]) == timedelta(minutes=5)
    # Nothing was deleted yet: the find before it saw both.
    assert sorted(last_output(paused).split()) == ["./logs/old.log", "./logs/older.log.1"]

    response = await answer(stockade, admin_token, approval["id"], True, "Looks good")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "approved"
    assert response.json()["responded_at"]
    done = await ended(stockade, admin_token, events, created["id"])
    assert done["status"] == "completed", done
    decisions = [(s["risk"], s["decision"], s["outcome"]) for s in done["steps"]]
    assert decisions == [
        ("low", "auto", "completed"),
        ("high", "approved", "completed"),
        ("low", "auto", "completed"),
    ]
    # The check that ran in its sandbox after the delete found none left.
    assert last_output(done) == ""


async def test_a_denial_goes_back_to_the_agent_and_nothing_is_deleted(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    created, approval = await waiting(stockade, admin_token, events, "Delete old logs")
    response = await answer(stockade, admin_token, approval["id"], False, "keep them")
    assert response.status_code == 200
    assert response.json()["status"] == "denied"
    done = await ended(stockade, admin_token, events, created["id"])
    assert done["status"] == "completed"
    refused = done["steps"][1]
    assert (refused["decision"], refused["outcome"]) == ("denied", "refused")
    assert refused["detail"]["reason"] == "keep them"
    # The same check, run after the denial, still finds both old logs in its sandbox.
    assert sorted(last_output(done).split()) == ["./logs/old.log", "./logs/older.log.1"]
    assert "refused" in done["result"]["output"] or "denied" in done["result"]["output"]


async def test_without_require_approval_red_actions_run_and_say_so(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    created = await create(stockade, admin_token, "Delete old logs", require_approval=False)
    done = await ended(stockade, admin_token, events, created["id"])
    assert done["status"] == "completed"
    assert [s["decision"] for s in done["steps"]] == ["auto", "not_required", "auto"]
    assert last_output(done) == ""
    assert (
        await stockade.client.get("/api/v1/approvals", headers=bearer(admin_token))
    ).json() == []


@pytest.mark.parametrize("require_approval", [True, False])
async def test_a_blocked_command_is_refused_and_never_offered(
    stockade: TestApp, admin_token: str, events: Subscription, require_approval: bool
) -> None:
    created = await create(stockade, admin_token, "run rm -rf /", require_approval=require_approval)
    done = await ended(stockade, admin_token, events, created["id"])
    [step] = done["steps"]
    assert (step["risk"], step["decision"], step["outcome"]) == ("critical", "blocked", "refused")
    assert (
        await stockade.client.get("/api/v1/approvals", headers=bearer(admin_token))
    ).json() == []
    assert "Blocked by policy" in done["result"]["output"]


async def test_creating_a_file_shows_its_diff(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    _, approval = await waiting(
        stockade, admin_token, events, 'create file report.md with content "# Report"'
    )
    assert (approval["action_type"], approval["risk_level"]) == ("FileCreate", "medium")
    [change] = approval["changes"]
    assert change["path"] == "/home/sandbox/report.md"
    assert change["size_bytes"] == len("# Report\n")
    assert "+# Report" in change["diff"]
    assert "--- /dev/null" in change["diff"]


async def test_editing_a_file_shows_a_unified_diff(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    _, approval = await waiting(
        stockade, admin_token, events, "replace notes.txt with NOTES.TXT in notes.txt"
    )
    assert approval["action_type"] == "FileEdit"
    diff = approval["changes"][0]["diff"]
    assert "-notes.txt" in diff
    assert "+NOTES.TXT" in diff


async def test_downloading_an_invoice_is_a_network_call_that_waits(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    url = "http://127.0.0.1:9/invoices/latest.pdf"
    created, approval = await waiting(
        stockade,
        admin_token,
        events,
        "Download and analyze the latest invoice",
        metadata={"invoice_date": "2025-02-17", "url": url},
    )
    assert approval["action_type"] == "NetworkCall"
    assert approval["changes"][0]["path"] == url
    await answer(stockade, admin_token, approval["id"], True)
    done = await ended(stockade, admin_token, events, created["id"])
    # The sandbox has no network, so the approved request fails there.
    fetch = done["steps"][0]
    assert (fetch["decision"], fetch["outcome"]) == ("approved", "failed")


# Races, expiry and binding.


async def test_fifty_concurrent_answers_have_one_winner_and_one_execution(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    ran: list[str] = []
    stockade.services.tasks.on_action = lambda tool, call_id: ran.append(call_id)
    created, approval = await waiting(stockade, admin_token, events, "run rm -f logs/old.log")
    ran.clear()
    responses = await asyncio.gather(
        *(answer(stockade, admin_token, approval["id"], i % 2 == 0) for i in range(50))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 49
    for loser in (r for r in responses if r.status_code == 409):
        assert_problem(loser, 409, error="conflict")
    done = await ended(stockade, admin_token, events, created["id"])
    winner = next(r for r in responses if r.status_code == 200).json()
    if winner["status"] == "approved":
        assert ran == ["step-1"]
        assert [s["decision"] for s in done["steps"]] == ["approved"]
    else:
        assert ran == []
        assert [s["decision"] for s in done["steps"]] == ["denied"]


async def test_an_answer_after_expiry_is_409_and_nothing_runs(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    ran: list[str] = []
    stockade.services.tasks.on_action = lambda tool, call_id: ran.append(call_id)
    created, approval = await waiting(stockade, admin_token, events, "run rm -f logs/old.log")
    past = datetime.now(UTC) - timedelta(seconds=1)
    async with stockade.services.store.db.begin() as conn:
        await conn.execute(
            approvals.update().where(approvals.c.id == approval["id"]).values(expires_at=past)
        )
    reading = await stockade.client.get(
        f"/api/v1/approvals/{approval['id']}", headers=bearer(admin_token)
    )
    assert reading.json()["status"] == "expired"
    response = await answer(stockade, admin_token, approval["id"], True)
    body = assert_problem(response, 409, error="conflict")
    assert "expired" in str(body["detail"])
    # The sweeper marks it, and the task goes on as if it had been denied.
    await stockade.services.tasks.expire_due()
    done = await ended(stockade, admin_token, events, created["id"])
    assert done["status"] == "completed"
    assert [(s["decision"], s["outcome"]) for s in done["steps"]] == [("expired", "refused")]
    assert ran == []
    expired = await stockade.client.get(
        "/api/v1/approvals?status=expired", headers=bearer(admin_token)
    )
    assert [a["id"] for a in expired.json()] == [approval["id"]]


async def test_an_action_changed_after_the_card_was_shown_is_refused(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    ran: list[str] = []
    stockade.services.tasks.on_action = lambda tool, call_id: ran.append(call_id)
    created, approval = await waiting(stockade, admin_token, events, "run rm -f logs/old.log")
    # Someone with access to the store rewrites the paused call's arguments.
    async with stockade.services.store.db.begin() as conn:
        row = (
            await conn.execute(sa.select(tasks.c.history).where(tasks.c.id == created["id"]))
        ).one()
        history = row.history
        for message in history:
            for part in message.get("parts", []):
                if part.get("part_kind") == "tool-call":
                    part["args"] = {"command": "rm -f logs/app.log", "timeout_seconds": 120}
        await conn.execute(
            tasks.update().where(tasks.c.id == created["id"]).values(history=history)
        )
    assert (await answer(stockade, admin_token, approval["id"], True)).status_code == 200
    done = await ended(stockade, admin_token, events, created["id"])
    [step] = done["steps"]
    assert (step["decision"], step["outcome"]) == ("binding_refused", "refused")
    assert step["detail"]["approved_hash"] == approval["action_hash"]
    assert step["detail"]["hash"] != approval["action_hash"]
    assert ran == []


# Cancel and timeout.


async def test_cancelling_a_waiting_task_withdraws_its_approval(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    created, approval = await waiting(stockade, admin_token, events, "Delete old logs")
    response = await stockade.client.delete(
        f"/api/v1/tasks/{created['id']}", headers=bearer(admin_token)
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    again = await stockade.client.delete(
        f"/api/v1/tasks/{created['id']}", headers=bearer(admin_token)
    )
    assert_problem(again, 409, error="conflict")
    withdrawn = await stockade.client.get(
        f"/api/v1/approvals/{approval['id']}", headers=bearer(admin_token)
    )
    assert withdrawn.json()["status"] == "cancelled"
    assert (await answer(stockade, admin_token, approval["id"], True)).status_code == 409
    await stockade.services.sandboxes.settled()
    assert not stockade.services.sandboxes.is_running(created["vm_id"])


async def test_timeout_seconds_is_enforced(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    created = await create(stockade, admin_token, "run sleep 60", timeout_seconds=1)
    done = await ended(stockade, admin_token, events, created["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "timeout"
    await stockade.services.sandboxes.settled()
    assert not stockade.services.sandboxes.is_running(created["vm_id"])


# Reach and input.


async def test_other_users_tasks_and_approvals_answer_404(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    made = await stockade.client.post(
        "/api/v1/users",
        json={"username": "bob", "password": "bob-password-1"},
        headers=bearer(admin_token),
    )
    assert made.status_code == 201
    bob = await stockade.login("bob", "bob-password-1")
    created, approval = await waiting(stockade, admin_token, events, "run rm -f logs/old.log")
    for method, path in [
        ("GET", f"/api/v1/tasks/{created['id']}"),
        ("DELETE", f"/api/v1/tasks/{created['id']}"),
        ("GET", f"/api/v1/approvals/{approval['id']}"),
    ]:
        response = await stockade.client.request(method, path, headers=bearer(bob))
        assert_problem(response, 404, error="not_found")
    assert_problem(await answer(stockade, bob, approval["id"], True), 404, error="not_found")
    assert (await stockade.client.get("/api/v1/approvals", headers=bearer(bob))).json() == []
    listed = (await stockade.client.get("/api/v1/tasks", headers=bearer(bob))).json()
    assert listed == {"tasks": [], "total": 0, "limit": 20, "offset": 0}
    # Bob's own stream does not carry the admin's approvals; the admin's does.
    mine = await task(stockade, admin_token, created["id"])
    assert mine["pending_approval_id"] == approval["id"]


async def test_a_key_limited_to_environments_cannot_start_tasks(
    stockade: TestApp, admin_token: str
) -> None:
    env = await stockade.client.post(
        "/api/v1/environments", json={"name": "a"}, headers=bearer(admin_token)
    )
    key = await stockade.client.post(
        "/api/v1/api-keys",
        json={
            "name": "limited",
            "permissions": [{"environment_id": env.json()["id"], "permission": "admin"}],
        },
        headers=bearer(admin_token),
    )
    assert key.status_code == 201, key.text
    response = await stockade.client.post(
        "/api/v1/tasks",
        json={"description": "list files"},
        headers=bearer(key.json()["key"]),
    )
    assert_problem(response, 403, error="forbidden")
    # Its event stream carries its environment's events, and none of the tasks'.
    limited = await stockade.services.auth.authenticate(f"Bearer {key.json()['key']}")
    stream = stockade.services.streams.open(limited, [])
    try:
        await create(stockade, admin_token, "run rm -f logs/old.log")
        deleted = await stockade.client.delete(
            f"/api/v1/environments/{env.json()['id']}", headers=bearer(admin_token)
        )
        assert deleted.status_code == 204
        seen: list[tuple[str, object]] = []

        async def read() -> None:
            async for body in stream:
                data = body["data"]
                assert isinstance(data, dict)
                seen.append((str(body["type"]), data.get("id")))
                if data.get("id") == env.json()["id"]:
                    return

        await asyncio.wait_for(read(), 15)
        assert seen
        assert all(about == env.json()["id"] for _, about in seen), seen
    finally:
        stream.close()


async def test_unauthenticated_callers_get_401(stockade: TestApp) -> None:
    for method, path in [
        ("POST", "/api/v1/tasks"),
        ("GET", "/api/v1/tasks"),
        ("GET", "/api/v1/tasks/x"),
        ("DELETE", "/api/v1/tasks/x"),
        ("GET", "/api/v1/approvals"),
        ("GET", "/api/v1/approvals/x"),
        ("POST", "/api/v1/approvals/x"),
    ]:
        response = await stockade.client.request(method, path, json={})
        assert_problem(response, 401, error="unauthorized")


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/api/v1/tasks", {}, 422),
        ("POST", "/api/v1/tasks", {"description": ""}, 422),
        ("POST", "/api/v1/tasks", {"description": "x", "timeout_seconds": 0}, 422),
        ("POST", "/api/v1/tasks", {"description": "x", "metadata": []}, 422),
        ("POST", "/api/v1/tasks", {"description": "   "}, 400),
        ("GET", "/api/v1/tasks?status=sleeping", None, 400),
        ("GET", "/api/v1/tasks?limit=101", None, 422),
        ("GET", "/api/v1/tasks?offset=-1", None, 422),
        ("GET", "/api/v1/approvals?status=maybe", None, 400),
        ("POST", "/api/v1/approvals/x", {"reason": "no answer"}, 422),
        ("GET", "/api/v1/tasks/no-such-task", None, 404),
        ("GET", "/api/v1/approvals/no-such-approval", None, 404),
        ("POST", "/api/v1/approvals/no-such-approval", {"approved": True}, 404),
    ],
)
async def test_bad_input_gets_a_clear_problem(
    stockade: TestApp, admin_token: str, method: str, path: str, body: Any, status: int
) -> None:
    response = await stockade.client.request(method, path, json=body, headers=bearer(admin_token))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"]


async def test_listing_filters_and_pages(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    first = await create(stockade, admin_token, "disk usage")
    await ended(stockade, admin_token, events, first["id"])
    paused, _ = await waiting(stockade, admin_token, events, "run rm -f logs/old.log")
    running = (
        await stockade.client.get("/api/v1/tasks?status=running", headers=bearer(admin_token))
    ).json()
    assert [t["id"] for t in running["tasks"]] == [paused["id"]]
    completed = (
        await stockade.client.get("/api/v1/tasks?status=completed", headers=bearer(admin_token))
    ).json()
    assert [t["id"] for t in completed["tasks"]] == [first["id"]]
    assert completed["tasks"][0]["result"]["exit_code"] == 0
    page = (
        await stockade.client.get("/api/v1/tasks?limit=1&offset=1", headers=bearer(admin_token))
    ).json()
    assert (page["total"], page["limit"], page["offset"]) == (2, 1, 1)
    assert [t["id"] for t in page["tasks"]] == [first["id"]]


# Events, metrics and audit.


async def test_streams_carry_task_and_approval_events_only_to_their_owner(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    await stockade.client.post(
        "/api/v1/users",
        json={"username": "carol", "password": "carol-password-1"},
        headers=bearer(admin_token),
    )
    carol_token = await stockade.login("carol", "carol-password-1")
    carol = await stockade.services.auth.authenticate(f"Bearer {carol_token}")
    carol_stream = stockade.services.streams.open(carol, ["task.", "approval."])
    try:
        theirs = await create(stockade, carol_token, "run rm -f logs/old.log")
        admins = await create(stockade, admin_token, "run rm -f logs/old.log")
        seen: list[tuple[str, str]] = []

        async def read() -> None:
            async for body in carol_stream:
                data = body["data"]
                assert isinstance(data, dict)
                seen.append((str(body["type"]), str(data.get("task_id", data.get("id")))))
                if body["type"] == "approval.requested":
                    return

        await asyncio.wait_for(read(), 15)
        await task_event(events, "approval.requested", admins["id"])
        assert ("approval.requested", theirs["id"]) in seen
        assert all(task_id == theirs["id"] for _, task_id in seen)
    finally:
        carol_stream.close()


async def test_metrics_and_audit_record_every_action_and_decision(
    stockade: TestApp, admin_token: str, events: Subscription
) -> None:
    created, approval = await waiting(stockade, admin_token, events, "Delete old logs")
    text = (await stockade.client.get("/metrics", headers=bearer(admin_token))).text
    assert "stockade_approvals_pending 1.0" in text
    assert 'stockade_tasks{status="running"} 1.0' in text
    await answer(stockade, admin_token, approval["id"], True)
    await ended(stockade, admin_token, events, created["id"])
    text = (await stockade.client.get("/metrics", headers=bearer(admin_token))).text
    assert "stockade_approvals_pending 0.0" in text
    assert 'stockade_approvals_decided_total{decision="approved"} 1.0' in text
    assert "stockade_approval_wait_seconds_count 1.0" in text
    assert 'stockade_tasks{status="completed"} 1.0' in text
    assert 'stockade_tasks{status="running"} 0.0' in text
    entries = await stockade.services.store.audit.list(limit=50)
    actions = [e.action for e in reversed(entries) if e.target in (created["id"], approval["id"])]
    assert actions == [
        "task.created",
        "task.action",
        "approval.requested",
        "approval.answered",
        "task.action",
        "task.action",
        "task.completed",
    ]
    answered = next(e for e in entries if e.action == "approval.answered")
    assert answered.detail == {"task_id": created["id"], "approved": True, "reason": None}


# The operator's policy file.

POLICY = """
threshold = "high"
blocked_programs = ["uname"]
"""


async def test_the_daemon_judges_with_the_operators_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    settings = make_settings(tmp_path / "home", policy_file=policy)
    async with running_app(settings) as app:
        token = await app.login()
        events = app.services.events.subscribe(["task."])
        # A file write is medium: below this threshold, so it runs unattended.
        written = await create(app, token, 'create file a.txt with content "hi"')
        done = await ended(app, token, events, written["id"])
        assert [(s["risk"], s["decision"]) for s in done["steps"]] == [("medium", "auto")]
        # A program the file blocks is refused outright.
        blocked = await create(app, token, "run uname -a")
        done = await ended(app, token, events, blocked["id"])
        assert [(s["decision"], s["outcome"]) for s in done["steps"]] == [("blocked", "refused")]
        events.close()


def test_a_bad_policy_file_stops_the_daemon_with_its_reason(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('threshold = "sometimes"\n')
    with pytest.raises(InvalidInput, match="threshold"):
        Services.build(make_settings(tmp_path / "home", policy_file=policy))


async def test_a_denial_stored_just_before_a_crash_is_a_step_after_the_restart(
    tmp_path: Path,
) -> None:
    """Found by the crash loop: an answer stores the approval's decision, then the
    refused step. A daemon that died in between left a task whose resume, at the next
    start, went on without the denial among its steps (``auto, auto``)."""
    template = old_files(tmp_path / "template", LOGS)
    settings = make_settings(tmp_path / "home", task_template=template)
    async with running_app(settings) as app:
        token = await app.login()
        events = app.services.events.subscribe(["task.", "approval."])
        try:
            created, approval = await waiting(app, token, events, "Delete old logs")
        finally:
            events.close()
        # The answer's first write, and nothing after it, as a kill -9 would leave it.
        stored = await app.services.store.approvals.answer(
            approval["id"], approved=False, reason="not now", by=None, at=datetime.now(UTC)
        )
        assert stored.approval is not None
        assert stored.approval.status == "denied"
    async with running_app(settings) as app:
        await app.services.tasks.idle()  # the start resumed the task; it has ended
        body = await task(app, await app.login(), created["id"])
    assert body["status"] == "completed", body
    assert [(s["decision"], s["outcome"]) for s in body["steps"]] == [
        ("auto", "completed"),
        ("denied", "refused"),
        ("auto", "completed"),
    ]
    assert body["steps"][1]["detail"]["reason"] == "not now"
    assert last_output(body).split() == ["./logs/old.log", "./logs/older.log.1"]

"""Luna's plans (seed 001) through the app: steps proposed and rated by the policy, then
run one by one in a real sandbox of the ``namespace`` backend, destroyed afterwards.

The commands below are data for the daemon's policy and its sandboxes; none of them is
ever given to a shell by the tests themselves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from stockade.settings import Settings
from stockade.store.records import AuditEntry
from stockade.testing import TestApp, bearer, make_settings, running_app
from tests.api.test_environments import host_remains
from tests.problems import assert_problem

EXECUTE = "/api/execute"
RUN = "/api/execute/run"
TASK_ID = re.compile(r"plan-[0-9a-f]{12}")
ROOT_WIPE = "rm -rf /"  # blocked by the policy: it must never run
CONFIRM = 'resend the run with "confirmed": true after a person has confirmed the plan.'


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Rate limits have their own tests; here they would only cap how much a test may do.
    return make_settings(tmp_path / "home", rate_limit_enabled=False)


@pytest.fixture
async def auth(admin_token: str) -> dict[str, str]:
    return bearer(admin_token)


async def propose(app: TestApp, auth: dict[str, str], command: str, **extra: Any) -> dict[str, Any]:
    response = await app.client.post(EXECUTE, json={"command": command, **extra}, headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def run(
    app: TestApp,
    auth: dict[str, str],
    commands: list[str],
    *,
    task_id: str = "task_001",
    **extra: Any,
) -> dict[str, Any]:
    steps = [
        {"id": number, "command": command, "description": f"step {number}"}
        for number, command in enumerate(commands, start=1)
    ]
    response = await app.client.post(
        RUN, json={"task_id": task_id, "steps": steps, **extra}, headers=auth
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["task_id"] == task_id
    return body


async def audited(app: TestApp, action: str, task_id: str) -> list[AuditEntry]:
    """The audit rows of ``action`` about ``task_id``, oldest first."""
    entries = await app.services.store.audit.list(limit=10_000)
    return sorted(
        (e for e in entries if e.action == action and e.target == task_id), key=lambda e: e.id
    )


async def plan_sandboxes(app: TestApp, auth: dict[str, str], task_id: str) -> list[dict[str, Any]]:
    """The environments made for runs of ``task_id``, once their deletes have finished."""
    await app.services.sandboxes.settled()
    response = await app.client.get(
        "/api/v1/environments", params={"label": f"stockade.plan={task_id}"}, headers=auth
    )
    assert response.status_code == 200, response.text
    environments: list[dict[str, Any]] = response.json()["environments"]
    return environments


# Proposals.


async def test_install_chrome_is_three_steps_rated_by_the_policy(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    plan = await propose(stockade, auth, "install chrome", context={"os": "Linux"})
    assert TASK_ID.fullmatch(plan["task_id"]), plan["task_id"]
    steps = plan["steps"]
    assert [s["id"] for s in steps] == [1, 2, 3]
    assert [s["risk"] for s in steps] == ["safe", "moderate", "safe"]
    assert [s["status"] for s in steps] == ["pending"] * 3
    assert steps[1]["command"] == "apt-get install -y chromium"
    assert all(s["description"] and s["reason"] and s["blocked"] is False for s in steps)
    assert plan["requires_confirmation"] is True
    assert plan["estimated_time"] == "2-3 minutes"
    assert plan["message"] is None
    # Nothing ran: no sandbox was made for it. The proposal is in the audit log.
    assert await plan_sandboxes(stockade, auth, plan["task_id"]) == []
    [created] = await audited(stockade, "plan.created", plan["task_id"])
    assert created.detail is not None
    assert created.detail["request"] == "install chrome"
    assert [s["risk"] for s in created.detail["steps"]] == ["safe", "moderate", "safe"]


async def test_listing_files_is_safe_and_needs_no_confirmation(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    plan = await propose(stockade, auth, "list files")
    [step] = plan["steps"]
    assert step["risk"] == "safe"
    assert step["command"].startswith("ls ")
    assert plan["requires_confirmation"] is False


async def test_a_request_no_rule_understands_has_no_steps_and_says_why(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    plan = await propose(stockade, auth, "compose a sonnet about sandboxes")
    assert plan["steps"] == []
    assert plan["requires_confirmation"] is False
    assert "rule-based planner has no rule for" in plan["message"]
    assert TASK_ID.fullmatch(plan["task_id"])


async def test_a_blocked_command_is_proposed_as_blocked_and_dangerous(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    plan = await propose(stockade, auth, f"run {ROOT_WIPE}")
    [step] = plan["steps"]
    assert step["command"] == ROOT_WIPE
    assert step["risk"] == "dangerous"
    assert step["blocked"] is True
    assert "root" in step["reason"]
    assert plan["requires_confirmation"] is True


async def test_a_dangerous_command_is_proposed_as_dangerous(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    plan = await propose(stockade, auth, "delete somefile")
    [step] = plan["steps"]
    assert step["risk"] == "dangerous"
    assert step["blocked"] is False
    assert plan["requires_confirmation"] is True


# Runs.


async def test_a_run_stops_at_the_first_failure_and_reads_partial(
    stockade: TestApp, auth: dict[str, str], settings: Settings
) -> None:
    body = await run(
        stockade, auth, ["echo one", "echo oops >&2; exit 3", "echo three"], task_id="task-partial"
    )
    assert body["overall_status"] == "partial"
    first, second = body["results"]  # the third step is not listed: it did not run
    assert first == {
        "step_id": 1,
        "status": "completed",
        "output": "one\n",
        "error": None,
        "risk": "safe",
        "exit_code": 0,
    }
    assert second["step_id"] == 2
    assert second["status"] == "failed"
    assert second["error"] == "oops\n"
    assert second["exit_code"] == 3
    # The audit log has the two steps that ran, and nothing of the third.
    rows = await audited(stockade, "plan.step", "task-partial")
    details = [row.detail or {} for row in rows]
    assert [d["step_id"] for d in details] == [1, 2]
    assert [d["outcome"] for d in details] == ["completed", "failed"]
    assert [d["command"] for d in details] == ["echo one", "echo oops >&2; exit 3"]
    assert details[0]["risk"] == "safe"
    assert details[1]["exit_code"] == 3
    assert details[0]["sandbox_id"] == details[1]["sandbox_id"]  # one sandbox for the run
    # That sandbox is gone: terminated, and nothing of it is left on the host.
    [sandbox] = await plan_sandboxes(stockade, auth, "task-partial")
    assert sandbox["id"] == details[0]["sandbox_id"]
    assert sandbox["status"] == "terminated"
    assert sandbox["labels"] == {"stockade.plan": "task-partial"}
    assert host_remains(settings) == []


async def test_a_run_whose_first_step_fails_reads_failed(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    body = await run(stockade, auth, ["false", "echo never"], task_id="task-failed")
    assert body["overall_status"] == "failed"
    [only] = body["results"]
    assert only["status"] == "failed"
    assert only["exit_code"] == 1
    assert only["error"] == "The command exited with status 1."
    rows = await audited(stockade, "plan.step", "task-failed")
    assert [(r.detail or {})["step_id"] for r in rows] == [1]


async def test_moderate_steps_run_without_confirmation(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    body = await run(stockade, auth, ["echo data > somefile", "cat somefile"])
    assert body["overall_status"] == "completed"
    assert [r["risk"] for r in body["results"]] == ["moderate", "safe"]
    assert [r["status"] for r in body["results"]] == ["completed", "completed"]
    assert body["results"][1]["output"] == "data\n"


async def test_a_blocked_step_is_refused_without_running_even_when_confirmed(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    for confirmed in (False, True):
        task_id = f"task-blocked-{str(confirmed).lower()}"
        body = await run(stockade, auth, [ROOT_WIPE], task_id=task_id, confirmed=confirmed)
        assert body["overall_status"] == "failed"
        [refused] = body["results"]
        assert refused["status"] == "failed"
        assert refused["error"].startswith("Blocked by policy: ")
        assert "root" in refused["error"]
        assert refused["risk"] == "dangerous"
        assert refused["exit_code"] is None
        assert refused["output"] == ""
        [row] = await audited(stockade, "plan.step", task_id)
        assert row.detail is not None
        assert row.detail["outcome"] == "refused"
        assert row.detail["command"] == ROOT_WIPE
        assert row.detail["level"] == "critical"
        assert row.detail["exit_code"] is None
        # It was the only step, so no sandbox was ever made for this run.
        assert row.detail["sandbox_id"] is None
        assert await plan_sandboxes(stockade, auth, task_id) == []


async def test_a_blocked_step_after_others_stops_the_run(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    body = await run(
        stockade, auth, ["echo before", f"sudo {ROOT_WIPE}", "echo after"], task_id="task-mid"
    )
    assert body["overall_status"] == "partial"
    assert [r["status"] for r in body["results"]] == ["completed", "failed"]
    assert body["results"][1]["error"].startswith("Blocked by policy: ")
    rows = await audited(stockade, "plan.step", "task-mid")
    assert [(r.detail or {})["outcome"] for r in rows] == ["completed", "refused"]


async def test_a_dangerous_step_runs_only_when_confirmed(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    refused = await run(stockade, auth, ["rm -f somefile"], task_id="task-unconfirmed")
    assert refused["overall_status"] == "failed"
    [result] = refused["results"]
    assert result["risk"] == "dangerous"
    assert result["exit_code"] is None
    assert result["error"].startswith("This step is dangerous (")
    assert result["error"].endswith(f"); {CONFIRM}")
    [row] = await audited(stockade, "plan.step", "task-unconfirmed")
    assert (row.detail or {})["outcome"] == "refused"
    assert (row.detail or {})["confirmed"] is False
    assert await plan_sandboxes(stockade, auth, "task-unconfirmed") == []

    steps = ["echo data > somefile", "rm -f somefile", "test ! -e somefile && echo gone"]
    done = await run(stockade, auth, steps, task_id="task-confirmed", confirmed=True)
    assert done["overall_status"] == "completed"
    assert [r["risk"] for r in done["results"]] == ["moderate", "dangerous", "safe"]
    assert [r["error"] for r in done["results"]] == [None, None, None]
    assert done["results"][2]["output"] == "gone\n"  # the rm ran
    rows = await audited(stockade, "plan.step", "task-confirmed")
    assert [(r.detail or {})["outcome"] for r in rows] == ["completed"] * 3
    assert all((r.detail or {})["confirmed"] is True for r in rows)


async def test_a_step_over_its_time_limit_is_killed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", rate_limit_enabled=False, plan_step_timeout=1)
    async with running_app(settings) as app:
        auth = bearer(await app.login())
        body = await run(app, auth, ["echo started", "sleep 30", "echo never"])
        assert body["overall_status"] == "partial"
        first, second = body["results"]
        assert first["output"] == "started\n"
        assert second["status"] == "failed"
        assert second["error"] == "The step ran longer than its limit of 1 s and was killed."
        assert second["exit_code"] == 137


async def test_an_empty_run_completes_without_a_sandbox(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    body = await run(stockade, auth, [], task_id="task-empty")
    assert body == {"task_id": "task-empty", "results": [], "overall_status": "completed"}
    assert await plan_sandboxes(stockade, auth, "task-empty") == []


async def test_a_run_of_a_proposed_plan_is_marked_as_proposed(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    plan = await propose(stockade, auth, "run echo planned")
    [step] = plan["steps"]
    body = await run(stockade, auth, [step["command"]], task_id=plan["task_id"])
    assert body["overall_status"] == "completed"
    assert body["results"][0]["output"] == "planned\n"
    [row] = await audited(stockade, "plan.step", plan["task_id"])
    assert (row.detail or {})["proposed"] is True
    # The same task id with a command the daemon did not propose is still run (Luna's
    # client sends the steps itself), and the audit says so.
    await run(stockade, auth, ["echo other"], task_id=plan["task_id"])
    rows = await audited(stockade, "plan.step", plan["task_id"])
    assert [(r.detail or {})["proposed"] for r in rows] == [True, False]


async def test_plans_belong_to_their_caller_and_runs_to_theirs(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    made = await stockade.client.post(
        "/api/v1/users", headers=auth, json={"username": "alice", "password": "alice-password"}
    )
    assert made.status_code == 201, made.text
    alice = bearer(await stockade.login("alice", "alice-password"))
    plan = await propose(stockade, alice, "run echo mine")
    principals = stockade.services.auth
    as_alice = await principals.authenticate(alice["Authorization"])
    as_admin = await principals.authenticate(auth["Authorization"])
    assert stockade.services.plans.proposal(as_alice, plan["task_id"]) is not None
    assert stockade.services.plans.proposal(as_admin, plan["task_id"]) is None
    # Runs are stateless: the admin may send the same task id, but it is not their plan.
    await run(stockade, auth, ["echo admin"], task_id=plan["task_id"])
    await run(stockade, alice, ["echo mine"], task_id=plan["task_id"])
    rows = await audited(stockade, "plan.step", plan["task_id"])
    assert [(r.actor, (r.detail or {})["proposed"]) for r in rows] == [
        (as_admin.user_id, False),
        (as_alice.user_id, True),
    ]
    # Each run's sandbox is its caller's: alice sees only her own.
    await stockade.services.sandboxes.settled()
    response = await stockade.client.get(
        "/api/v1/environments", params={"label": f"stockade.plan={plan['task_id']}"}, headers=alice
    )
    [own] = response.json()["environments"]
    assert own["id"] == (rows[1].detail or {})["sandbox_id"]


# Refusals.


@pytest.mark.parametrize("path", [EXECUTE, RUN])
async def test_unauthenticated_calls_are_refused(stockade: TestApp, path: str) -> None:
    body = {"command": "list files", "task_id": "task_001", "steps": []}
    response = await stockade.client.post(path, json=body)
    assert_problem(response, 401, error="unauthorized")
    wrong = await stockade.client.post(path, json=body, headers=bearer("not-a-token"))
    assert_problem(wrong, 401, error="unauthorized")


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (EXECUTE, {}, 422),
        (EXECUTE, {"context": {"os": "Linux"}}, 422),
        (EXECUTE, {"command": ""}, 422),
        (EXECUTE, {"command": 7}, 422),
        (EXECUTE, {"command": "list files", "context": "Linux"}, 422),
        (EXECUTE, {"command": "   "}, 400),
        (EXECUTE, {"command": "delete old logs", "context": {"days": "lots"}}, 400),
        (RUN, {"steps": []}, 422),
        (RUN, {"task_id": "task_001"}, 422),
        (RUN, {"task_id": "task_001", "steps": "echo hi"}, 422),
        (RUN, {"task_id": "task_001", "steps": {"id": 1, "command": "echo hi"}}, 422),
        (RUN, {"task_id": "task_001", "steps": [{"id": 1, "description": "no command"}]}, 422),
        (RUN, {"task_id": "task_001", "steps": [{"command": "echo no id"}]}, 422),
        (RUN, {"task_id": "task_001", "steps": [{"id": 1, "command": ""}]}, 422),
        (RUN, {"task_id": "task 001!", "steps": []}, 422),
        (RUN, {"task_id": "task_001", "steps": [], "confirmed": "maybe"}, 422),
        (RUN, {"task_id": "task_001", "steps": [{"id": 1, "command": "  "}]}, 400),
        (RUN, {"task_id": "task_001", "steps": [{"id": 1, "command": "echo \u0000"}]}, 400),
        (
            RUN,
            {
                "task_id": "task_001",
                "steps": [{"id": 1, "command": "echo a"}, {"id": 1, "command": "echo b"}],
            },
            400,
        ),
    ],
)
async def test_bad_bodies_are_problems_never_500(
    stockade: TestApp, auth: dict[str, str], path: str, body: dict[str, Any], status: int
) -> None:
    response = await stockade.client.post(path, json=body, headers=auth)
    error = "validation_error" if status == 422 else "bad_request"
    assert_problem(response, status, error=error)
    # Nothing was run for a refused body.
    assert await audited(stockade, "plan.step", "task_001") == []


@pytest.mark.parametrize("path", [EXECUTE, RUN])
async def test_a_body_that_is_not_json_is_a_bad_request(
    stockade: TestApp, auth: dict[str, str], path: str
) -> None:
    response = await stockade.client.post(
        path, content=b"{not json", headers=auth | {"content-type": "application/json"}
    )
    assert_problem(response, 400, error="bad_request", detail="Request body is not valid JSON")


async def test_the_schema_documents_confirmed_and_moderate_steps(stockade: TestApp) -> None:
    schema = (await stockade.client.get("/openapi.json")).json()
    operation = schema["paths"][RUN]["post"]
    assert '"confirmed": true' in operation["description"]
    assert "`moderate` steps run" in operation["description"]
    run_in = schema["components"]["schemas"]["RunIn"]["properties"]
    assert run_in["confirmed"]["default"] is False
    assert "dangerous" in run_in["confirmed"]["description"]
    assert set(schema["paths"][EXECUTE]["post"]["responses"]) >= {"200", "401", "422"}

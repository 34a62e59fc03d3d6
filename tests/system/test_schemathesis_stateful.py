"""Stateful Schemathesis over the whole ``/openapi.json`` of a running daemon process.

The daemon is ``stockade daemon`` on SQLite with real sandboxes, set up as the stateless
run's app is (``tests/fuzz.py``). Schemathesis builds its state machine from the links
the schema declares (``stockade.api.links``): create an environment, task, API key, job
or plan, then get, use and delete that one, with some negative data among the steps.
Every request carries the admin's bearer token, and every response is judged by the
stateless run's checks plus ``use_after_free`` and ``negative_data_rejection``. Any
failure fails the test with Schemathesis's report and a curl line to reproduce it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import negative_data_rejection, use_after_free
from schemathesis.specs.openapi.stateful import collect_transitions

from stockade.testing import ADMIN_PASSWORD, JWT_SECRET, Daemon, bearer, daemon_process
from tests.fuzz import CHECKS, FUZZED_DAEMON, HYPOTHESIS, environment_of, run_workflow

STATEFUL_CHECKS = [*CHECKS, use_after_free, negative_data_rejection]

# Bounded so that the run takes a minute or two on two cores.
RUN = settings(max_examples=30, stateful_step_count=8, **HYPOTHESIS)
# Suites started at most to reach RUN.max_examples scenarios (see run_workflow).
SUITES = 3
# Only the links the schema declares: inferred ones join unrelated ids by their names (a
# LuminaGuard task_id to a daemon job's, say), and thin out the declared ones.
CONFIG = SchemathesisConfig.from_dict({"phases": {"stateful": {"inference": {"algorithms": []}}}})
# What pydantic reads as true.
TRUE = {"true", "1", "yes", "on", "t", "y"}

# DELETE ends these without forgetting them, as the seeds say: seed 004 lists
# environments by status `terminated` (and the VM view shows the same rows), and seed
# 000's DELETE of a task answers it `cancelled`. A GET after the DELETE answers 200 with
# that state by contract, so use_after_free does not apply below these paths; it does to
# API keys and jobs, which a DELETE removes.
KEPT_AFTER_DELETE = (
    "/api/v1/environments/{env_id}",
    "/api/v1/vms/{vm_id}",
    "/api/v1/tasks/{task_id}",
)
# Creates whose links every run must have followed. POST /daemon/tasks/add is not among
# them: generated bodies rarely pass its checks (random Python rarely defines
# `execute()`), so its links are followed in some runs only.
CREATES = {
    "POST /api/v1/environments",
    "POST /api/v1/tasks",
    "POST /api/v1/api-keys",
    "POST /api/execute",
}

# Links the schema must declare, as (source, target) operation labels.
LINKED = {
    ("POST /api/v1/environments", "GET /api/v1/environments/{env_id}"),
    ("POST /api/v1/environments", "DELETE /api/v1/environments/{env_id}"),
    ("POST /api/v1/tasks", "GET /api/v1/tasks/{task_id}"),
    ("POST /api/v1/tasks", "DELETE /api/v1/tasks/{task_id}"),
    ("POST /api/v1/api-keys", "DELETE /api/v1/api-keys/{key_id}"),
    ("POST /daemon/tasks/add", "GET /daemon/tasks/{task_id}"),
    ("POST /daemon/tasks/add", "DELETE /daemon/tasks/{task_id}"),
    ("POST /api/execute", "POST /api/execute/run"),
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home: Path = tmp_path_factory.mktemp("stateful") / "home"
    env = environment_of(
        {
            **FUZZED_DAEMON,
            "admin_password": ADMIN_PASSWORD,
            "jwt_secret": JWT_SECRET,
            "sandbox_pool": 0,
            "log_level": "warning",
        }
    )
    with daemon_process(home, env=env) as running:
        yield running


def admin_token(url: str) -> str:
    response = httpx.post(
        f"{url}/api/v1/auth/login",
        json={"username": "admin", "password": ADMIN_PASSWORD},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def test_links_join_every_create_to_its_get_and_delete(daemon: Daemon) -> None:
    schema = schemathesis.openapi.from_url(f"{daemon.url}/openapi.json")
    transitions = collect_transitions([result.ok() for result in schema.get_all_operations()])
    links = {
        (source, link.target.label)
        for source, operation in transitions.operations.items()
        for link in operation.outgoing
    }
    assert links >= LINKED


def test_stateful_run_finds_no_failure(daemon: Daemon) -> None:
    # GET /api/v1/events is Server-Sent Events: a request to it only ends at its timeout.
    schema = schemathesis.openapi.from_url(f"{daemon.url}/openapi.json", config=CONFIG).exclude(
        method="GET", path="/api/v1/events"
    )
    headers = bearer(admin_token(daemon.url))
    outcome = run_workflow(
        schema,
        headers=lambda: headers,
        run=RUN,
        suites=SUITES,
        checks_for=_checks_for,
        prepare=_without_follow,
        call_kwargs={"timeout": 30},
        enough=lambda outcome: outcome.sources() >= CREATES,
    )
    assert not outcome.failures, "\n\n".join(outcome.failures.values())
    assert outcome.scenarios >= RUN.max_examples
    # Each create's links were followed: the run did create, then use or delete.
    assert outcome.sources() >= CREATES, sorted(outcome.followed)


def _checks_for(case: schemathesis.Case) -> list[Any]:
    if case.operation.path.startswith(KEPT_AFTER_DELETE):
        return [check for check in STATEFUL_CHECKS if check is not use_after_free]
    return STATEFUL_CHECKS


def _without_follow(case: schemathesis.Case) -> None:
    """``follow=true`` on an environment's logs is an event stream that lasts as long as
    the environment: the fuzzer would wait out its timeout. Ask for the list instead."""
    query = case.query
    if isinstance(query, dict) and str(query.get("follow")).lower() in TRUE:
        query["follow"] = "false"

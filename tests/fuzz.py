"""What the Schemathesis runs share: the checks, Hypothesis's settings, the daemon's, and
the stateful run itself.

The stateless run (tests/api/test_schemathesis.py, in-process) and the stateful one
(tests/system/test_schemathesis_stateful.py, against a daemon process) judge responses
alike and fuzz a daemon set up alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.errors import Flaky
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

UNLIMITED = "1000000/minute"

CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
]

HYPOTHESIS: dict[str, Any] = {
    "deadline": None,
    # No example database: a stored example from an older schema made the stateful phase
    # fail as "inconsistent data generation"; a run depends on the schema alone, as in CI.
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}

# Settings of the fuzzed daemon: no rate limit stops the fuzzer, and no fuzzed command
# (they really run in sandboxes) holds the run for long.
FUZZED_DAEMON: dict[str, Any] = {
    "rate_limit_auth": UNLIMITED,
    "rate_limit_creation": UNLIMITED,
    "rate_limit_exec": UNLIMITED,
    "rate_limit_other": UNLIMITED,
    "rate_limit_token": UNLIMITED,
    "plan_step_timeout": 2,
    "task_timeout": 5,
    "jobs_timeout": 5,
    "jobs_stop_grace": 1,
}


def environment_of(settings: dict[str, Any]) -> dict[str, str]:
    """The ``STOCKADE_*`` variables that give a daemon process these settings."""
    return {f"STOCKADE_{name.upper()}": str(value) for name, value in settings.items()}


@dataclass
class WorkflowRun:
    """What ``run_workflow`` saw: failures by operation and kind (each with
    Schemathesis's report and a curl line), the links followed, and the scenarios run."""

    failures: dict[str, str] = field(default_factory=dict)
    followed: set[str] = field(default_factory=set)
    scenarios: int = 0

    def sources(self) -> set[str]:
        """The operations whose links were followed ("SOURCE -> [status] …" labels)."""
        return {label.split(" -> ")[0] for label in self.followed}


def run_workflow(
    schema: BaseSchema,
    *,
    headers: Callable[[], dict[str, str]],
    run: settings,
    suites: int = 3,
    checks_for: Callable[[schemathesis.Case], list[Any]] = lambda case: CHECKS,
    prepare: Callable[[schemathesis.Case], None] = lambda case: None,
    call_kwargs: dict[str, Any] | None = None,
    enough: Callable[[WorkflowRun], bool] = lambda outcome: True,
) -> WorkflowRun:
    """Schemathesis's state machine over ``schema``: ``run.max_examples`` scenarios (in
    up to ``suites`` suites), each request with ``headers()``, each response judged by
    ``checks_for(case)``; ``prepare`` may change a case before it is sent.

    Failures are collected rather than raised: Hypothesis would replay the scenario to
    shrink it, and a daemon whose state moved on since answers differently, which
    Hypothesis reports as flaky instead of the failure. For the same reason a suite can
    end as ``Flaky`` (a step answered unlike the same step before: a name taken since, a
    task ended); the next suite goes on until enough scenarios ran and ``enough``."""
    outcome = WorkflowRun()

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            outcome.scenarios += 1

        def step(self, input: StepInput) -> StepOutput:
            if input.transition is not None and input.applied_parameters:
                outcome.followed.add(input.transition.id)
            output: StepOutput = super().step(input)
            return output

        def before_call(self, case: schemathesis.Case) -> None:
            prepare(case)

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"headers": headers(), **(call_kwargs or {})}

        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case,
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            # The headers are passed on so that ignored_auth knows the token was ours.
            try:
                case.validate_response(
                    response,
                    checks=checks_for(case),
                    headers=kwargs.get("headers"),
                    transport_kwargs=kwargs,
                    recorder=self.recorder,
                )
            except (Failure, FailureGroup) as error:
                key = f"{case.operation.label}: {type(error).__name__}"
                outcome.failures.setdefault(key, str(error))

    for _ in range(suites):
        with contextlib.suppress(Flaky):
            Workflow.run(settings=run)
        if outcome.scenarios >= (run.max_examples or 0) and enough(outcome):
            break
    return outcome

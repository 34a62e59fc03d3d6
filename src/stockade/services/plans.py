"""Luna's plans (seed 001): steps proposed for a request, then run one by one in a sandbox.

``propose`` turns a request into shell steps with the rule-based planner
(``agent/rules.py``, ``shell=True``) and rates each one with the policy, never with the
planner: ``safe``, ``moderate`` or ``dangerous`` (``policy.luna_risk``). Nothing runs.

``run`` runs the steps the client sends back (Luna's client sends them itself, so a run
does not need a proposed plan) in one fresh sandbox, destroyed at the end:

- one after another, each limited to ``STOCKADE_PLAN_STEP_TIMEOUT`` seconds;
- it stops at the first failure: a non-zero exit, a timeout, or a refusal;
- a step the policy blocks is refused and never runs, ``confirmed`` or not;
- a dangerous step runs only when the caller says a person confirmed the plan
  (``confirmed=True``); moderate and safe steps run (Luna's client asks its user first
  whenever a plan ``requires_confirmation``).

Every step that ran or was refused is one ``plan.step`` row in the audit log, and every
proposal one ``plan.created`` row, so what the daemon proposed and ran outlives it.
Proposals are also kept in memory (bounded, per caller) only to note in the audit whether
a step run is one the daemon proposed.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from stockade.agent.rules import plan as rule_plan
from stockade.errors import Conflict, InvalidInput, Unavailable
from stockade.policy import Command, LunaRisk, Policy, Verdict, classify, luna_risk
from stockade.sandbox.base import ExecResult
from stockade.services.principal import Principal
from stockade.services.sandboxes import EnvironmentRequest, SandboxService
from stockade.settings import Settings
from stockade.store import Store

logger = logging.getLogger("stockade.plans")

# A task id becomes the value of the sandbox's `stockade.plan` label, so it is a label
# value: up to 63 letters, digits, '-', '_' and '.', starting and ending alphanumeric.
TASK_ID_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
PLAN_LABEL = "stockade.plan"
REMEMBERED = 4096  # proposals kept in memory, across callers
MAX_STEPS = 100
ERROR_LIMIT = 64 * 1024  # characters of stderr kept in a result's error

StepStatus = Literal["completed", "failed"]
OverallStatus = Literal["completed", "partial", "failed"]


@dataclass(frozen=True, slots=True)
class ProposedStep:
    """One step of a proposal, rated by the policy."""

    id: int
    description: str
    command: str
    risk: LunaRisk
    blocked: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Proposal:
    task_id: str
    steps: list[ProposedStep]
    requires_confirmation: bool
    estimated_time: str
    message: str | None


@dataclass(frozen=True, slots=True)
class StepToRun:
    """A step as the client sends it back to be run."""

    id: int
    command: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class StepResult:
    step_id: int
    status: StepStatus
    output: str
    error: str | None
    risk: LunaRisk
    exit_code: int | None  # None when the step did not run


@dataclass(frozen=True, slots=True)
class RunResult:
    task_id: str
    results: list[StepResult]
    overall_status: OverallStatus
    sandbox_id: str | None  # None when no step ran


class PlanService:
    def __init__(
        self, settings: Settings, store: Store, sandboxes: SandboxService, policy: Policy
    ) -> None:
        self._settings = settings
        self._store = store
        self._sandboxes = sandboxes
        self.policy = policy
        self._proposals: OrderedDict[tuple[str, str], Proposal] = OrderedDict()

    # Proposals.

    async def propose(
        self, principal: Principal, command: str, context: Mapping[str, Any] | None = None
    ) -> Proposal:
        """The steps for ``command``, each rated by the policy; nothing runs. An empty
        list, with the planner's note as ``message``, when no rule matches."""
        text = command.strip()
        if not text:
            raise InvalidInput('command is required: say what to do, such as "install chrome".')
        try:
            found = rule_plan(text, context or {}, shell=True)  # noqa: S604 - steps as text
        except (TypeError, ValueError) as exc:  # a context value of the wrong kind
            raise InvalidInput(f"The context could not be used for this request: {exc}") from exc
        steps = []
        asks = False
        for number, step in enumerate(found.steps, start=1):
            verdict = self._judge(step.command)
            rated = ProposedStep(
                id=number,
                description=step.description,
                command=step.command,
                risk=luna_risk(verdict),
                blocked=verdict.blocked,
                reason=_reason(verdict),
            )
            steps.append(rated)
            asks = asks or rated.risk != "safe" or verdict.needs_approval
        proposal = Proposal(
            task_id=f"plan-{secrets.token_hex(6)}",
            steps=steps,
            requires_confirmation=asks,
            estimated_time=found.estimated_time,
            message=found.note or None,
        )
        await self._store.audit.append(
            "plan.created",
            actor=principal.user_id,
            target=proposal.task_id,
            detail={
                "request": text,
                "steps": [{"id": s.id, "command": s.command, "risk": s.risk} for s in steps],
                "requires_confirmation": asks,
            },
        )
        self._remember(principal, proposal)
        return proposal

    def proposal(self, principal: Principal, task_id: str) -> Proposal | None:
        """The caller's own proposal ``task_id``, while it is remembered."""
        return self._proposals.get((principal.user_id, task_id))

    def _remember(self, principal: Principal, proposal: Proposal) -> None:
        self._proposals[(principal.user_id, proposal.task_id)] = proposal
        while len(self._proposals) > REMEMBERED:
            self._proposals.popitem(last=False)

    # Runs.

    async def run(
        self,
        principal: Principal,
        task_id: str,
        steps: Sequence[StepToRun],
        *,
        confirmed: bool = False,
    ) -> RunResult:
        """Run ``steps`` in order in one fresh sandbox, stopping at the first failure;
        the sandbox is destroyed before this returns. ``confirmed`` says a person
        confirmed the plan: only then do dangerous steps run. Blocked steps never do."""
        _check(task_id, steps)
        proposal = self.proposal(principal, task_id)
        proposed = {s.id: s.command for s in proposal.steps} if proposal else {}
        results: list[StepResult] = []
        sandbox_id: str | None = None
        try:
            for step in steps:
                verdict = self._judge(step.command)
                risk = luna_risk(verdict)
                audit: dict[str, Any] = {
                    "task_id": task_id,
                    "step_id": step.id,
                    "description": step.description,
                    "command": step.command,
                    "risk": risk,
                    "level": verdict.risk.label,
                    "reason": _reason(verdict),
                    "confirmed": confirmed,
                    "proposed": proposed.get(step.id) == step.command,
                }
                refusal = _refusal(verdict, risk, confirmed)
                if refusal is not None:
                    result = StepResult(step.id, "failed", "", refusal, risk, None)
                    await self._audit(principal, task_id, audit, "refused", None, sandbox_id)
                    results.append(result)
                    break
                if sandbox_id is None:
                    sandbox_id = await self._sandbox(principal, task_id, len(steps))
                result = await self._execute(principal, sandbox_id, step, risk)
                await self._audit(
                    principal, task_id, audit, result.status, result.exit_code, sandbox_id
                )
                results.append(result)
                if result.status == "failed":
                    break
        finally:
            if sandbox_id is not None:
                # Shielded: a caller that went away must not leave the sandbox behind.
                with anyio.CancelScope(shield=True):
                    await self._sandboxes.delete(principal, sandbox_id, force=True)
        return RunResult(task_id, results, _overall(results), sandbox_id)

    def _judge(self, command: str) -> Verdict:
        return classify(Command(command), self.policy)

    async def _sandbox(self, principal: Principal, task_id: str, count: int) -> str:
        """A fresh sandbox for the run. Its lifetime covers every step at its limit, so
        the reaper removes it even if the run itself never gets to."""
        name = task_id if task_id.startswith("plan-") else f"plan-{task_id}"
        record = await self._sandboxes.create(
            principal,
            EnvironmentRequest(
                name=name,
                labels={PLAN_LABEL: task_id},
                timeout=count * self._settings.plan_step_timeout + 60,
            ),
        )
        if record.status != "running":
            raise Unavailable(f"The plan's sandbox did not start: {record.status_reason}")
        return record.id

    async def _execute(
        self, principal: Principal, sandbox_id: str, step: StepToRun, risk: LunaRisk
    ) -> StepResult:
        limit = self._settings.plan_step_timeout
        try:
            done = await self._sandboxes.exec(
                principal, sandbox_id, ["/bin/sh", "-c", step.command], timeout=limit
            )
        except Conflict as exc:  # the sandbox stopped under the command
            return StepResult(step.id, "failed", "", exc.message, risk, None)
        output = done.stdout.decode("utf-8", "replace")
        if done.exit_code == 0 and not done.timed_out:
            return StepResult(step.id, "completed", output, None, risk, 0)
        return StepResult(step.id, "failed", output, _error(done, limit), risk, done.exit_code)

    async def _audit(
        self,
        principal: Principal,
        task_id: str,
        detail: dict[str, Any],
        outcome: str,
        exit_code: int | None,
        sandbox_id: str | None,
    ) -> None:
        detail = detail | {"outcome": outcome, "exit_code": exit_code, "sandbox_id": sandbox_id}
        await self._store.audit.append(
            "plan.step", actor=principal.user_id, target=task_id, detail=detail
        )


def _check(task_id: str, steps: Sequence[StepToRun]) -> None:
    """What a run needs before anything starts."""
    if not re.fullmatch(TASK_ID_PATTERN, task_id):
        raise InvalidInput(
            f"task_id {task_id!r} is not valid: up to 63 letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit (as /api/execute returns them)."
        )
    if len(steps) > MAX_STEPS:
        raise InvalidInput(f"A plan may have at most {MAX_STEPS} steps; this one has {len(steps)}.")
    seen: set[int] = set()
    for step in steps:
        if step.id in seen:
            raise InvalidInput(f"steps: the id {step.id} is used by more than one step.")
        seen.add(step.id)
        if not step.command.strip():
            raise InvalidInput(f"steps: step {step.id} has an empty command.")
        if "\0" in step.command:
            raise InvalidInput(f"steps: the command of step {step.id} contains a NUL byte.")


def _reason(verdict: Verdict) -> str:
    return verdict.summary.removeprefix("blocked: ")


def _refusal(verdict: Verdict, risk: LunaRisk, confirmed: bool) -> str | None:
    """Why the step may not run, or None when it may."""
    if verdict.blocked:
        return f"Blocked by policy: {_reason(verdict)}. This command is never run."
    if risk == "dangerous" and not confirmed:
        return (
            f"This step is dangerous ({_reason(verdict)}); resend the run with "
            '"confirmed": true after a person has confirmed the plan.'
        )
    return None


def _error(done: ExecResult, limit: int) -> str:
    """A failed step's ``error``: its stderr, or what went wrong when it wrote none."""
    stderr = done.stderr.decode("utf-8", "replace")[-ERROR_LIMIT:]
    if done.timed_out:
        note = f"The step ran longer than its limit of {limit} s and was killed."
        return f"{stderr.rstrip()}\n{note}" if stderr.strip() else note
    return stderr if stderr.strip() else f"The command exited with status {done.exit_code}."


def _overall(results: Sequence[StepResult]) -> OverallStatus:
    if all(r.status == "completed" for r in results):
        return "completed"
    return "failed" if results[0].status == "failed" else "partial"

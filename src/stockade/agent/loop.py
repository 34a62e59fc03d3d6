"""Running the agent: a run ends with an answer, or pauses on calls that need a person.

The state that survives a pause is the message history (JSON, kept in the store, never
taken from a client: the arguments that run after an approval come from it) and the
pending calls. A resume is a fresh ``run`` from that history with one answer for every
pending call (AGENT_LOOP.md pitfalls 4 and 6).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic_ai import (
    Agent,
    DeferredToolRequests,
    DeferredToolResults,
    ToolApproved,
    ToolDenied,
    UsageLimitExceeded,
)
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ToolCallPart
from pydantic_ai.models import Model
from pydantic_ai.usage import UsageLimits

from stockade.agent.rules import TOOL_NAMES
from stockade.agent.tools import ToolDeps, toolset
from stockade.errors import InvalidInput

INSTRUCTIONS = """\
You are an agent working inside an isolated Linux sandbox on the user's behalf. Use the
tools to do what the task asks; the working directory is /home/sandbox. A policy you do
not control decides which actions run at once, which wait for a person, and which are
refused; a refusal or a denial comes back as the tool's result. Do not retry a refused
or denied action in another form. When you are done, answer with a short summary of what
you did and what you found."""

MAX_MODEL_REQUESTS = 50


@dataclass(frozen=True)
class PendingCall:
    """A call that waits for a person: the card the tool built is in ``metadata``."""

    tool_call_id: str
    tool: str
    args: dict[str, Any]
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    """A person's answer to one pending call."""

    approved: bool
    reason: str | None = None
    expired: bool = False


@dataclass(frozen=True)
class Segment:
    """How one run ended: ``output`` when it finished, else the ``pending`` calls; and the
    whole history so far, as JSON."""

    history: list[Any]
    output: str | None = None
    pending: tuple[PendingCall, ...] = ()


class AgentRunner:
    """One agent (model, instructions, the seven tools), run for many tasks."""

    def __init__(self, model: Model) -> None:
        self._agent: Agent[ToolDeps, str | DeferredToolRequests] = Agent(
            model,
            output_type=[str, DeferredToolRequests],
            deps_type=ToolDeps,
            toolsets=[toolset()],
            instructions=INSTRUCTIONS,
        )

    async def start(self, prompt: str, deps: ToolDeps) -> Segment:
        result = await self._agent.run(
            prompt, deps=deps, usage_limits=UsageLimits(request_limit=MAX_MODEL_REQUESTS)
        )
        return _segment(result.output, result.all_messages())

    async def resume(
        self, history: list[Any], answers: Mapping[str, Decision], deps: ToolDeps
    ) -> Segment:
        """Carry on from ``history`` with an answer for every pending call."""
        messages = ModelMessagesTypeAdapter.validate_python(history)
        _check_tools(messages)
        results = DeferredToolResults(
            approvals={
                call_id: ToolApproved() if answer.approved else ToolDenied(_denial(answer))
                for call_id, answer in answers.items()
            }
        )
        result = await self._agent.run(
            message_history=messages,
            deferred_tool_results=results,
            deps=deps,
            usage_limits=UsageLimits(request_limit=MAX_MODEL_REQUESTS),
        )
        return _segment(result.output, result.all_messages())


def _segment(output: str | DeferredToolRequests, messages: list[ModelMessage]) -> Segment:
    history = ModelMessagesTypeAdapter.dump_python(messages, mode="json")
    if isinstance(output, DeferredToolRequests):
        if output.calls:
            raise InvalidInput(
                "the agent asked for an external tool, which Stockade does not offer"
            )
        pending = tuple(
            PendingCall(
                call.tool_call_id,
                call.tool_name,
                call.args_as_dict(),
                dict(output.metadata.get(call.tool_call_id) or {}),
            )
            for call in output.approvals
        )
        return Segment(history, pending=pending)
    return Segment(history, output=output)


def _check_tools(messages: list[ModelMessage]) -> None:
    """A stored history may only call the tools this agent has (pitfall 2: a missing tool
    would not fail the resume, it would end the run quietly)."""
    for message in messages:
        for part in getattr(message, "parts", ()):
            if isinstance(part, ToolCallPart) and part.tool_name not in TOOL_NAMES:
                raise InvalidInput(f"the stored history calls an unknown tool {part.tool_name!r}")


def _denial(answer: Decision) -> str:
    if answer.expired:
        return "Nobody answered the approval before it expired, so this action was not run."
    reason = f": {answer.reason}" if answer.reason else ""
    return f"A person denied this action{reason}. It was not run; do not try it another way."


__all__ = ["AgentRunner", "Decision", "PendingCall", "Segment", "UsageLimitExceeded"]

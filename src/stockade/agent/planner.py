"""The rule-based planner as a pydantic-ai ``FunctionModel``: with no language model
configured, this is the model, so the loop, the policy and the approvals are the same
either way.

It is stateless: each turn it re-reads the conversation (the request, and the results of
the calls it already made) and decides the next call, so a task resumed from its stored
history, in a new process, carries on exactly where it stopped.
"""

from __future__ import annotations

from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from stockade.agent.rules import Step, plan, split_prompt

MODEL_NAME = "stockade-rules"


def rules_model() -> FunctionModel:
    """The planner, ready to hand to an ``Agent``."""
    return FunctionModel(_turn, model_name=MODEL_NAME)


def _turn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    request = _request(messages)
    description, metadata = split_prompt(request)
    planned = plan(description, metadata)
    queue: list[Step] = list(planned.steps)
    results = _results(messages)
    for index, result in enumerate(results):
        if index < len(queue) and queue[index].then is not None:
            follow = queue[index].then
            assert follow is not None
            stdout = _succeeded(result)
            queue[index + 1 : index + 1] = follow(stdout) if stdout is not None else []
    if len(results) < len(queue):
        step = queue[len(results)]
        call = ToolCallPart(step.tool, dict(step.args), tool_call_id=f"step-{len(results) + 1}")
        return ModelResponse(parts=[call], model_name=MODEL_NAME)
    return ModelResponse(
        parts=[TextPart(_summary(planned.note, queue, results))], model_name=MODEL_NAME
    )


def _request(messages: list[ModelMessage]) -> str:
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    return ""


def _results(messages: list[ModelMessage]) -> list[Any]:
    """What each of the planner's calls returned, in order (a retry prompt counts as a
    failed result)."""
    found: list[Any] = []
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, ToolReturnPart):
                    found.append(part.content)
                elif isinstance(part, RetryPromptPart) and part.tool_name:
                    found.append({"error": str(part.content)})
    return found


def _succeeded(result: Any) -> str | None:
    """A command's stdout when it ran and exited 0, else None."""
    if isinstance(result, dict) and result.get("exit_code") == 0:
        return str(result.get("stdout", ""))
    return None


def _summary(note: str, steps: list[Step], results: list[Any]) -> str:
    if not steps:
        return note or "Nothing to do."
    lines = [f"Ran {len(steps)} step{'s' if len(steps) != 1 else ''}:"]
    for step, result in zip(steps, results, strict=False):
        lines.append(f"- {step.description}: {_outcome(result)}")
    if note:
        lines.append(note)
    return "\n".join(lines)


def _outcome(result: Any) -> str:
    if isinstance(result, dict):
        if "refused" in result:
            return f"refused ({result['refused']})"
        if "error" in result:
            return f"failed ({result['error']})"
        if "exit_code" in result:
            code = result["exit_code"]
            out = str(result.get("stdout", "")).strip()
            shown = out if len(out) <= 200 else out[:200] + "…"
            status = "done" if code == 0 else f"exit code {code}"
            indented = "".join(f"\n    {line}" for line in shown.splitlines())
            return status + indented
        if "status" in result:
            return str(result.get("summary") or result["status"])
    text = str(result).strip()
    return text if len(text) <= 200 else text[:200] + "…"

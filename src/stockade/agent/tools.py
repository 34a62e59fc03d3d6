"""The agent's tools. Every call is judged by the policy before anything happens:

- **blocked**: refused; the refusal goes back to the model as the tool's result, and no
  approval is ever offered;
- **below the threshold**: it runs in the task's sandbox;
- **at or above it**: the call pauses the run (``ApprovalRequired``), carrying the diff
  card and a hash of the exact call. When the run resumes with the call approved, the
  hash is computed again from the arguments that are about to run and must equal the one
  the person approved; otherwise nothing runs.

With ``require_approval`` off, calls at or above the threshold run without a person, and
the step records that they did. Blocked calls never run.

The model's words never reach the policy: risk comes from ``classify`` on the action the
call would perform.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import posixpath
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic_ai import ApprovalRequired, FunctionToolset, RunContext

from stockade.errors import InvalidInput, NotFound, PayloadTooLarge
from stockade.policy import (
    Action,
    Command,
    FileCreate,
    FileDelete,
    FileEdit,
    NetworkCall,
    Policy,
    Verdict,
    classify,
)
from stockade.sandbox.base import ExecResult, FileEntry, IsADirectory

HOME = "/home/sandbox"
OUTPUT_LIMIT = 16 * 1024
READ_LIMIT = 256 * 1024
DEFAULT_COMMAND_TIMEOUT = 120


class Workspace(Protocol):
    """The task's sandbox, as the tools use it."""

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        timeout: float,  # noqa: ASYNC109 - the command's limit, not this call's
    ) -> ExecResult: ...

    async def read(self, path: str, *, limit: int) -> bytes: ...

    async def write(self, path: str, data: bytes) -> None: ...

    async def listing(self, path: str) -> list[FileEntry]: ...


@dataclass(frozen=True)
class StepRecord:
    """One action the agent took or tried, as the task's ``steps`` show it."""

    tool: str
    action_type: str
    risk: str
    decision: str  # auto | approved | not_required | blocked | binding_refused
    outcome: str  # completed | failed | refused
    description: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolDeps:
    """What a run's tools work with."""

    workspace: Workspace
    policy: Policy
    require_approval: bool
    record: Callable[[StepRecord], Awaitable[None]]
    # The approved calls of this resume: tool call id -> the action hash that was shown.
    approved: Mapping[str, str] = field(default_factory=dict)
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    # Called just before an action runs (the benchmark and the events use it).
    on_run: Callable[[str, str], None] | None = None


def action_hash(tool: str, args: Mapping[str, Any]) -> str:
    """The hash an approval is bound to: the tool and its exact arguments."""
    canonical = json.dumps({"tool": tool, "args": dict(args)}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def resolve(path: str) -> str:
    """A tool's path inside the sandbox: relative paths are under the home directory."""
    if not path or "\0" in path:
        raise InvalidInput("a path must be a non-empty string without NUL bytes")
    full = path if path.startswith("/") else posixpath.join(HOME, path)
    if path.startswith("~"):
        full = HOME + path[1:]
    return posixpath.normpath(full)


# The tools, as the model sees them (their docstrings are the descriptions it reads).


async def run_command(
    ctx: RunContext[ToolDeps], command: str, timeout_seconds: int = DEFAULT_COMMAND_TIMEOUT
) -> dict[str, Any]:
    """Run a shell command in the task's sandbox (its working directory is the home
    directory, /home/sandbox). Returns exit_code, stdout and stderr."""
    args = {"command": command, "timeout_seconds": timeout_seconds}
    action = Command(command)

    async def execute() -> dict[str, Any]:
        limit = max(1.0, min(float(timeout_seconds), ctx.deps.command_timeout))
        result = await ctx.deps.workspace.run(["/bin/sh", "-c", command], timeout=limit)
        return _exec_result(result)

    async def card(c: RunContext[ToolDeps]) -> tuple[str, list[dict[str, Any]]]:
        return await _command_card(c.deps.workspace, command)

    return await _guarded(ctx, "run_command", args, action, execute, card)


async def read_file(ctx: RunContext[ToolDeps], path: str) -> dict[str, Any]:
    """Read a text file in the sandbox (relative paths are under /home/sandbox)."""
    full = resolve(path)

    async def execute() -> dict[str, Any]:
        data = await ctx.deps.workspace.read(full, limit=READ_LIMIT)
        return {"path": full, "content": data.decode("utf-8", "replace"), "size_bytes": len(data)}

    # Reading is judged as the command that would do the same.
    return await _guarded(
        ctx, "read_file", {"path": path}, Command(["cat", "--", full]), execute, None
    )


async def list_files(ctx: RunContext[ToolDeps], path: str = ".") -> dict[str, Any]:
    """List a directory in the sandbox: each entry's name, type and size."""
    full = resolve(path)

    async def execute() -> dict[str, Any]:
        entries = await ctx.deps.workspace.listing(full)
        shown = [
            {
                "name": posixpath.basename(e.path),
                "type": "directory" if e.is_dir else "file",
                "size_bytes": e.size,
            }
            for e in entries
        ]
        return {"path": full, "entries": shown}

    return await _guarded(
        ctx, "list_files", {"path": path}, Command(["ls", "-la", "--", full]), execute, None
    )


async def write_file(ctx: RunContext[ToolDeps], path: str, content: str) -> dict[str, Any]:
    """Create a file, or replace a file's whole content, in the sandbox."""
    full = resolve(path)
    old = await _existing(ctx.deps.workspace, full)
    data = content.encode()
    action: Action = FileCreate(full, content) if old is None else FileEdit(full, content)

    async def execute() -> dict[str, Any]:
        await ctx.deps.workspace.write(full, data)
        return {"path": full, "size_bytes": len(data), "created": old is None}

    async def card(_: RunContext[ToolDeps]) -> tuple[str, list[dict[str, Any]]]:
        kind = "FileCreate" if old is None else "FileEdit"
        verb = "Create" if old is None else "Replace"
        change = {"type": kind, "path": full, "size_bytes": len(data)}
        change["diff"] = _diff(full, old, content)
        return f"{verb} {full} ({_size(len(data))})", [change]

    args = {"path": path, "content": content}
    return await _guarded(ctx, "write_file", args, action, execute, card)


async def edit_file(ctx: RunContext[ToolDeps], path: str, old: str, new: str) -> dict[str, Any]:
    """Edit a text file in the sandbox: replace the first occurrence of ``old`` with
    ``new`` (an empty ``old`` appends ``new`` at the end)."""
    full = resolve(path)
    before = await _existing(ctx.deps.workspace, full)
    if before is None:
        return {"error": f"{full} does not exist; use write_file to create it"}
    if old and old not in before:
        return {"error": f"the text to replace was not found in {full}"}
    after = before + new if not old else before.replace(old, new, 1)
    data = after.encode()

    async def execute() -> dict[str, Any]:
        await ctx.deps.workspace.write(full, data)
        return {"path": full, "size_bytes": len(data)}

    async def card(_: RunContext[ToolDeps]) -> tuple[str, list[dict[str, Any]]]:
        change = {"type": "FileEdit", "path": full, "size_bytes": len(data)}
        change["diff"] = _diff(full, before, after)
        return f"Edit {full} ({_size(len(data))})", [change]

    args = {"path": path, "old": old, "new": new}
    return await _guarded(ctx, "edit_file", args, FileEdit(full, after), execute, card)


async def delete_file(ctx: RunContext[ToolDeps], path: str) -> dict[str, Any]:
    """Delete a file (or a directory and everything in it) in the sandbox."""
    full = resolve(path)

    async def execute() -> dict[str, Any]:
        result = await ctx.deps.workspace.run(["rm", "-rf", "--", full], timeout=60)
        return _exec_result(result) | {"path": full}

    async def card(c: RunContext[ToolDeps]) -> tuple[str, list[dict[str, Any]]]:
        sizes = await _sizes(c.deps.workspace, [full])
        size = sizes.get(full)
        change = {"type": "FileDelete", "path": full, "size_bytes": size}
        shown = posixpath.basename(full) or full
        return f"Delete {shown}" + (f" ({_size(size)})" if size is not None else ""), [change]

    return await _guarded(ctx, "delete_file", {"path": path}, FileDelete(full), execute, card)


async def http_request(
    ctx: RunContext[ToolDeps],
    method: str,
    url: str,
    body: str | None = None,
    save_to: str | None = None,
) -> dict[str, Any]:
    """Send an HTTP request from the sandbox (with curl). The response body is returned,
    or saved to ``save_to`` in the sandbox. Sandboxes have no network unless the daemon
    allows it, so this fails there with curl's error."""
    verb = method.strip().upper() or "GET"
    args: dict[str, Any] = {"method": method, "url": url, "body": body, "save_to": save_to}
    argv = ["curl", "-sS", "-L", "--max-time", "60", "-X", verb]
    if body is not None:
        argv += ["--data-binary", "@-"]
    if save_to:
        argv += ["-o", resolve(save_to)]
    argv += ["--", url]

    async def execute() -> dict[str, Any]:
        stdin = body.encode() if body is not None else None
        result = await ctx.deps.workspace.run(argv, stdin=stdin, timeout=90)
        return _exec_result(result)

    async def card(_: RunContext[ToolDeps]) -> tuple[str, list[dict[str, Any]]]:
        change: dict[str, Any] = {
            "type": "NetworkCall",
            "path": url,
            "method": verb,
            "size_bytes": len(body.encode()) if body is not None else 0,
            "command": shlex.join(argv),
        }
        if save_to:
            change["save_to"] = resolve(save_to)
        return f"{verb} {url}", [change]

    return await _guarded(ctx, "http_request", args, NetworkCall(verb, url), execute, card)


def toolset() -> FunctionToolset[ToolDeps]:
    """The agent's seven tools. Their names are stable: a stored history refers to them."""
    return FunctionToolset(
        [run_command, read_file, list_files, write_file, edit_file, delete_file, http_request]
    )


# The gate.

Card = Callable[[RunContext[ToolDeps]], Awaitable[tuple[str, list[dict[str, Any]]]]]


async def _guarded(
    ctx: RunContext[ToolDeps],
    tool: str,
    args: Mapping[str, Any],
    action: Action,
    execute: Callable[[], Awaitable[dict[str, Any]]],
    card: Card | None,
) -> dict[str, Any]:
    deps = ctx.deps
    verdict = classify(action, deps.policy)
    digest = action_hash(tool, args)
    base = {"tool_call_id": ctx.tool_call_id, "args": dict(args), "reasons": list(verdict.reasons)}
    describe = _describe(tool, args)
    if verdict.blocked:
        reason = f"Blocked by policy: {verdict.summary}. This action is never allowed."
        await deps.record(_record(tool, verdict, "blocked", "refused", describe, base))
        return {"refused": reason}
    decision = "auto"
    if verdict.needs_approval:
        if ctx.tool_call_approved:
            bound = deps.approved.get(ctx.tool_call_id or "")
            if bound != digest:
                reason = (
                    "Refused: this call is not the action that was approved "
                    "(its arguments changed), so it was not run."
                )
                detail = base | {"approved_hash": bound, "hash": digest}
                await deps.record(
                    _record(tool, verdict, "binding_refused", "refused", describe, detail)
                )
                return {"refused": reason}
            decision = "approved"
        elif deps.require_approval:
            description, changes = await card(ctx) if card is not None else (describe, [])
            raise ApprovalRequired(
                metadata={
                    "requested_at": _now_iso(),
                    "hash": digest,
                    "tool": tool,
                    "action_type": verdict.action_type.value,
                    "risk_level": verdict.risk.label,
                    "description": description,
                    "changes": changes,
                    "reasons": list(verdict.reasons),
                }
            )
        else:
            decision = "not_required"
    if deps.on_run is not None:
        deps.on_run(tool, ctx.tool_call_id or "")
    started = _now_iso()
    try:
        result = await execute()
    except (NotFound, IsADirectory, PayloadTooLarge, InvalidInput) as exc:
        result = {"error": exc.message}
    failed = "error" in result or result.get("exit_code", 0) != 0
    detail = base | {"started_at": started} | _excerpt(result)
    await deps.record(
        _record(tool, verdict, decision, "failed" if failed else "completed", describe, detail)
    )
    return result


def _record(
    tool: str,
    verdict: Verdict,
    decision: str,
    outcome: str,
    description: str,
    detail: dict[str, Any],
) -> StepRecord:
    return StepRecord(
        tool, verdict.action_type.value, verdict.risk.label, decision, outcome, description, detail
    )


def _describe(tool: str, args: Mapping[str, Any]) -> str:
    match tool:
        case "run_command":
            return f"Run: {args['command']}"
        case "http_request":
            return f"{str(args.get('method', 'GET')).upper()} {args.get('url')}"
    verb = {
        "read_file": "Read",
        "list_files": "List",
        "write_file": "Write",
        "edit_file": "Edit",
        "delete_file": "Delete",
    }.get(tool, tool)
    return f"{verb} {args.get('path', '')}".strip()


async def _command_card(workspace: Workspace, command: str) -> tuple[str, list[dict[str, Any]]]:
    """A command's card: the full command, plus each file an ``rm`` would delete, with
    its size (read in the sandbox; reading is harmless)."""
    changes: list[dict[str, Any]] = [
        {
            "type": "CommandExec",
            "path": HOME,
            "size_bytes": len(command.encode()),
            "command": command,
        }
    ]
    targets = _rm_targets(command)
    if targets:
        sizes = await _sizes(workspace, targets)
        for target in targets:
            changes.append({"type": "FileDelete", "path": target, "size_bytes": sizes.get(target)})
        total = sum(s for s in sizes.values() if s is not None)
        count = len(targets)
        noun = "file" if count == 1 else "files"
        return f"Run `{command}`: deletes {count} {noun} ({_size(total)})", changes
    return f"Run `{command}`", changes


def _rm_targets(command: str) -> list[str]:
    """The paths a plain ``rm`` command names (no shell syntax around it), resolved."""
    try:
        words = shlex.split(command)
    except ValueError:
        return []
    if not words or posixpath.basename(words[0]) != "rm":
        return []
    if any(w in {";", "&&", "||", "|", "&"} or w.startswith(("$", "`")) for w in words):
        return []
    paths: list[str] = []
    options = True
    for word in words[1:]:
        if options and word == "--":
            options = False
        elif options and word.startswith("-") and word != "-":
            continue
        else:
            paths.append(resolve(word))
    return paths


async def _sizes(workspace: Workspace, paths: Sequence[str]) -> dict[str, int | None]:
    """Each path's size in bytes (directories: their total), or None when it is missing."""
    if not paths:
        return {}
    result = await workspace.run(["du", "-sb", "--", *paths], timeout=10)
    sizes: dict[str, int | None] = dict.fromkeys(paths)
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        size, _, name = line.partition("\t")
        if name in sizes and size.isdigit():
            sizes[name] = int(size)
    return sizes


async def _existing(workspace: Workspace, path: str) -> str | None:
    try:
        return (await workspace.read(path, limit=READ_LIMIT)).decode("utf-8", "replace")
    except NotFound:
        return None
    except IsADirectory as exc:
        raise InvalidInput(f"{path} is a directory") from exc


def _diff(path: str, before: str | None, after: str) -> str:
    lines = difflib.unified_diff(
        (before or "").splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile="/dev/null" if before is None else f"a{path}",
        tofile=f"b{path}",
    )
    return "".join(lines)


def _exec_result(result: ExecResult) -> dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "stdout": _clip(result.stdout),
        "stderr": _clip(result.stderr),
        "timed_out": result.timed_out,
    }


def _clip(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    if len(text) > OUTPUT_LIMIT:
        return text[:OUTPUT_LIMIT] + f"\n[… {len(text) - OUTPUT_LIMIT} more characters]"
    return text


def _excerpt(result: Mapping[str, Any]) -> dict[str, Any]:
    """What a step keeps of a tool's result."""
    kept: dict[str, Any] = {}
    for key in ("exit_code", "timed_out", "error", "path", "size_bytes"):
        if key in result:
            kept[key] = result[key]
    for key in ("stdout", "stderr", "content"):
        value = result.get(key)
        if value:
            kept[key] = value if len(value) <= 2000 else value[:2000] + "…"
    return kept


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"

"""``classify``: the one function every tool call passes through before it runs.

Commands are judged by ``commands.py``. The agent's own tools are judged here:

=============  =================================================================
FileCreate     medium; high under a system path; blocked onto a disk device
FileEdit       medium; high under a system path; blocked onto a disk device
FileDelete     high; blocked for a protected root (``/``, ``/etc``, ``~``…)
NetworkCall    medium for GET/HEAD/OPTIONS; high for any other method, a non-HTTP
               URL, or the cloud metadata service
Unknown        high: a tool the policy knows nothing about waits for a person
=============  =================================================================

Creating a file is medium rather than low because seed 001 rates file writes "moderate" and
seed 000 counts editing as a red action; the task's workspace is where files are created.
"""

from __future__ import annotations

from typing import assert_never
from urllib.parse import urlsplit

from stockade.policy.actions import (
    Action,
    Command,
    FileCreate,
    FileDelete,
    FileEdit,
    NetworkCall,
    UnknownAction,
)
from stockade.policy.commands import judge_argv, judge_text
from stockade.policy.config import DEFAULT_POLICY, Policy
from stockade.policy.network import READ_METHODS
from stockade.policy.paths import describe_root, is_system_path, protected_root, write_findings
from stockade.policy.risk import ActionType, Finding, Risk, Verdict

_METADATA_HOSTS = frozenset(
    {"169.254.169.254", "metadata.google.internal", "100.100.100.200", "fd00:ec2::254"}
)


def classify(action: Action, policy: Policy = DEFAULT_POLICY) -> Verdict:
    """Judge ``action`` under ``policy``: its risk, type, whether it is blocked, why, and
    whether a person must approve it. Nothing the caller says about risk is consulted."""
    action_type, findings = _judge(action, policy)
    return Verdict.of(action_type, findings, policy.threshold)


# DESIGN §4 calls the check before every tool call ``policy.gate(action)``; it is classify.
gate = classify


def _judge(action: Action, policy: Policy) -> tuple[ActionType, list[Finding]]:
    roots = policy.protected_paths
    match action:
        case Command(command=str() as text):
            return ActionType.COMMAND_EXEC, judge_text(text, policy)
        case Command(command=argv):
            return ActionType.COMMAND_EXEC, judge_argv(argv, policy)
        case FileCreate(path=path):
            found = write_findings(path, verb="creates", extra=roots)
            return ActionType.FILE_CREATE, found or [Finding(Risk.LOW, f"creates {path}")]
        case FileEdit(path=path):
            found = write_findings(path, verb="edits", extra=roots)
            return ActionType.FILE_EDIT, found or [Finding(Risk.LOW, f"edits {path}")]
        case FileDelete(path=path):
            return ActionType.FILE_DELETE, _delete(path, roots)
        case NetworkCall(method=method, url=url):
            return ActionType.NETWORK_CALL, _network(method, url)
        case UnknownAction(tool=tool):
            reason = f"unknown action {tool}: the policy has no rules for it"
            return ActionType.UNKNOWN, [Finding(Risk.HIGH, reason)]
        case _:
            assert_never(action)


def _delete(path: str, roots: frozenset[str]) -> list[Finding]:
    root = protected_root(path, roots)
    if root is not None:
        return [Finding.block(f"deleting {path} destroys {describe_root(root)}")]
    if is_system_path(path, roots):
        return [Finding(Risk.HIGH, f"deletes {path}, a system path")]
    return [Finding(Risk.HIGH, f"deletes {path}")]


def _network(method: str, url: str) -> list[Finding]:
    verb = method.strip().upper()
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return [Finding(Risk.HIGH, f"{url!r} is not a valid URL")]
    if parts.scheme not in ("http", "https") or not host:
        return [Finding(Risk.HIGH, f"{url!r} is not an http(s) URL")]
    if host in _METADATA_HOSTS:
        return [Finding(Risk.HIGH, f"{url} is the cloud metadata service, which holds secrets")]
    if verb in READ_METHODS:
        return [Finding(Risk.MEDIUM, f"{verb} {url} reads from the network")]
    return [Finding(Risk.HIGH, f"{verb} {url} sends data over the network")]

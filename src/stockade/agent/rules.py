"""The rule-based planner: what stands in for a language model when none is configured.

It turns common requests into steps, each a call of one of the agent's tools, so the
loop, the policy and the approvals are exercised exactly as with a real model. Risk is
not its business: the policy rates every step when it runs.

``plan(request)`` gives the steps for the agent (``shell=False``), where a step may
derive the next ones from its own output ("find the old logs, then delete those"), or
for Luna's plans (``shell=True``), where every step is one shell command shown to a
person before anything runs.

What it understands (case does not matter)::

    delete old logs [older than N days]      find them, then delete them (one command)
    install chrome | install <package>       check apt, install, verify
    download and analyze the latest invoice  fetch a URL from the request or metadata,
                                             or find an invoice file; then read it
    list files [in <dir>]                    list_files
    find files named <pattern>               find
    disk usage | disk space                  df and du
    read|show|cat [the file] <path>          read_file
    create [a] file <path> with [content] <text>   write_file
    append <text> to <path>                  edit_file
    replace <old> with <new> in <path>       edit_file
    delete|remove [the file] <path>          delete_file
    download <url> [to <path>]               http_request
    run <command> | `command` | $ command    run_command
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TOOL_NAMES = (
    "run_command",
    "read_file",
    "list_files",
    "write_file",
    "edit_file",
    "delete_file",
    "http_request",
)

METADATA_MARKER = "Task metadata (JSON): "
_URL = re.compile(r"https?://[^\s'\"<>]+")


@dataclass(frozen=True)
class Step:
    """One tool call: what it is for, the tool, its arguments, and the same step as one
    shell command (what a Luna plan shows). ``then`` turns this step's output into the
    steps that follow it (the agent's plans only)."""

    description: str
    tool: str
    args: Mapping[str, Any]
    then: Callable[[str], list[Step]] | None = field(default=None, compare=False)

    @property
    def command(self) -> str:
        return as_command(self.tool, self.args)


@dataclass(frozen=True)
class Plan:
    steps: list[Step]
    estimated_time: str
    # The final answer when there is nothing to run, or a note for the summary.
    note: str = ""


def prompt_for(description: str, metadata: Mapping[str, Any] | None) -> str:
    """The user prompt a task's model receives: the description, then its metadata."""
    if not metadata:
        return description
    return f"{description}\n\n{METADATA_MARKER}{json.dumps(dict(metadata), sort_keys=True)}"


def split_prompt(prompt: str) -> tuple[str, dict[str, Any]]:
    """The description and metadata back out of ``prompt_for``'s text."""
    head, marker, tail = prompt.rpartition("\n\n" + METADATA_MARKER)
    if not marker:
        return prompt, {}
    try:
        metadata = json.loads(tail)
    except ValueError:
        return prompt, {}
    return head, metadata if isinstance(metadata, dict) else {}


def plan(request: str, metadata: Mapping[str, Any] | None = None, *, shell: bool = False) -> Plan:
    """The steps for ``request``; an empty plan with a note when no rule matches."""
    text = " ".join(request.split())
    lowered = text.lower().rstrip(".!")
    meta = dict(metadata or {})
    for rule in _RULES:
        found = rule(text, lowered, meta, shell)
        if found is not None:
            return found
    return Plan(
        [],
        "a few seconds",
        "No language model is configured (set STOCKADE_LLM_MODEL), and the rule-based "
        f"planner has no rule for {text!r}. It understands requests such as: delete old "
        "logs; install <package>; list files; find files named <pattern>; disk usage; "
        "read <file>; create file <path> with content <text>; delete <file>; "
        "download <url>; run <command>.",
    )


def as_command(tool: str, args: Mapping[str, Any]) -> str:
    """A tool call written as the one shell command that does the same."""
    path = shlex.quote(str(args.get("path", ".")))
    match tool:
        case "run_command":
            return str(args["command"])
        case "read_file":
            return f"cat -- {path}"
        case "list_files":
            return f"ls -la -- {path}"
        case "write_file":
            return f"printf '%s' {shlex.quote(str(args.get('content', '')))} > {path}"
        case "edit_file":
            old, new = str(args.get("old", "")), str(args.get("new", ""))
            if not old:
                return f"printf '%s' {shlex.quote(new)} >> {path}"
            script = f"s/{_sed_escape(old)}/{_sed_escape(new)}/"
            return f"sed -i {shlex.quote(script)} {path}"
        case "delete_file":
            return f"rm -f -- {path}"
        case "http_request":
            method = str(args.get("method", "GET")).upper()
            return f"curl -sS -X {method} {shlex.quote(str(args['url']))}"
    return f"# {tool} {json.dumps(dict(args), sort_keys=True)}"


def _sed_escape(text: str) -> str:
    return re.sub(r"([/\\&.*\[\]^$])", r"\\\1", text)


# The rules. Each returns a Plan when it recognises the request, else None.
Rule = Callable[[str, str, dict[str, Any], bool], "Plan | None"]


def _old_logs(text: str, lowered: str, meta: dict[str, Any], shell: bool) -> Plan | None:
    found = re.search(
        r"\b(delete|remove|clean(?: up)?|purge|prune)\b.*\bold\b.*\blogs?\b"
        r"(?:.*?\bolder than (\d+) days?\b)?",
        lowered,
    )
    if not found:
        return None
    days = int(found.group(2) or meta.get("days", 7) or 7)
    where = str(meta.get("path", "."))
    selector = f"find {shlex.quote(where)} -type f -name '*.log*' -mtime +{days}"
    listing = Step(
        f"find log files older than {days} days",
        "run_command",
        {"command": f"{selector} -print"},
    )
    if shell:
        delete = Step(
            f"delete log files older than {days} days",
            "run_command",
            {"command": f"{selector} -delete"},
        )
        return Plan([listing, delete], "a few seconds")

    def delete_found(output: str) -> list[Step]:
        paths = [line for line in output.splitlines() if line.strip()]
        if not paths:
            return []
        words = " ".join(shlex.quote(p) for p in paths)
        return [
            Step(
                f"delete {len(paths)} old log file{'s' if len(paths) != 1 else ''}",
                "run_command",
                {"command": f"rm -f -- {words}"},
            ),
            Step("check that none are left", "run_command", {"command": f"{selector} -print"}),
        ]

    return Plan([_then(listing, delete_found)], "a few seconds")


_PACKAGE_NAMES = {
    "chrome": "chromium",
    "google chrome": "chromium",
    "google-chrome": "chromium",
    "chromium": "chromium",
    "node": "nodejs",
    "node.js": "nodejs",
    "nodejs": "nodejs",
    "docker": "docker.io",
    "python": "python3",
    "pip": "python3-pip",
}


def _install(text: str, lowered: str, meta: dict[str, Any], shell: bool) -> Plan | None:
    pip = re.match(r"(?:pip install|install (\S+) with pip)\s*(\S*)", lowered)
    if pip:
        package = pip.group(1) or pip.group(2)
        if package:
            return Plan(
                [
                    Step(
                        "check that pip is available", "run_command", {"command": "pip --version"}
                    ),
                    Step(
                        f"install {package} with pip",
                        "run_command",
                        {"command": f"pip install --user {shlex.quote(package)}"},
                    ),
                ],
                "1-2 minutes",
            )
    found = re.match(r"(?:please )?(?:install|set up|setup) (?:the )?(.+?)(?: package)?$", lowered)
    if not found:
        return None
    wanted = found.group(1).strip()
    package = _PACKAGE_NAMES.get(wanted, wanted.replace(" ", "-"))
    if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]*", package):
        return None
    binary = "chromium" if package == "chromium" else package.split(".")[0]
    return Plan(
        [
            Step("check that apt is available", "run_command", {"command": "which apt-get"}),
            Step(
                f"install {wanted}",
                "run_command",
                {"command": f"apt-get install -y {package}"},
            ),
            Step("verify the installation", "run_command", {"command": f"which {binary}"}),
        ],
        "2-3 minutes",
    )


def _invoice(text: str, lowered: str, meta: dict[str, Any], shell: bool) -> Plan | None:
    if not re.search(r"\b(download|fetch|get)\b.*\binvoice", lowered):
        return None
    url = _url_in(text, meta)
    if url is not None:
        name = str(meta.get("save_as") or "invoice")
        download = Step(
            f"download the invoice from {url}",
            "http_request",
            {"method": "GET", "url": url, "save_to": name},
        )
        analyse = Step("analyze the invoice", "run_command", {"command": _analysis(name)})
        return Plan([download, analyse], "under a minute")
    listing = Step(
        "find the latest invoice in the workspace",
        "run_command",
        {"command": "ls -1t -- *invoice* */*invoice* 2>/dev/null | head -n 1"},
    )
    if shell:
        return Plan(
            [
                listing,
                Step(
                    "analyze it",
                    "run_command",
                    {"command": _analysis("$(ls -1t -- *invoice* | head -n 1)")},
                ),
            ],
            "a few seconds",
        )

    def read_latest(output: str) -> list[Step]:
        first = next((line.strip() for line in output.splitlines() if line.strip()), "")
        if not first:
            return []
        return [Step(f"analyze {first}", "run_command", {"command": _analysis(first)})]

    note = "No URL to download from was given (put one in the description or metadata.url)."
    return Plan([_then(listing, read_latest)], "a few seconds", note)


def _analysis(path: str) -> str:
    quoted = path if path.startswith("$(") else shlex.quote(path)
    return f"wc -c -l -- {quoted} && file -- {quoted} && head -c 2000 -- {quoted}"


def _disk_usage(text: str, lowered: str, meta: dict[str, Any], shell: bool) -> Plan | None:
    if not re.search(r"\bdisk (usage|space)\b|\bhow much (disk )?space\b|\bfree space\b", lowered):
        return None
    return Plan(
        [
            Step("show free space", "run_command", {"command": "df -h ."}),
            Step("show what the workspace uses", "run_command", {"command": "du -sh ."}),
        ],
        "a few seconds",
    )


def _list(text: str, lowered: str, meta: dict[str, Any], shell: bool) -> Plan | None:
    found = re.match(
        r"(?:list|show|ls)(?: (?:all|the|my))*(?: files| directory| folder| contents)"
        r"(?: (?:in|of|under) (\S+))?$|ls(?: (\S+))?$",
        lowered,
    )
    if not found:
        return None
    path = _original(text, found.group(1) or found.group(2)) or "."
    return Plan([Step(f"list the files in {path}", "list_files", {"path": path})], "a few seconds")


def _find(text: str, lowered: str, meta: dict[str, Any], shell: bool) -> Plan | None:
    found = re.match(
        r"(?:find|search for|look for)(?: all| the)?(?: files?)?(?: (?:named|called|matching))?"
        r" (\S+)(?: (?:in|under) (\S+))?$",
        lowered,
    )
    if not found:
        return None
    pattern = _original(text, found.group(1)) or "*"
    where = _original(text, found.group(2)) or "."
    if "*" not in pattern and "?" not in pattern and "." not in pattern:
        pattern = f"*{pattern}*"
    command = f"find {shlex.quote(where)} -name {shlex.quote(pattern)}"
    return Plan(
        [Step(f"find files named {pattern}", "run_command", {"command": command})], "a few seconds"
    )


def _create(text: str, lowered: str, meta: dict[str, Any], shell: bool) -> Plan | None:
    found = re.match(
        r"(?:create|write|make)(?: a| the| new)*(?: text)? file (?:named |called )?(\S+)"
        r"(?: (?:with|containing)(?: (?:the )?(?:content|text))?:? (.*))?$",
        text,
        re.IGNORECASE,
    )
    if not found:
        return None
    path = found.group(1)
    content = _unquote(found.group(2) or "")
    if content and not content.endswith("\n"):
        content += "\n"
    return Plan(
        [Step(f"create {path}", "write_file", {"path": path, "content": content})],
        "a few seconds",
    )


def _append(text: str, lowered: str, meta: dict[str, Any], shell: bool) -> Plan | None:
    found = re.match(r"append (.+) to (\S+)$", text, re.IGNORECASE)
    if found:
        line = _unquote(found.group(1)) + "\n"
        path = found.group(2)
        return Plan(
            [Step(f"append to {path}", "edit_file", {"path": path, "old": "", "new": line})],
            "a few seconds",
        )
    found = re.match(r"replace (.+) with (.+) in (\S+)$", text, re.IGNORECASE)
    if found:
        old, new, path = _unquote(found.group(1)), _unquote(found.group(2)), found.group(3)
        return Plan(
            [Step(f"edit {path}", "edit_file", {"path": path, "old": old, "new": new})],
            "a few seconds",
        )
    return None


def _read(text: str, lowered: str, meta: dict[str, Any], shell: bool) -> Plan | None:
    found = re.match(
        r"(?:read|show|cat|print|display|open)(?: me)?(?: the)?(?: contents of)?(?: the)?"
        r"(?: file)? (\S+)$",
        text,
        re.IGNORECASE,
    )
    if not found or found.group(1).lower() in {"files", "file", "directory", "logs"}:
        return None
    path = found.group(1)
    return Plan([Step(f"read {path}", "read_file", {"path": path})], "a few seconds")


def _delete(text: str, lowered: str, meta: dict[str, Any], shell: bool) -> Plan | None:
    found = re.match(r"(?:delete|remove)(?: the)?(?: file)? (\S+)$", text, re.IGNORECASE)
    if not found:
        return None
    path = found.group(1)
    return Plan([Step(f"delete {path}", "delete_file", {"path": path})], "a few seconds")


def _download(text: str, lowered: str, meta: dict[str, Any], shell: bool) -> Plan | None:
    found = re.match(
        r"(?:download|fetch|get) (https?://\S+)(?: (?:to|as|into) (\S+))?$", text, re.IGNORECASE
    )
    if not found:
        return None
    args: dict[str, Any] = {"method": "GET", "url": found.group(1)}
    if found.group(2):
        args["save_to"] = found.group(2)
    return Plan([Step(f"download {found.group(1)}", "http_request", args)], "under a minute")


def _run(text: str, lowered: str, meta: dict[str, Any], shell: bool) -> Plan | None:
    found = re.match(
        r"(?:run|execute|exec)(?: the)?(?: command)?:? `?(.+?)`?$", text, re.IGNORECASE
    )
    found = found or re.match(r"`(.+)`$|\$ (.+)$", text)
    if not found:
        return None
    command = next(g for g in found.groups() if g)
    return Plan([Step(f"run {command}", "run_command", {"command": command})], "a few seconds")


_RULES: Sequence[Rule] = (
    _old_logs,
    _invoice,
    _disk_usage,
    _list,
    _find,
    _create,
    _append,
    _download,
    _run,
    _install,
    _delete,
    _read,
)


def _then(step: Step, follow: Callable[[str], list[Step]]) -> Step:
    return Step(step.description, step.tool, step.args, follow)


def _url_in(text: str, meta: Mapping[str, Any]) -> str | None:
    found = _URL.search(text)
    if found:
        return found.group(0).rstrip(".,;)")
    for key in ("url", "invoice_url", "source"):
        value = meta.get(key)
        if isinstance(value, str) and _URL.fullmatch(value):
            return value
    return None


def _original(text: str, lowered_part: str | None) -> str | None:
    """The part of ``text`` that ``lowered_part`` was matched from, in its own case."""
    if not lowered_part:
        return None
    at = text.lower().rfind(lowered_part)
    return text[at : at + len(lowered_part)] if at >= 0 else lowered_part


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text

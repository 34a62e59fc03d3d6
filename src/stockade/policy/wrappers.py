"""Programs that run other programs: ``sudo rm …`` is judged as ``rm …`` (and as ``sudo``).

``unwrap`` finds, inside a wrapper's argv, the commands it starts (``sudo``, ``env``,
``nice``, ``nohup``, ``timeout``, ``time``, ``command``, ``exec``, ``xargs``,
``find -exec … \\;`` and more) and the shell code it hands to a shell (``sh -c "…"``,
``eval``, ``su -c``, ``env -S``, ``watch``, ``ssh host …``, ``trap``). The caller judges each
in turn, so wrappers nest: ``sudo env FOO=1 nice bash -c 'rm -rf /'`` is still ``rm -rf /``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stockade.policy.options import scan

Span = tuple[int, int]

SHELLS = frozenset(
    {"sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "yash", "posh", "rbash", "fish"}
    | {"csh", "tcsh"}
)
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Code:
    """Shell text a wrapper runs; ``dynamic`` when the outer shell splices run-time values into
    it before it is parsed again (``eval "$X"``), so what runs cannot be known now."""

    text: str
    dynamic: bool = False


@dataclass(frozen=True)
class Unwrapped:
    """What a wrapper runs: argv ``spans`` (``argv[start:end]``) and shell ``code``."""

    spans: tuple[Span, ...] = ()
    code: tuple[Code, ...] = ()


@dataclass(frozen=True)
class _Spec:
    """A wrapper of the plain form ``NAME [options] [positionals] COMMAND [ARGS…]``."""

    short_values: str = ""
    long_values: frozenset[str] = frozenset()
    positionals: int = 0
    assignments: bool = False


_SPECS = {
    "sudo": _Spec(
        "CDghpRrtTUu",
        frozenset(
            {"close-from", "chdir", "group", "host", "prompt", "chroot", "role", "type"}
            | {"command-timeout", "other-user", "user"}
        ),
        assignments=True,
    ),
    "doas": _Spec("uC"),
    "pkexec": _Spec("", frozenset({"user"})),
    "nice": _Spec("n", frozenset({"adjustment"})),
    "nohup": _Spec(),
    "timeout": _Spec("sk", frozenset({"signal", "kill-after"}), positionals=1),
    "time": _Spec("fo", frozenset({"format", "output"})),
    "exec": _Spec("a"),
    "builtin": _Spec(),
    "xargs": _Spec(
        "IdEaLnPs",
        frozenset(
            {"arg-file", "delimiter", "max-args", "max-procs", "max-chars", "replace"}
            | {"process-slot-var"}
        ),
    ),
    "ionice": _Spec("cnp", frozenset({"class", "classdata", "pid"})),
    "stdbuf": _Spec("ioe", frozenset({"input", "output", "error"})),
    "setsid": _Spec(),
    "unbuffer": _Spec(),
    "chroot": _Spec("", frozenset({"userspec", "groups"}), positionals=1),
    "taskset": _Spec("", positionals=1),
    "busybox": _Spec(),
}


def program_name(word: str) -> str:
    """The program a command word names: ``/bin/rm`` and ``./rm`` are ``rm``."""
    return posixpath.basename(word) or word


def is_wrapper(name: str) -> bool:
    """Whether ``name`` (a program name) may run another command."""
    return name in _SPECS or name in _SPECIAL or name in SHELLS


def unwrap(argv: Sequence[str], expanded: Sequence[bool]) -> Unwrapped | None:
    """What the wrapper ``argv`` runs, or ``None`` if ``argv[0]`` is not a wrapper."""
    if not argv:
        return None
    name = program_name(argv[0])
    if name in SHELLS:
        return _shell(argv, expanded)
    special = _SPECIAL.get(name)
    if special is not None:
        return special(argv, expanded)
    spec = _SPECS.get(name)
    return None if spec is None else _generic(argv, spec)


def shell_script(argv: Sequence[str]) -> str | None:
    """The ``-c`` script of a shell command line, or ``None`` if it reads a file or stdin."""
    args = _without_plus_options(argv[1:])
    opts = scan(args, short_values="oO", long_values={"rcfile", "init-file"}, permute=False)
    if "c" in opts.flags and opts.operands:
        return opts.operands[0]
    return None


def _generic(argv: Sequence[str], spec: _Spec) -> Unwrapped:
    opts = scan(
        argv[1:], short_values=spec.short_values, long_values=spec.long_values, permute=False
    )
    start = 1 + opts.first_operand + spec.positionals
    while spec.assignments and start < len(argv) and _ASSIGNMENT.match(argv[start]):
        start += 1
    return Unwrapped(((start, len(argv)),) if start < len(argv) else ())


def _shell(argv: Sequence[str], expanded: Sequence[bool]) -> Unwrapped:
    script = shell_script(argv)
    if script is None:
        return Unwrapped()
    index = list(argv).index(script, 1)
    return Unwrapped(code=(Code(script, bool(expanded[index])),))


def _joined(argv: Sequence[str], expanded: Sequence[bool], start: int) -> Unwrapped:
    if start >= len(argv):
        return Unwrapped()
    return Unwrapped(code=(Code(" ".join(argv[start:]), any(expanded[start:])),))


def _sudo(argv: Sequence[str], expanded: Sequence[bool]) -> Unwrapped:
    spec = _SPECS["sudo"]
    opts = scan(
        argv[1:], short_values=spec.short_values, long_values=spec.long_values, permute=False
    )
    if opts.has("e", "edit"):
        return Unwrapped()  # "sudo -e FILE" edits files as root; it runs no command
    return _generic(argv, spec)


def _eval(argv: Sequence[str], expanded: Sequence[bool]) -> Unwrapped:
    return _joined(argv, expanded, 1)


def _env(argv: Sequence[str], expanded: Sequence[bool]) -> Unwrapped:
    opts = scan(
        argv[1:], short_values="uCS", long_values={"unset", "chdir", "split-string"}, permute=False
    )
    start = 1 + opts.first_operand
    while start < len(argv) and (argv[start] == "-" or _ASSIGNMENT.match(argv[start])):
        start += 1
    split = opts.value("S", "split-string")
    if split is not None:
        rest = " ".join(argv[start:])
        return Unwrapped(code=(Code(f"{split} {rest}".strip(), any(expanded)),))
    return Unwrapped(((start, len(argv)),) if start < len(argv) else ())


def _command(argv: Sequence[str], expanded: Sequence[bool]) -> Unwrapped:
    opts = scan(argv[1:], permute=False)
    if opts.has("v", "V"):
        return Unwrapped()  # "command -v rm" only looks the program up
    start = 1 + opts.first_operand
    return Unwrapped(((start, len(argv)),) if start < len(argv) else ())


def _su(argv: Sequence[str], expanded: Sequence[bool]) -> Unwrapped:
    opts = scan(
        argv[1:],
        short_values="cgGsw",
        long_values={"command", "group", "supp-group", "shell", "whitelist-environment"},
    )
    script = opts.value("c", "command")
    if script is None:
        return Unwrapped()
    return Unwrapped(code=(Code(script, any(expanded)),))


def _flock(argv: Sequence[str], expanded: Sequence[bool]) -> Unwrapped:
    opts = scan(argv[1:], short_values="wE", long_values={"timeout", "conflict-exit-code"})
    script = opts.value("c", "command")
    if script is not None:
        return Unwrapped(code=(Code(script, any(expanded)),))
    start = 1 + opts.first_operand + 1  # past the lock file
    return Unwrapped(((start, len(argv)),) if start < len(argv) else ())


def _watch(argv: Sequence[str], expanded: Sequence[bool]) -> Unwrapped:
    opts = scan(argv[1:], short_values="nq", long_values={"interval"}, permute=False)
    start = 1 + opts.first_operand
    if opts.has("x", "exec"):
        return Unwrapped(((start, len(argv)),) if start < len(argv) else ())
    return _joined(argv, expanded, start)


def _ssh(argv: Sequence[str], expanded: Sequence[bool]) -> Unwrapped:
    opts = scan(argv[1:], short_values="BbcDEeFIiJLlmOoPpQRSWw", permute=False)
    return _joined(argv, expanded, 1 + opts.first_operand + 1)  # past the host


def _trap(argv: Sequence[str], expanded: Sequence[bool]) -> Unwrapped:
    opts = scan(argv[1:], permute=False)
    if opts.has("p", "l") or len(opts.operands) < 2:
        return Unwrapped()
    start = 1 + opts.first_operand
    return Unwrapped(code=(Code(argv[start], bool(expanded[start])),))


def _find(argv: Sequence[str], expanded: Sequence[bool]) -> Unwrapped:
    spans: list[Span] = []
    i = 1
    while i < len(argv):
        if argv[i] in ("-exec", "-execdir", "-ok", "-okdir"):
            end = i + 1
            while end < len(argv) and argv[end] not in (";", "+"):
                end += 1
            if end > i + 1:
                spans.append((i + 1, end))
            i = end
        i += 1
    return Unwrapped(tuple(spans))


def _without_plus_options(args: Sequence[str]) -> list[str]:
    """Drop ``+x`` style options (and ``+o NAME``), which getopt does not know."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("+") and len(arg) > 1:
            skip = arg in ("+o", "+O")
        else:
            kept.append(arg)
    return kept


_SPECIAL: dict[str, Callable[[Sequence[str], Sequence[bool]], Unwrapped]] = {
    "sudo": _sudo,
    "eval": _eval,
    "env": _env,
    "command": _command,
    "su": _su,
    "runuser": _su,
    "flock": _flock,
    "watch": _watch,
    "ssh": _ssh,
    "trap": _trap,
    "find": _find,
}

"""Programs that write, move or delete files, judged by what they would touch.

Seed 001 rates file writes "moderate": ``mkdir``, ``touch``, ``cp``, ``mv``, ``tee``,
``sed -i`` and unpacking archives are medium, and high when the target is a system path
(``paths.write_findings``). Deleting (``rm``, ``find -delete``, ``shred``, ``truncate``) is
high. Tools that only read (``sed`` without ``-i``, ``tar -t``, plain ``find``) are low.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from stockade.policy.options import scan
from stockade.policy.paths import write_findings
from stockade.policy.risk import Finding, Risk, Rule

_COPIERS = {"cp": "copies", "mv": "moves", "ln": "links", "install": "installs"}
# sed commands that run a program or write a file: "e cmd", "w file", "s/a/b/e", "s/a/b/w f".
_SED_ADDRESS = r"(?:\d+|\$|/(?:\\.|[^/])*/)"
_SED_COMMAND = re.compile(
    rf"(?:^|[;\n{{}}])\s*(?:{_SED_ADDRESS}(?:\s*,\s*{_SED_ADDRESS})?)?\s*!?\s*[ewW](?:\s|$)"
)
_SED_SUBSTITUTE = re.compile(r"s(.)((?:\\.|(?!\1).)*)\1((?:\\.|(?!\1).)*)\1([A-Za-z0-9]*)")
_AWK_EFFECTS = re.compile(r"\bsystem\s*\(|(?<!\|)\|(?!\|)|\bprintf?\b[^;{}]*>|\bgetline\b")


def copier(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``cp``/``mv``/``ln``/``install``: medium, plus what writing the destination means."""
    opts = scan(args, short_values="tS", long_values={"target-directory", "suffix"})
    target = opts.value("t", "target-directory")
    if target is None and len(opts.operands) >= 2:
        target = opts.operands[-1]
    found = [Finding(Risk.MEDIUM, f"{name} {_COPIERS[name]} files")]
    if target is not None:
        found += write_findings(target, verb=f"{name} writes to", extra=roots)
    if name == "mv":
        sources = opts.operands if opts.value("t", "target-directory") else opts.operands[:-1]
        for source in sources:
            found += _system_only(write_findings(source, verb="mv removes", extra=roots))
    return found


def creator(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``touch``/``mkdir``: medium for each path they create."""
    opts = scan(args, short_values="mdrtTZ", long_values={"mode", "date", "reference"})
    found = [Finding(Risk.MEDIUM, f"{name} creates files or directories")]
    for operand in opts.operands:
        found += write_findings(operand, verb=f"{name} creates", extra=roots)
    return found


def tee(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``tee FILE…`` writes each file; plain ``tee`` only copies its input to its output."""
    opts = scan(args, long_values={"output-error"})
    verb = "tee appends to" if opts.has("a", "append") else "tee writes to"
    found = [Finding(Risk.LOW, "tee copies its input")]
    for operand in opts.operands:
        found += write_findings(operand, verb=verb, extra=roots)
    return found


def deleter(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``rm``, ``rmdir``, ``unlink``, ``shred``, ``truncate``: high."""
    verb = {"truncate": "cuts files short", "shred": "destroys files"}.get(name, "deletes files")
    return [Finding(Risk.HIGH, f"{name} {verb}")]


def sed(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``sed`` only prints unless ``-i`` edits files in place or the script runs ``e``/``w``."""
    opts = scan(args, short_values="efl", long_values={"expression", "file", "line-length"})
    scripts = [*opts.values.get("e", ()), *opts.values.get("expression", ())]
    files = list(opts.operands)
    if not scripts and not opts.has("f", "file") and files:
        scripts.append(files.pop(0))
    found = []
    if any(_sed_has_effects(script) for script in scripts):
        found.append(Finding(Risk.HIGH, "the sed script runs commands or writes files"))
    if opts.has("i", "in-place"):
        found.append(Finding(Risk.MEDIUM, "sed -i edits files in place"))
        for path in files:
            found += write_findings(path, verb="sed -i edits", extra=roots)
    return found or [Finding(Risk.LOW, "sed without -i only prints")]


def awk(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``awk`` is low unless its program can run commands (``system()``, pipes) or write
    files (``print > "f"``)."""
    opts = scan(args, short_values="fvF", long_values={"file", "assign", "field-separator"})
    if opts.has("f", "file"):
        return [Finding(Risk.MEDIUM, f"{name} runs a program file the policy cannot see")]
    program = opts.operands[0] if opts.operands else ""
    if _AWK_EFFECTS.search(program):
        return [Finding(Risk.HIGH, f"the {name} program can run commands or write files")]
    return [Finding(Risk.LOW, f"{name} only reads and prints")]


def tar(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``tar -t`` lists (low); creating or extracting writes (medium, high into ``-C /``)."""
    words = list(args)
    if words and not words[0].startswith("-"):
        words[0] = "-" + words[0]  # "tar xzf a.tgz" is "tar -xzf a.tgz"
    opts = scan(words, short_values="fCbHIKLNTVgX", long_values={"file", "directory"})
    if opts.has("t", "list") and not opts.has("x", "c", "r", "u", "extract", "create"):
        return [Finding(Risk.LOW, "tar -t only lists an archive")]
    found = [Finding(Risk.MEDIUM, "tar writes files")]
    directory = opts.value("C", "directory")
    if directory is not None and opts.has("x", "extract", "get"):
        found += write_findings(directory, verb="tar extracts into", extra=roots)
    return found


def unzip(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``unzip -l`` lists (low); otherwise it writes files (medium, high into ``-d /etc``)."""
    opts = scan(args, short_values="dx")
    if opts.has("l", "v", "t", "Z"):
        return [Finding(Risk.LOW, "unzip -l only lists an archive")]
    found = [Finding(Risk.MEDIUM, "unzip writes files")]
    directory = opts.value("d")
    if directory is not None:
        found += write_findings(directory, verb="unzip extracts into", extra=roots)
    return found


def find(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``find`` only reads, unless ``-delete`` (high) or ``-fprint`` (medium); what
    ``-exec`` runs is judged on its own."""
    if "-delete" in args:
        return [Finding(Risk.HIGH, "find -delete deletes the files it finds")]
    if any(arg in ("-fprint", "-fprint0", "-fprintf", "-fls") for arg in args):
        return [Finding(Risk.MEDIUM, "find -fprint writes a file")]
    return [Finding(Risk.LOW, "find only reads")]


def _sed_has_effects(script: str) -> bool:
    if any(set(m.group(4)) & {"e", "w"} for m in _SED_SUBSTITUTE.finditer(script)):
        return True
    return bool(_SED_COMMAND.search(_SED_SUBSTITUTE.sub("", script)))


def _system_only(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.risk >= Risk.HIGH]


FILE_RULES: dict[str, Rule] = {
    **dict.fromkeys(_COPIERS, copier),
    "touch": creator,
    "mkdir": creator,
    "tee": tee,
    **dict.fromkeys(("rm", "rmdir", "unlink", "shred", "truncate"), deleter),
    "sed": sed,
    "gsed": sed,
    **dict.fromkeys(("awk", "gawk", "mawk", "nawk"), awk),
    "tar": tar,
    "unzip": unzip,
    "find": find,
}

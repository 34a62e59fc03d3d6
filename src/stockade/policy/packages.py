"""Package managers and git, judged by their subcommand.

Seed 001 rates installs "moderate": ``pip install``, ``npm install``, ``brew install`` and
their kin are medium. Looking (``pip list``, ``apt-cache show``, ``git status``) is low;
removing packages, publishing them and ``git push`` are high, as are git commands that throw
work away (``git reset --hard``, ``git clean -f``, ``git rm``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stockade.policy.options import scan
from stockade.policy.risk import Finding, Risk, Rule


@dataclass(frozen=True)
class _Manager:
    looks: frozenset[str]
    removes: frozenset[str] = frozenset()
    publishes: frozenset[str] = frozenset()
    bare: Risk = Risk.LOW


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _m(looks: str, removes: str = "", publishes: str = "", bare: Risk = Risk.LOW) -> _Manager:
    return _Manager(_words(looks), _words(removes), _words(publishes), bare)


_NPM = _m(
    "ls list ll la view info show outdated search help config why doctor root bin prefix"
    " explain audit",
    "uninstall remove rm un r unlink",
    "publish unpublish",
)
_APT = _m(
    "list search show showpkg policy depends rdepends changelog madison",
    "remove purge autoremove autopurge clean autoclean",
)
_DNF = _m("list info search provides repolist check-update history", "remove erase autoremove")
_MANAGERS = {
    "pip": _m("list show freeze check search help index inspect debug", "uninstall"),
    "pipx": _m("list help environment", "uninstall uninstall-all"),
    "poetry": _m("show check about help env", "remove", "publish"),
    "npm": _NPM,
    "pnpm": _NPM,
    "bun": _NPM,
    "yarn": _Manager(_NPM.looks, _NPM.removes, _NPM.publishes, Risk.MEDIUM),
    "apt": _APT,
    "apt-get": _APT,
    "aptitude": _APT,
    "dnf": _DNF,
    "yum": _DNF,
    "microdnf": _DNF,
    "zypper": _DNF,
    "apk": _m("info search list policy stats", "del"),
    "brew": _m(
        "list ls info search doctor config outdated deps leaves home desc --prefix --cellar",
        "uninstall remove rm untap cleanup unlink autoremove",
    ),
    "gem": _m("list search info query environment which contents help spec", "uninstall", "push"),
    "cargo": _m("search tree metadata help version locate-project", "uninstall clean", "publish"),
    "go": _m("version env list doc help", "clean"),
    "conda": _m("list info search", "remove uninstall clean"),
    "mamba": _m("list info search", "remove uninstall clean"),
    "snap": _m("list info find", "remove"),
    "flatpak": _m("list info search", "uninstall"),
    "twine": _m("check", "", "upload register"),
}
_GIT_LOOKS = _words(
    "status log diff show blame grep ls-files ls-tree ls-remote rev-parse rev-list describe"
    " shortlog cat-file show-ref for-each-ref whatchanged help version name-rev merge-base"
    " count-objects fsck verify-commit verify-tag check-ignore check-attr var show-branch"
)
_GIT_GLOBAL_VALUES = frozenset({"git-dir", "work-tree", "namespace", "super-prefix", "config-env"})


def package_manager(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """Rate ``pip install …``, ``apt-get remove …``, ``npm publish`` and the like."""
    if name in ("pip2", "pip3") or name.startswith("pip3."):
        name = "pip"
    if name == "uv":
        return _uv(args, roots)
    manager = _MANAGERS[name]
    operands = scan(args, short_values="", permute=True).operands
    sub = operands[0] if operands else ""
    if not sub:
        return [Finding(manager.bare, f"{name} without a subcommand")]
    if sub in manager.looks or (name == "go" and sub == "env" and "-w" not in args):
        return [Finding(Risk.LOW, f"{name} {sub} only looks")]
    if sub in manager.removes:
        return [Finding(Risk.HIGH, f"{name} {sub} removes packages or files")]
    if sub in manager.publishes:
        return [Finding(Risk.HIGH, f"{name} {sub} publishes to a registry")]
    return [Finding(Risk.MEDIUM, f"{name} {sub} installs or changes packages")]


def _uv(args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    operands = scan(args).operands
    if operands[:1] == ("pip",):
        return package_manager("pip", operands[1:], roots)
    if operands[:1] == ("remove",):
        return [Finding(Risk.HIGH, "uv remove removes packages")]
    if operands[:1] in (("tree",), ("help",), ("version",)):
        return [Finding(Risk.LOW, f"uv {operands[0]} only looks")]
    return [Finding(Risk.MEDIUM, "uv installs packages or runs project code")]


def dpkg(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``dpkg -i`` installs (medium), ``dpkg -r``/``-P`` removes (high), the rest looks."""
    opts = scan(args)
    if opts.has("r", "P", "remove", "purge"):
        return [Finding(Risk.HIGH, "dpkg removes packages")]
    if opts.has("i", "install", "unpack", "configure"):
        return [Finding(Risk.MEDIUM, "dpkg installs packages")]
    return [Finding(Risk.LOW, "dpkg only looks")]


def pacman(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``pacman -S``/``-U`` installs, ``-R`` removes, ``-Q``/``-F`` looks."""
    opts = scan(args)
    if opts.has("R", "remove"):
        return [Finding(Risk.HIGH, "pacman -R removes packages")]
    if opts.has("S", "U", "sync", "upgrade"):
        return [Finding(Risk.MEDIUM, "pacman installs packages")]
    return [Finding(Risk.LOW, "pacman only looks")]


def git(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """Rate a git command by its subcommand, after git's own options (``-C dir``,
    ``-c key=value``, ``--no-pager``)."""
    top = scan(args, short_values="Cc", long_values=_GIT_GLOBAL_VALUES, permute=False)
    if not top.operands:
        return [Finding(Risk.LOW, "git without a subcommand only prints help")]
    sub, rest = top.operands[0], top.operands[1:]
    opts = scan(rest, short_values="mFCcSuneOtb")
    verdict = _git_sub(sub, rest, opts.flags, opts.operands)
    if verdict is not None:
        return [verdict]
    return [Finding(Risk.MEDIUM, f"git {sub} changes the repository")]


def _git_sub(
    sub: str, rest: Sequence[str], flags: frozenset[str], operands: Sequence[str]
) -> Finding | None:
    if sub in _GIT_LOOKS:
        return Finding(Risk.LOW, f"git {sub} only reads the repository")
    if sub == "push":
        return Finding(Risk.HIGH, "git push sends commits to a remote")
    if sub == "rm":
        return Finding(Risk.HIGH, "git rm deletes files")
    if sub == "clean" and not flags & {"n", "dry-run"}:
        return Finding(Risk.HIGH, "git clean deletes untracked files")
    if sub == "reset" and "hard" in flags:
        return Finding(Risk.HIGH, "git reset --hard throws away uncommitted changes")
    if sub in ("checkout", "restore") and (flags & {"f", "force"} or "." in operands):
        return Finding(Risk.HIGH, f"git {sub} throws away uncommitted changes")
    if sub == "stash" and operands[:1] in (("drop",), ("clear",)):
        return Finding(Risk.HIGH, f"git stash {operands[0]} deletes stashed work")
    if sub == "branch" and flags & {"D", "d", "delete"}:
        return Finding(Risk.HIGH, "git branch -d deletes a branch")
    if sub in ("branch", "tag", "remote") and not operands and len(rest) <= 1:
        return Finding(Risk.LOW, f"git {sub} only lists")
    if sub in ("stash", "remote", "worktree", "submodule") and operands[:1] in (
        ("list",),
        ("show",),
        ("status",),
        ("get-url",),
    ):
        return Finding(Risk.LOW, f"git {sub} {operands[0]} only reads the repository")
    if sub == "config" and (flags & {"l", "list", "get", "get-all"} or len(operands) == 1):
        return Finding(Risk.LOW, "git config only reads settings")
    return None


PACKAGE_RULES: dict[str, Rule] = {
    **dict.fromkeys((*_MANAGERS, "pip3", "uv"), package_manager),
    "dpkg": dpkg,
    "pacman": pacman,
    "git": git,
}

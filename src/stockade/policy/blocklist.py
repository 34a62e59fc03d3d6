"""Commands refused outright: no approval can let them run.

Seed 001's list (``rm -rf /``, ``rm -rf ~``, ``dd`` onto a disk, ``mkfs``, ``nc -e``; fork
bombs are found in ``shell.py``) and ours: recursive ``chmod``/``chown`` of a system root,
``mv`` of one, partitioning or wiping a disk device, powering the machine off, and
``kill -9 -1`` or ``killall5``. Downloads piped into a shell, and shells wired to
``/dev/tcp``, are judged in ``commands.py``, which sees pipelines and redirections. Each rule
reads options with ``options.scan``, so ``-rf``, ``-r -f``, ``-Rf`` and
``--recursive --force`` are one spelling.
"""

from __future__ import annotations

from collections.abc import Sequence

from stockade.policy.options import scan
from stockade.policy.paths import describe_root, is_block_device, protected_root
from stockade.policy.risk import Finding, Rule

_RM_LONG = (
    "force",
    "interactive",
    "one-file-system",
    "no-preserve-root",
    "preserve-root",
    "recursive",
    "dir",
    "verbose",
)
_FORMATTERS = frozenset({"mkfs", "mke2fs", "mkdosfs", "mkntfs", "mkexfatfs", "newfs"})
# Tools that wipe or repartition a disk device, with the flags that make them only look.
_DISK_TOOLS: dict[str, tuple[str, ...]] = {
    "wipefs": ("n", "no-act"),
    "blkdiscard": (),
    "mkswap": (),
    "shred": (),
    "fdisk": ("l", "list"),
    "cfdisk": (),
    "gdisk": ("l",),
    "sfdisk": ("l", "list", "d", "dump", "n", "no-act", "V", "verify", "s", "show-size"),
    "sgdisk": ("p", "print", "i", "info", "v", "verify"),
    "parted": ("l", "list"),
}
_POWER = frozenset({"shutdown", "reboot", "halt", "poweroff"})
_POWER_UNITS = frozenset({"poweroff", "reboot", "halt", "kexec", "emergency", "rescue"})
_NETCAT = frozenset({"nc", "ncat", "netcat", "nc.traditional", "nc.openbsd"})


def blocked(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """The blocking findings for ``name args…``; ``roots`` are the policy's extra protected
    paths. Empty when the command is not on the list."""
    if name in _FORMATTERS or name.startswith(("mkfs.", "mke2fs.")):
        return [Finding.block(f"{name} formats a file system, erasing everything on it")]
    if name in _POWER:
        return [Finding.block(f"{name} stops the machine")]
    if name in _NETCAT:
        return _netcat(name, args, roots)
    rule = _RULES.get(name)
    if rule is not None:
        return rule(name, args, roots)
    if name in _DISK_TOOLS or name == "badblocks":
        return _disk_tool(name, args, roots)
    return []


def _rm(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    opts = scan(args, long_names=_RM_LONG)
    if not opts.has("r", "R", "recursive"):
        return []
    spelled = "rm -rf" if opts.has("f", "force") else "rm -r"
    found = []
    if opts.has("no-preserve-root"):
        found.append(Finding.block("rm --no-preserve-root disables the guard against deleting /"))
    for operand in opts.operands:
        root = protected_root(operand, roots)
        if root is not None:
            found.append(Finding.block(f"{spelled} {operand} deletes {describe_root(root)}"))
    return found


def _recursive_owner(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    opts = scan(args, long_values={"reference", "from"}, long_names=("recursive",))
    if not opts.has("R", "recursive"):
        return []
    found = []
    for operand in opts.operands:
        root = protected_root(operand, roots)
        if root is not None:
            what = "permissions" if name == "chmod" else "ownership"
            found.append(
                Finding.block(f"{name} -R {operand} changes the {what} of everything under {root}")
            )
    return found


def _mv(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    opts = scan(args, short_values="tS", long_values={"target-directory", "suffix"})
    sources = opts.operands if opts.has("t", "target-directory") else opts.operands[:-1]
    found = []
    for source in sources:
        root = protected_root(source, roots)
        if root is not None:
            found.append(Finding.block(f"mv {source} moves {describe_root(root)} away"))
    return found


def _dd(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key == "of" and is_block_device(value):
            return [Finding.block(f"dd of={value} overwrites a disk device")]
    return []


def _disk_tool(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    opts = scan(args)
    looks_only = _DISK_TOOLS.get(name, ())
    if opts.has(*looks_only) or (name == "parted" and "print" in opts.operands):
        return []
    if name == "badblocks" and not opts.has("w"):
        return []
    devices = [arg for arg in args if is_block_device(arg)]
    return [Finding.block(f"{name} {device} destroys the data on a disk") for device in devices]


def _to_device(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``cp``/``install`` onto a disk device, or ``tee`` into one."""
    opts = scan(args, short_values="tS", long_values={"target-directory", "suffix"})
    if name == "tee":
        targets = list(opts.operands)
    else:
        target = opts.value("t", "target-directory")
        targets = [target] if target else list(opts.operands[-1:])
    return [
        Finding.block(f"{name} onto {target} overwrites a disk device")
        for target in targets
        if is_block_device(target)
    ]


def _netcat(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    opts = scan(args)
    if opts.has("e", "c", "exec", "sh-exec", "lua-exec"):
        return [Finding.block(f"{name} -e hands a shell to the network (a reverse shell)")]
    return []


def _socat(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    if any(arg.lower().startswith(("exec:", "system:")) for arg in args):
        return [Finding.block("socat EXEC/SYSTEM hands a shell to the network")]
    return []


def _init(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    if any(arg in ("0", "6") for arg in args):
        return [Finding.block(f"{name} {' '.join(args)} stops the machine")]
    return []


def _systemctl(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    if any(arg in _POWER_UNITS for arg in scan(args).operands[:1]):
        return [Finding.block(f"systemctl {scan(args).operands[0]} stops the machine")]
    return []


def _kill(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``kill -9 -1`` signals every process; ``kill 1`` signals init."""
    targets: list[str] = []
    signal_seen = False
    words = iter(args)
    for arg in words:
        if arg == "--":
            targets.extend(words)
        elif arg in ("-s", "-n"):
            next(words, None)
            signal_seen = True
        elif arg.startswith("-") and not signal_seen:
            signal_seen = True
        else:
            targets.append(arg)
    if "-1" in targets or "1" in targets:
        return [Finding.block(f"kill {' '.join(args)} kills every process on the machine")]
    return []


def _killall5(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``killall5`` signals every process outside its own session, like ``kill -9 -1``;
    ``killall5 -0`` only checks that they exist."""
    if "-0" in args:
        return []
    return [Finding.block("killall5 kills every process on the machine")]


_RULES: dict[str, Rule] = {
    "rm": _rm,
    "chmod": _recursive_owner,
    "chown": _recursive_owner,
    "chgrp": _recursive_owner,
    "mv": _mv,
    "dd": _dd,
    "cp": _to_device,
    "install": _to_device,
    "tee": _to_device,
    "socat": _socat,
    "init": _init,
    "telinit": _init,
    "systemctl": _systemctl,
    "kill": _kill,
    "killall5": _killall5,
}

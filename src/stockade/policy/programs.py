"""The default risk of each program, following seed 001's table and seed 000's lists.

==========  ===============================================================================
none        shell built-ins that change nothing outside the shell (``echo``, ``cd``, ``true``)
low         looking: ``ls``, ``cat``, ``grep``, ``find``, ``git status``, ``ps``, ``df``,
            ``--version``/``--help`` of anything (seed 000's green actions)
medium      installs and file writes: ``pip install``, ``npm install``, ``mkdir``, ``cp``,
            ``sed -i``, downloads, interpreters running code, and any unknown program
high        ``sudo``, deleting (``rm``), ``chmod``/``chown``, ``systemctl``, ``kill``,
            ``git push``, ``ssh``, sending data over the network (seed 000's red actions)
critical    blocked (``blocklist.py``): never offered for approval
==========  ===============================================================================

Rules that read arguments live next to their kind: ``files.py``, ``network.py``,
``packages.py``; this module holds the plain table and the system tools.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from stockade.policy.files import FILE_RULES
from stockade.policy.network import NETWORK_RULES
from stockade.policy.options import scan
from stockade.policy.packages import PACKAGE_RULES
from stockade.policy.risk import Finding, Risk, Rule


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _names(risk: Risk, reason: str, names: str) -> dict[str, tuple[Risk, str]]:
    return dict.fromkeys(names.split(), (risk, reason))


_TABLE: dict[str, tuple[Risk, str]] = {
    **_names(Risk.NONE, "{name} only prints text", "echo printf"),
    **_names(
        Risk.NONE,
        "{name} only changes the shell itself",
        "true false : test [ pwd cd pushd popd dirs export set unset shift exit return local"
        " declare typeset readonly read wait let shopt hash break continue getopts jobs"
        " unalias clear umask ulimit history",
    ),
    **_names(
        Risk.LOW,
        "{name} only reads",
        "ls dir vdir tree cat head tail less more grep egrep fgrep rg ag ack locate which"
        " whereis type file stat wc du df free uptime ps pgrep pidof top htop id whoami groups"
        " who w last uname date cal printenv locale realpath readlink basename dirname sort"
        " uniq cut tr diff cmp comm md5sum sha1sum sha256sum sha512sum b2sum cksum jq yq"
        " column nl od xxd hexdump strings base64 man info help apropos whatis lsblk lscpu"
        " lsusb lspci lsmod lsof ss netstat dmesg getent nproc arch expr bc dc seq tac rev"
        " fold fmt paste join expand unexpand shuf numfmt factor zcat zgrep bzcat xzcat"
        " ldd nm objdump readelf size vmstat iostat pstree tty sleep yes",
    ),
    **_names(
        Risk.LOW,
        "{name} is a network diagnostic",
        "ping ping6 dig nslookup host traceroute tracepath whois mtr",
    ),
    **_names(Risk.MEDIUM, "{name} writes files", "patch split csplit zip gzip gunzip bzip2"),
    **_names(Risk.MEDIUM, "{name} writes files", "bunzip2 xz unxz zstd unzstd 7z"),
    **_names(Risk.MEDIUM, "{name} downloads and runs a package", "npx pnpx bunx uvx"),
    **_names(Risk.MEDIUM, "{name} changes what later commands mean", "alias"),
    **_names(Risk.MEDIUM, "{name} runs a script file the policy cannot see", "source ."),
    **_names(
        Risk.HIGH,
        "{name} runs commands as another user (root)",
        "sudo doas su pkexec runuser chroot sudoedit",
    ),
    **_names(Risk.HIGH, "{name} changes file permissions or ownership", "chmod chown chgrp"),
    **_names(Risk.HIGH, "{name} changes file permissions or ownership", "chattr setfacl"),
    **_names(Risk.HIGH, "{name} stops processes", "kill pkill killall killall5"),
    **_names(Risk.HIGH, "{name} changes mounted file systems", "mount umount swapon swapoff"),
    **_names(
        Risk.HIGH,
        "{name} changes users or groups",
        "useradd userdel usermod adduser deluser groupadd groupdel passwd chpasswd visudo",
    ),
    **_names(Risk.HIGH, "{name} changes the firewall", "iptables ip6tables nft ufw firewall-cmd"),
    **_names(Risk.HIGH, "{name} changes kernel modules", "modprobe insmod rmmod"),
    **_names(
        Risk.HIGH,
        "{name} changes disks or partitions",
        "fdisk sfdisk cfdisk gdisk sgdisk parted wipefs blkdiscard mkswap losetup cryptsetup"
        " hdparm badblocks",
    ),
    **_names(Risk.HIGH, "{name} copies raw data between files and devices", "dd"),
    **_names(Risk.HIGH, "{name} schedules commands to run later", "at batch"),
    **_names(
        Risk.HIGH, "{name} stops or restarts the machine", "shutdown reboot halt poweroff init"
    ),
    **_names(Risk.HIGH, "{name} stops or restarts the machine", "telinit"),
}
_INTERPRETER = re.compile(
    r"(?:python|pypy)[0-9.]*|perl|ruby|node|nodejs|php|lua|Rscript|deno|osascript"
)
_SYSTEMCTL_LOOKS = _words(
    "status show cat list-units list-unit-files list-sockets list-timers list-jobs"
    " list-dependencies is-active is-enabled is-failed is-system-running help get-default"
    " show-environment"
)
_IP_CHANGES = _words("add del delete set flush change replace append up down")
_HELP = frozenset({"--version", "--help", "-version", "-help"})


def rate(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """The default findings for the program ``name`` run with ``args``."""
    if len(args) == 1 and args[0] in _HELP:
        return [Finding(Risk.LOW, f"{name} {args[0]} only prints information")]
    rule = _RULES.get(name)
    if rule is not None:
        return rule(name, args, roots)
    if name in _TABLE:
        risk, reason = _TABLE[name]
        return [Finding(risk, reason.format(name=name))]
    if name.startswith(("mkfs.", "mke2fs")):
        return [Finding(Risk.HIGH, f"{name} formats a file system")]
    if _INTERPRETER.fullmatch(name):
        return interpreter(name, args, roots)
    return [Finding(Risk.MEDIUM, f"unknown program {name}")]


def is_interpreter(name: str) -> bool:
    """Whether ``name`` runs code in a language other than shell (``python3``, ``node``)."""
    return bool(_INTERPRETER.fullmatch(name))


def interpreter(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``python3 -m pip install x`` is ``pip install x``; other code is medium, as the policy
    cannot see into it."""
    opts = scan(args, short_values="mcWXe", permute=False)
    module = opts.value("m")
    if module is not None and module.startswith("pip"):
        return PACKAGE_RULES["pip"]("pip", opts.operands, roots)
    return [Finding(Risk.MEDIUM, f"{name} runs code the policy cannot see into")]


def _systemctl(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    opts = scan(args, short_values="HMtpnos", long_values={"type", "property", "host"})
    sub = opts.operands[0] if opts.operands else "list-units"
    if sub in _SYSTEMCTL_LOOKS:
        return [Finding(Risk.LOW, f"systemctl {sub} only reads")]
    return [Finding(Risk.HIGH, f"systemctl {sub} changes system services")]


def _service(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    if "--status-all" in args or (len(args) == 2 and args[1] == "status"):
        return [Finding(Risk.LOW, "service status only reads")]
    return [Finding(Risk.HIGH, "service changes system services")]


def _journalctl(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    if any(arg.startswith(("--vacuum", "--rotate", "--flush")) for arg in args):
        return [Finding(Risk.HIGH, "journalctl deletes or rotates the system journal")]
    return [Finding(Risk.LOW, "journalctl only reads")]


def _crontab(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    if tuple(args) == ("-l",):
        return [Finding(Risk.LOW, "crontab -l only reads")]
    return [Finding(Risk.HIGH, "crontab changes scheduled jobs")]


def _setter(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``date -s``, ``hostname NAME``, ``sysctl -w``, ``ip … add``, ``ifconfig eth0 up``."""
    opts = scan(args, short_values="f" if name == "hostname" else "")
    changes = {
        "date": opts.has("s", "set"),
        "hostname": bool(opts.operands),
        "sysctl": opts.has("w", "write", "p", "load") or any("=" in op for op in opts.operands),
        "ip": bool(_IP_CHANGES & set(opts.operands)),
        "ifconfig": len(opts.operands) > 1,
    }[name]
    if changes:
        return [Finding(Risk.HIGH, f"{name} changes the system's configuration")]
    return [Finding(Risk.LOW, f"{name} only reads")]


_RULES: dict[str, Rule] = {
    **FILE_RULES,
    **NETWORK_RULES,
    **PACKAGE_RULES,
    "systemctl": _systemctl,
    "service": _service,
    "journalctl": _journalctl,
    "crontab": _crontab,
    **dict.fromkeys(("date", "hostname", "sysctl", "ip", "ifconfig"), _setter),
}

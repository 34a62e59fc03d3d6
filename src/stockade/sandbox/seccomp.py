"""The seccomp filter every ``namespace`` sandbox runs under, built with ``pyseccomp``.

A deny-list in the spirit of Docker's default profile: everything is allowed except the
system calls that reach the kernel's shared state (mounts, namespaces, modules, the
clock, keyrings, tracing, BPF), which fail with EPERM. ``ioctl(TIOCSTI)`` and
``ioctl(TIOCLINUX)``, which push keystrokes into a terminal outside the sandbox, are
refused by a masked compare on the request number, so no 64-bit trick gets past it.
bubblewrap loads the program from a file descriptor (``--seccomp FD``); the ``gvisor``
backend hands the same rules to runsc as the OCI profile of ``oci_profile``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Any

import pyseccomp

DENIED = (
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "setns",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "clock_settime",
    "clock_adjtime",
    "settimeofday",
    "adjtimex",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "open_by_handle_at",
    "name_to_handle_at",
    "iopl",
    "ioperm",
    "syslog",
)

TIOCSTI = 0x5412
TIOCLINUX = 0x541C
_LOW_32_BITS = 0xFFFFFFFF


def build_filter() -> pyseccomp.SyscallFilter:
    """The filter: allow by default, EPERM for ``DENIED`` and terminal injection."""
    refuse = pyseccomp.ERRNO(errno.EPERM)
    rules = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    for name in DENIED:
        try:
            rules.add_rule(refuse, name)
        except OSError:  # EINVAL: not a system call on this architecture
            continue
    for request in (TIOCSTI, TIOCLINUX):
        rules.add_rule(
            refuse, "ioctl", pyseccomp.Arg(1, pyseccomp.MASKED_EQ, _LOW_32_BITS, request)
        )
    return rules


def bpf_program() -> bytes:
    """The compiled BPF program, as bubblewrap's ``--seccomp`` reads it."""
    fd = os.memfd_create("stockade-seccomp", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as sink:
        build_filter().export_bpf(sink)
        sink.seek(0)
        return sink.read()


def program_fd(program: bytes) -> int:
    """A fresh, inheritable, rewound file descriptor holding ``program``, to hand to one
    bwrap (``pass_fds``); the caller closes it once bwrap has started."""
    fd = os.memfd_create("stockade-seccomp", 0)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def oci_profile(denied: Sequence[str] = DENIED) -> dict[str, Any]:
    """The same rules (for ``denied`` system calls) as an OCI ``linux.seccomp`` profile,
    for runsc's ``--oci-seccomp`` (gVisor's Sentry enforces it on the sandbox's
    processes). runsc 0.0~20221219 ignores ``errnoRet`` and answers EPERM, which is what
    these rules return anyway."""
    refuse = {"action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}
    rules: list[dict[str, Any]] = [{"names": list(denied), **refuse}]
    for request in (TIOCSTI, TIOCLINUX):
        masked = {
            "index": 1,
            "value": _LOW_32_BITS,
            "valueTwo": request,
            "op": "SCMP_CMP_MASKED_EQ",
        }
        rules.append({"names": ["ioctl"], "args": [masked], **refuse})
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": rules,
    }

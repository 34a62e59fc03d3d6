"""The seccomp filter, loaded by a real bubblewrap: every denied system call answers
EPERM inside, terminal injection is refused, and ordinary work still runs."""

from __future__ import annotations

import errno
import json
import os

import pyseccomp

from stockade.sandbox.bwrap import Account, Profile
from stockade.sandbox.seccomp import DENIED, TIOCSTI, bpf_program, build_filter
from tests.sandbox.confined import run_confined

# Runs inside the sandbox with Debian's python3: call each system call with junk
# arguments and report the errno, plus the Seccomp mode from /proc/self/status.
PROBE = r"""
import ctypes, fcntl, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
numbers = json.loads(sys.argv[1])
found = {}
for name, number in numbers.items():
    ctypes.set_errno(0)
    libc.syscall(number, 0, 0, 0, 0, 0, 0)
    found[name] = ctypes.get_errno()
read, write = os.pipe()
try:
    fcntl.ioctl(read, 0x5412, b"x")
    found["ioctl_tiocsti"] = 0
except OSError as exc:
    found["ioctl_tiocsti"] = exc.errno
found["ioctl_fionread"] = len(fcntl.ioctl(read, 0x541B, b"\0\0\0\0"))
found["seccomp"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")][0]
print(json.dumps(found))
"""


def numbers() -> dict[str, int]:
    found = {}
    for name in DENIED:
        try:
            found[name] = int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))
        except (OSError, ValueError):
            continue
    return found


def run_probe(program: bytes, calls: dict[str, int]) -> dict[str, object]:
    """Run the probe the way every sandbox process starts (``sandbox/bwrap.py``)."""
    argv = ["/usr/bin/python3", "-I", "-c", PROBE, json.dumps(calls)]
    done = run_confined(Profile(Account.lookup()), argv, program=program)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_every_denied_call_answers_eperm() -> None:
    found = run_probe(bpf_program(), numbers())
    assert found["seccomp"] == "2"
    denied = {name: found[name] for name in numbers()}
    assert len(denied) >= 16
    assert denied == dict.fromkeys(denied, errno.EPERM)
    assert found["ioctl_tiocsti"] == errno.EPERM
    assert found["ioctl_fionread"] == 4  # other ioctls still work


def test_the_probe_can_tell_a_missing_filter() -> None:
    # The same probe under an allow-everything filter: TIOCSTI on a pipe is ENOTTY.
    allow = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    fd = os.memfd_create("allow")
    with os.fdopen(fd, "w+b") as sink:
        allow.export_bpf(sink)
        sink.seek(0)
        program = sink.read()
    found = run_probe(program, {})
    assert found["ioctl_tiocsti"] == errno.ENOTTY
    assert found["seccomp"] == "2"


def test_the_filter_names_the_issue_list() -> None:
    required = {
        "mount",
        "umount2",
        "unshare",
        "setns",
        "ptrace",
        "bpf",
        "keyctl",
        "add_key",
        "request_key",
        "clock_settime",
        "settimeofday",
        "adjtimex",
        "kexec_load",
        "init_module",
        "finit_module",
        "perf_event_open",
    }
    assert required <= set(DENIED)
    assert TIOCSTI == 0x5412
    assert build_filter() is not None

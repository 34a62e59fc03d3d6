"""Run one command the way every namespace sandbox process starts, for the tests."""

from __future__ import annotations

import os
import subprocess

from stockade.sandbox.bwrap import Profile, command
from stockade.sandbox.seccomp import bpf_program, program_fd


def run_confined(
    profile: Profile, argv: list[str], *, program: bytes | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``argv`` under ``profile`` and the seccomp ``program`` (Stockade's by default)."""
    fd = program_fd(bpf_program() if program is None else program)
    try:
        return subprocess.run(
            command(profile, argv, seccomp_fd=fd),
            pass_fds=(fd,),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(fd)

"""The in-sandbox agent (``native/agent.c``, see docs/agent-protocol.md), built on demand,
and the ``gvisor`` backend's preloaded fix (``native/statx_fix.c``, see its comment).

The binary is named after a digest of its source, so an edited ``agent.c`` is rebuilt and a
running daemon never execs a half-written file: the compiler writes a temporary file in the
build directory, which is then renamed into place, under a file lock so that concurrent
processes build it once.

``python -m stockade.sandbox.native`` builds it and prints its path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from stockade.sandbox.base import SandboxError

NATIVE_DIR = Path(__file__).resolve().parent / "native"
BUILD_DIR = NATIVE_DIR / "build"
CFLAGS = ("-O2", "-static", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-s")
SHARED_CFLAGS = ("-O2", "-shared", "-fPIC", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-s")


def agent_source() -> Path:
    """The agent's C source."""
    return NATIVE_DIR / "agent.c"


def agent_binary() -> Path:
    """The compiled agent for the current source, built first when missing."""
    return _built(agent_source(), "stockade-agent", CFLAGS)


def statx_fix_library() -> Path:
    """The compiled ``statx_fix.so`` for the current source, built first when missing."""
    return _built(NATIVE_DIR / "statx_fix.c", "statx-fix", SHARED_CFLAGS, suffix=".so")


def _built(source: Path, name: str, flags: tuple[str, ...], *, suffix: str = "") -> Path:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    binary = BUILD_DIR / f"{name}-{digest}{suffix}"
    if binary.exists():
        return binary
    try:
        BUILD_DIR.mkdir(mode=0o755, exist_ok=True)
        with (BUILD_DIR / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not binary.exists():  # another process may have built it while we waited
                _compile(source, binary, flags)
    except OSError as exc:
        raise SandboxError(f"cannot build the sandbox's {name} in {BUILD_DIR}: {exc}") from exc
    return binary


def _compile(source: Path, binary: Path, flags: tuple[str, ...]) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{binary.name}-", dir=BUILD_DIR)
    os.close(fd)
    partial = Path(name)
    try:
        try:
            done = subprocess.run(  # noqa: S603 - every argument is ours
                ["gcc", *flags, "-o", str(partial), str(source)],  # noqa: S607 - gcc on PATH
                capture_output=True,
                text=True,
                check=False,
            )
        except FileNotFoundError as exc:
            raise SandboxError(
                "gcc is not installed, so the sandbox agent cannot be built: run `make install`"
            ) from exc
        if done.returncode != 0:
            raise SandboxError(
                f"building the sandbox agent failed (is a static libc installed? "
                f"run `make install`):\n{done.stderr.strip()}"
            )
        partial.chmod(0o755)
        partial.replace(binary)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def main() -> None:
    print(agent_binary())
    print(statx_fix_library())


if __name__ == "__main__":
    main()

"""The OCI bundle (``config.json``) of one ``gvisor`` sandbox, built from its spec.

The root is the same ``host`` image as ``namespace`` builds with bubblewrap: an empty,
read-only root directory holding only mount points and the merged-/usr symlinks, the
host's ``/usr`` bound read-only, Stockade's own ``/etc`` (no accounts or secrets of the
host's), the agent and its aliases under ``/.stockade``, and the sandbox's storage (one
size-capped tmpfs on the host) bound at ``/tmp``, ``/home/sandbox`` and ``/dev/shm``.

What carries over from ``namespace``, and how:

- the sandbox's uid and gid, no capabilities at all, ``noNewPrivileges``;
- the seccomp deny-list (``seccomp.oci_profile``), enforced by gVisor's Sentry on top of
  the Sentry's own host filter (runsc's ``--oci-seccomp``), less ``syslog``: inside
  gVisor it reads the Sentry's own log, never the host's (``GVISOR_DENIED``);
- the pids limit as ``RLIMIT_NPROC``: the host's pids cgroup counts the Sentry's threads
  and the ptrace platform's stub processes (about 12 per sandbox process here), not the
  sandbox's processes, so the limit the sandbox sees is enforced inside the Sentry;
- memory and cpu through the host's cgroups (``cgroups.py``), around all of runsc;
- no network: runsc's ``--network=none``.

There is no user namespace: runsc's gofer would create files as the mapped host uid while
the Sentry sees the unmapped owner (measured: the home became unwritable). Files in the
storage are owned on the host by the sandbox's own uid, under a directory only root can
enter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.sandbox.seccomp import DENIED, oci_profile

# `namespace`'s deny-list, less what gVisor answers by itself without the host's kernel.
GVISOR_DENIED = tuple(name for name in DENIED if name != "syslog")

NOFILE = 1024
NOFILE_MAX = 65536


@dataclass(frozen=True, slots=True)
class Bundle:
    """Everything one sandbox's ``config.json`` says."""

    root: Path
    uid: int
    gid: int
    pids: int
    env: Mapping[str, str]
    args: tuple[str, ...]
    read_only: Iterable[tuple[str, str]]  # (host source, sandbox target)
    writable: Iterable[tuple[str, str]]

    def config(self) -> dict[str, Any]:
        """The OCI runtime spec, as runsc reads it."""
        no_capabilities: dict[str, list[str]] = {
            kind: [] for kind in ("bounding", "effective", "inheritable", "permitted", "ambient")
        }
        mounts: list[dict[str, Any]] = [{"destination": "/proc", "type": "proc", "source": "proc"}]
        mounts += [_bind(source, target, "ro") for source, target in self.read_only]
        mounts += [_bind(source, target, "rw") for source, target in self.writable]
        return {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": self.uid, "gid": self.gid},
                "args": list(self.args),
                "env": [f"{name}={value}" for name, value in self.env.items()],
                "cwd": "/",
                "capabilities": no_capabilities,
                "rlimits": [
                    {"type": "RLIMIT_NOFILE", "soft": NOFILE, "hard": NOFILE_MAX},
                    {"type": "RLIMIT_NPROC", "soft": self.pids, "hard": self.pids},
                ],
                "noNewPrivileges": True,
            },
            "root": {"path": str(self.root), "readonly": True},
            "hostname": "sandbox",
            "mounts": mounts,
            "linux": {
                "namespaces": [
                    {"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount")
                ],
                "seccomp": oci_profile(GVISOR_DENIED),
            },
        }


def _bind(source: str, target: str, mode: str) -> dict[str, Any]:
    return {
        "destination": target,
        "type": "bind",
        "source": source,
        "options": ["rbind", mode, "nosuid", "nodev"],
    }

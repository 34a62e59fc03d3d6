"""Issue 6, acceptance 4: nothing of a ``gvisor`` sandbox is left after destroy, or after
``kill -9`` of the daemon and a restart, or after a clean stop: no ``runsc`` process, no
container state under the backend's runsc root, no cgroup and no mount."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

from stockade.sandbox.namespace import instance_name
from stockade.testing import ADMIN_PASSWORD, daemon_process, wait_until
from tests.cli.test_sandbox_remains import RUN_DIR, cgroup_dirs, create, login
from tests.sandbox.test_gvisor import runsc_list

GVISOR = {"isolation": {"runtime_class": "gvisor"}}


def runsc_processes(root: Path) -> list[str]:
    """Processes whose command line names the backend's run directory (runsc, its
    Sentry and gofer all carry ``--root=<root>/runsc``)."""
    needle = str(root)
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if needle in cmdline:
            found.append(f"{process.pid}: {cmdline[:200]}")
    return found


def containers(root: Path) -> list[str]:
    """What ``runsc list`` knows under the backend's root ([] when the root is gone)."""
    return runsc_list(root / "runsc") if (root / "runsc").is_dir() else []


def mounts_under(root: Path) -> list[str]:
    prefix = f"{root}/"
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [p for p in points if p.startswith(prefix)]


def remains(root: Path, instance: str) -> list[str]:
    return (
        runsc_processes(root)
        + [f"container {c}" for c in containers(root)]
        + [f"cgroup {g}" for g in cgroup_dirs(instance)]
        + [f"mount {m}" for m in mounts_under(root)]
    )


def test_nothing_of_gvisor_remains_after_destroy_kill_and_restart(tmp_path: Path) -> None:
    home = tmp_path / "state"
    instance = f"{instance_name(home)}-gv"
    root = RUN_DIR / instance
    env = {"STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD, "STOCKADE_SANDBOX_POOL": "0"}

    with daemon_process(home, env=env) as daemon, login(daemon.url) as client:
        first = create(client, **GVISOR)
        assert runsc_processes(root) != []
        assert client.delete(f"/api/v1/environments/{first}").status_code == 204
        assert wait_until(lambda: remains(root, instance) == [], timeout=60)

        survivors = [
            create(client, command=["sh", "-c", "while true; do sleep 1; done"], **GVISOR),
            create(client, **GVISOR),
        ]
        background = client.post(
            f"/api/v1/environments/{survivors[1]}/exec",
            json={"command": ["sh", "-c", "setsid sleep 600 > /dev/null 2>&1 &"]},
        )
        assert background.json()["exit_code"] == 0
        assert len(containers(root)) == 2
        os.kill(daemon.process.pid, signal.SIGKILL)
        daemon.process.wait()

    # The restart's recovery ends and deletes what the crashed daemon left.
    with daemon_process(home, env=env) as daemon, login(daemon.url) as client:
        assert wait_until(lambda: remains(root, instance) == [], timeout=60)
        for env_id in survivors:
            body = client.get(f"/api/v1/environments/{env_id}").json()
            assert body["status"] == "failed", body
        still = create(client, **GVISOR)
        assert client.get(f"/api/v1/environments/{still}").json()["status"] == "running"

    # A clean stop takes its sandboxes and the backend's whole run directory.
    assert remains(root, instance) == []
    assert not root.exists()

"""Acceptance: after destroy, and after ``kill -9`` of the daemon and a restart, the host
keeps no bwrap or agent process, no cgroup and no mount of any sandbox."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import psutil

from stockade.sandbox.bwrap import Account
from stockade.sandbox.cgroups import CgroupLayout
from stockade.sandbox.namespace import instance_name
from stockade.testing import ADMIN_PASSWORD, daemon_process

RUN_DIR = Path("/run/stockade")


def sandbox_processes() -> list[str]:
    """Processes running as the sandbox account, or bubblewrap, or the agent."""
    uid = Account.lookup().uid
    found = []
    for process in psutil.process_iter(["uids", "cmdline"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if process.info["uids"].real == uid or "/.stockade/agent" in cmdline:
                found.append(f"{process.pid}: {cmdline}")
        except (psutil.Error, AttributeError):
            continue
    return found


def cgroup_dirs(instance: str) -> list[Path]:
    return [
        group
        for root in CgroupLayout.detect().roots()
        if (root / f"stockade-{instance}").is_dir()
        for group in (root / f"stockade-{instance}").iterdir()
        if group.is_dir()
    ]


def mounts(instance: str) -> list[str]:
    prefix = str(RUN_DIR / instance)
    with open("/proc/self/mountinfo") as mountinfo:
        return [line.split()[4] for line in mountinfo if line.split()[4].startswith(prefix)]


def create(client: httpx.Client, **extra: object) -> str:
    response = client.post("/api/v1/environments", json={"name": "remains", **extra})
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "running", response.text
    return str(response.json()["id"])


def login(url: str) -> httpx.Client:
    token = httpx.post(
        f"{url}/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    ).json()["token"]
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_nothing_remains_after_destroy_kill_and_restart(tmp_path: Path) -> None:
    home = tmp_path / "state"
    instance = instance_name(home)
    env = {"STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD}
    assert sandbox_processes() == []

    with daemon_process(home, env=env) as daemon, login(daemon.url) as client:
        first = create(client)
        assert len(cgroup_dirs(instance)) > 0
        assert len(mounts(instance)) == 1
        assert client.delete(f"/api/v1/environments/{first}").status_code == 204
        assert sandbox_processes() == []
        assert cgroup_dirs(instance) == []
        assert mounts(instance) == []

        survivors = [
            create(client, command=["sh", "-c", "while true; do sleep 1; done"]),
            create(client),
            create(client),
        ]
        background = client.post(
            f"/api/v1/environments/{survivors[1]}/exec",
            json={"command": ["sh", "-c", "setsid sleep 600 > /dev/null 2>&1 &"]},
        )
        assert background.json()["exit_code"] == 0
        assert len(mounts(instance)) == 3
        assert sandbox_processes() != []
        os.kill(daemon.process.pid, signal.SIGKILL)
        daemon.process.wait()

    # bubblewrap dies with its parent; what it cannot take with it is for the restart.
    with daemon_process(home, env=env) as daemon, login(daemon.url) as client:
        assert sandbox_processes() == []
        assert cgroup_dirs(instance) == []
        assert mounts(instance) == []
        for env_id in survivors:
            body = client.get(f"/api/v1/environments/{env_id}").json()
            assert body["status"] == "failed", body
            assert "daemon stopped" in body["status_reason"]
        still = create(client)
        assert client.get(f"/api/v1/environments/{still}").json()["status"] == "running"

    # A clean stop takes its sandboxes, their cgroups, mounts and run directory with it.
    assert sandbox_processes() == []
    assert cgroup_dirs(instance) == []
    assert mounts(instance) == []
    assert not (RUN_DIR / instance).exists()

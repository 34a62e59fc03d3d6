"""Acceptance: after destroy, and after ``kill -9`` of the daemon and a restart, the host
keeps no bwrap or agent process, no cgroup and no mount of any sandbox. The daemon runs
with a warm pool, whose sandboxes (named ``pool-…``) are expected while it runs and must
be gone after a crash and restart, and after a clean stop."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import psutil

from stockade.sandbox.bwrap import Account
from stockade.sandbox.cgroups import CgroupLayout
from stockade.sandbox.namespace import instance_name
from stockade.testing import ADMIN_PASSWORD, daemon_process, wait_until

RUN_DIR = Path("/run/stockade")


POOL = 2


def in_pool(path: str) -> bool:
    return Path(path).name.startswith("pool-")


def sandbox_processes(instance: str, *, pooled: bool = False) -> list[str]:
    """Processes of this daemon's sandboxes (the sandbox account's, or the agent, in the
    daemon's cgroups: a process cannot leave its cgroup, and the cgroup cannot be removed
    while it lives); without ``pooled``, not those of the warm pool's sandboxes."""
    uid = Account.lookup().uid
    found = []
    for process in psutil.process_iter(["uids", "cmdline"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if process.info["uids"].real != uid and "/.stockade/agent" not in cmdline:
                continue
            groups = Path(f"/proc/{process.pid}/cgroup").read_text().splitlines()
        except (psutil.Error, AttributeError, OSError):
            continue
        memory = next((g.split(":", 2)[2] for g in groups if ":memory:" in g), "")
        if f"/stockade-{instance}/" in memory and (pooled or not in_pool(memory)):
            found.append(f"{process.pid}: {cmdline} in {memory}")
    return found


def cgroup_dirs(instance: str, *, pooled: bool = False) -> list[Path]:
    return [
        group
        for root in CgroupLayout.detect().roots()
        if (root / f"stockade-{instance}").is_dir()
        for group in (root / f"stockade-{instance}").iterdir()
        if group.is_dir() and (pooled or not in_pool(str(group)))
    ]


def mounts(instance: str, *, pooled: bool = False) -> list[str]:
    """Mounts of sandboxes: below the daemon's own run directory (itself a tmpfs)."""
    prefix = f"{RUN_DIR / instance}/"
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [p for p in points if p.startswith(prefix) and (pooled or not in_pool(p[:-3]))]


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
    env = {"STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD, "STOCKADE_SANDBOX_POOL": str(POOL)}
    assert sandbox_processes(instance, pooled=True) == []

    with daemon_process(home, env=env) as daemon, login(daemon.url) as client:
        first = create(client)
        assert client.delete(f"/api/v1/environments/{first}").status_code == 204
        # Whether `first` came from the pool or not, what is left is the pool, refilled:
        # exactly POOL sandboxes, three processes each (bubblewrap's monitor and init,
        # and the agent), one cgroup and one storage mount each.
        assert wait_until(
            lambda: (
                len({p.name for p in cgroup_dirs(instance, pooled=True)}) == POOL
                and len(mounts(instance, pooled=True)) == POOL
                and len(sandbox_processes(instance, pooled=True)) == 3 * POOL
            ),
            timeout=15.0,
        )
        assert sandbox_processes(instance) == []
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
        assert len(mounts(instance, pooled=True)) >= 3
        old_pool = {p.name for p in cgroup_dirs(instance, pooled=True) if in_pool(str(p))}
        os.kill(daemon.process.pid, signal.SIGKILL)
        daemon.process.wait()

    # bubblewrap dies with its parent; what it cannot take with it is for the restart.
    with daemon_process(home, env=env) as daemon, login(daemon.url) as client:
        assert sandbox_processes(instance) == []
        assert cgroup_dirs(instance) == []
        assert mounts(instance) == []
        remaining = {p.name for p in cgroup_dirs(instance, pooled=True)}
        assert remaining.isdisjoint(old_pool), "the crashed daemon's pool was not cleaned"
        for env_id in survivors:
            body = client.get(f"/api/v1/environments/{env_id}").json()
            assert body["status"] == "failed", body
            assert "daemon stopped" in body["status_reason"]
        still = create(client)
        assert client.get(f"/api/v1/environments/{still}").json()["status"] == "running"

    # A clean stop takes its sandboxes, its pool, their cgroups, mounts and run directory.
    assert sandbox_processes(instance, pooled=True) == []
    assert cgroup_dirs(instance, pooled=True) == []
    assert mounts(instance, pooled=True) == []
    assert not (RUN_DIR / instance).exists()

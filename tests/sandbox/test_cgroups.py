"""Sandbox cgroups on this machine's real hierarchies (the suite runs as root).

Each test gets its own Stockade parent group, removed afterwards in every hierarchy even
when the test fails. Children that must be inside the group before they do anything wait
for a line on stdin, so the test can ``add`` them first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stockade.errors import InvalidInput, NotFound
from stockade.sandbox.cgroups import (
    CgroupLayout,
    CgroupLimits,
    SandboxCgroup,
    list_sandbox_groups,
    remove_parent,
)

ROOT = Path("/sys/fs/cgroup")
MiB = 1 << 20
DETECTED = CgroupLayout.detect()
# Where a cgroup2 group and v1 hierarchies are both mounted, kill() is also run without
# the cgroup2 group, through the v1 freezer and signals.
KILL_PATHS = ["as-mounted", *(["v1-only"] if DETECTED.unified and DETECTED.v1 else [])]

Spawn = Callable[[list[str]], "subprocess.Popen[str]"]


@pytest.fixture
def layout() -> CgroupLayout:
    return DETECTED


@pytest.fixture
def parent(layout: CgroupLayout) -> Iterator[str]:
    """A parent group name unique to this test; nothing of it survives the test."""
    name = f"stockade-test-{secrets.token_hex(4)}"
    yield name
    try:
        remove_parent(layout, name)
    finally:
        _scrub(name)
    assert not _leftovers(name)


def _leftovers(parent: str) -> list[Path]:
    return sorted({*ROOT.glob(f"*/{parent}"), *ROOT.glob(parent)})


def _scrub(parent: str) -> None:
    """Last resort after a failed ``remove_parent``: kill and remove what is left."""
    for directory in _leftovers(parent):
        for child in (p for p in directory.iterdir() if p.is_dir()):
            with contextlib.suppress(OSError):
                (child / "cgroup.kill").write_text("1")
            with contextlib.suppress(OSError):
                child.rmdir()
        with contextlib.suppress(OSError):
            directory.rmdir()


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Popen with text pipes; every child is killed and reaped at the end."""
    children: list[subprocess.Popen[str]] = []

    def start(args: list[str]) -> subprocess.Popen[str]:
        child = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()
        child.communicate(timeout=10)


def gated_python(spawn: Spawn, code: str) -> subprocess.Popen[str]:
    """A Python child that runs ``code`` once it reads a line on stdin."""
    return spawn([sys.executable, "-c", f"import sys\nsys.stdin.readline()\n{code}"])


def go(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()


def read_limit(group: SandboxCgroup, controller: str, v1_file: str, v2_file: str) -> str:
    if controller in group.v1:
        return (group.v1[controller] / v1_file).read_text().strip()
    assert group.v2 is not None
    return (group.v2 / v2_file).read_text().strip()


# Layout detection


def test_detect_finds_the_controllers_a_sandbox_needs(layout: CgroupLayout) -> None:
    for controller in ("memory", "pids", "cpu"):
        assert controller in layout.v1 or controller in layout.unified_controllers
    for root in layout.roots():
        assert (root / "cgroup.procs").is_file()


def test_detect_reads_a_hybrid_mount_table(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"31 23 0:28 / {tmp_path} rw - tmpfs tmpfs rw\n"
        f"32 31 0:29 / {tmp_path}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        f"33 31 0:30 / {tmp_path}/my\\040memory rw - cgroup cgroup rw,memory\n"
        f"34 31 0:31 / {tmp_path}/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
        f"35 31 0:32 / {tmp_path}/unified rw - cgroup2 cgroup2 rw\n"
        "36 23 0:33 / /elsewhere/pids rw - cgroup cgroup rw,pids\n"
    )
    layout = CgroupLayout.detect(tmp_path, mountinfo=mountinfo)
    assert dict(layout.v1) == {
        "cpu": tmp_path / "cpu,cpuacct",
        "cpuacct": tmp_path / "cpu,cpuacct",
        "memory": tmp_path / "my memory",
    }
    assert layout.unified == tmp_path / "unified"
    assert layout.unified_controllers == frozenset()
    # cpu and cpuacct share one directory; there is no pids hierarchy under the root.
    group = SandboxCgroup.locate(layout, "box")
    assert group.dirs == [
        tmp_path / "my memory" / "stockade" / "box",
        tmp_path / "cpu,cpuacct" / "stockade" / "box",
        tmp_path / "unified" / "stockade" / "box",
    ]


def test_detect_reads_a_pure_v2_mount_table(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"30 23 0:26 / {tmp_path} rw - cgroup2 cgroup2 rw,nsdelegate\n")
    layout = CgroupLayout.detect(tmp_path, mountinfo=mountinfo)
    assert layout == CgroupLayout({}, tmp_path, frozenset(layout.unified_controllers))
    assert layout.v2_limited() == {"memory", "pids", "cpu"}


def test_pure_v2_limits_go_to_v2_files_with_controllers_enabled(tmp_path: Path) -> None:
    # A plain directory stands in for a cgroup2 root: the files the module writes appear.
    layout = CgroupLayout({}, tmp_path, frozenset({"cpu", "io", "memory", "pids"}))
    limits = CgroupLimits(memory_bytes=64 * MiB, pids=20, cpu_millicores=250)
    group = SandboxCgroup.create(layout, "box", limits, parent="owner")
    enabled = "+cpu +memory +pids"
    assert (tmp_path / "cgroup.subtree_control").read_text() == enabled
    assert (tmp_path / "owner" / "cgroup.subtree_control").read_text() == enabled
    box = tmp_path / "owner" / "box"
    assert group.dirs == [box]
    assert (box / "memory.max").read_text() == str(64 * MiB)
    assert (box / "pids.max").read_text() == "20"
    assert (box / "cpu.max").read_text() == "25000 100000"
    # No memory.swap.max is created: the kernel has it only when it accounts swap.
    assert not (box / "memory.swap.max").exists()


# Creation and removal


def test_create_writes_limits_and_destroy_removes_every_directory(
    layout: CgroupLayout, parent: str
) -> None:
    limits = CgroupLimits(memory_bytes=64 * MiB, pids=20, cpu_millicores=250)
    group = SandboxCgroup.create(layout, "box", limits, parent=parent)
    assert group.dirs
    assert all(d.is_dir() for d in group.dirs)
    assert {d.parent.name for d in group.dirs} == {parent}
    assert read_limit(group, "memory", "memory.limit_in_bytes", "memory.max") == str(64 * MiB)
    swap = read_limit(group, "memory", "memory.memsw.limit_in_bytes", "memory.swap.max")
    assert swap == (str(64 * MiB) if "memory" in group.v1 else "0")
    assert read_limit(group, "pids", "pids.max", "pids.max") == "20"
    if "cpu" in group.v1:
        assert (group.v1["cpu"] / "cpu.cfs_period_us").read_text().strip() == "100000"
        assert (group.v1["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "25000"
    else:
        assert read_limit(group, "cpu", "", "cpu.max") == "25000 100000"

    group.destroy()
    assert not any(d.exists() for d in group.dirs)
    assert all(d.parent.is_dir() for d in group.dirs)


def test_no_limits_means_unlimited(layout: CgroupLayout, parent: str) -> None:
    group = SandboxCgroup.create(layout, "box", parent=parent)
    assert read_limit(group, "pids", "pids.max", "pids.max") == "max"
    group.destroy()


def test_create_refuses_an_existing_group(layout: CgroupLayout, parent: str) -> None:
    SandboxCgroup.create(layout, "box", parent=parent)
    with pytest.raises(FileExistsError):
        SandboxCgroup.create(layout, "box", parent=parent)


@pytest.mark.parametrize("name", ["", "..", "a/b", "-x", "cgroup.procs", "x" * 65])
def test_names_are_single_safe_components(layout: CgroupLayout, name: str) -> None:
    with pytest.raises(InvalidInput):
        SandboxCgroup.locate(layout, name)
    with pytest.raises(InvalidInput):
        SandboxCgroup.locate(layout, "box", parent=name)


def test_destroy_is_idempotent(layout: CgroupLayout, parent: str) -> None:
    group = SandboxCgroup.create(layout, "box", parent=parent)
    group.dirs[0].rmdir()  # partly gone already
    group.destroy()
    group.destroy()
    assert not any(d.exists() for d in group.dirs)


def test_list_and_open_reattach_after_a_crash(layout: CgroupLayout, parent: str) -> None:
    SandboxCgroup.create(layout, "kept", parent=parent)
    SandboxCgroup.create(layout, "gone", parent=parent).destroy()
    assert list_sandbox_groups(layout, parent) == ["kept"]

    group = SandboxCgroup.open(layout, "kept", parent=parent)
    group.destroy()
    assert list_sandbox_groups(layout, parent) == []
    with pytest.raises(NotFound):
        SandboxCgroup.open(layout, "kept", parent=parent)


# Processes


@pytest.fixture(params=KILL_PATHS)
def kill_layout(request: pytest.FixtureRequest, layout: CgroupLayout) -> CgroupLayout:
    if request.param == "v1-only":
        return dataclasses.replace(layout, unified=None, unified_controllers=frozenset())
    return layout


def test_kill_empties_the_group(kill_layout: CgroupLayout, parent: str, spawn: Spawn) -> None:
    group = SandboxCgroup.create(kill_layout, "box", parent=parent)
    assert ("freezer" in group.v1) == (kill_layout.unified is None and "freezer" in kill_layout.v1)
    child = spawn(["sleep", "60"])
    group.add(child.pid)
    assert group.pids() == [child.pid]

    assert group.kill()
    assert child.wait(timeout=5) == -9
    assert group.pids() == []
    group.destroy()


def test_kill_reaches_grandchildren(kill_layout: CgroupLayout, parent: str, spawn: Spawn) -> None:
    group = SandboxCgroup.create(kill_layout, "box", parent=parent)
    child = spawn(["sh", "-c", "read x; sleep 60 & sleep 60 & echo started; wait"])
    group.add(child.pid)
    go(child)
    assert child.stdout is not None
    assert child.stdout.readline() == "started\n"
    assert len(group.pids()) == 3

    assert group.kill()
    assert child.wait(timeout=5) == -9
    assert group.pids() == []
    group.destroy()


def test_memory_limit_oom_kills_the_child_only(
    layout: CgroupLayout, parent: str, spawn: Spawn
) -> None:
    group = SandboxCgroup.create(layout, "box", CgroupLimits(memory_bytes=64 * MiB), parent=parent)
    child = gated_python(spawn, "hoard = [b'x' * (1 << 20) for _ in range(512)]\nprint('survived')")
    group.add(child.pid)
    out, _ = child.communicate("go\n", timeout=60)

    assert child.returncode == -9
    assert out == ""
    stats = group.stats()
    assert stats.oom_killed
    assert stats.memory_bytes is not None
    assert stats.memory_bytes <= 64 * MiB
    group.destroy()


def test_pids_limit_stops_forks(layout: CgroupLayout, parent: str, spawn: Spawn) -> None:
    group = SandboxCgroup.create(layout, "box", CgroupLimits(pids=20), parent=parent)
    code = (
        "import subprocess\n"
        "started = []\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        started.append(subprocess.Popen(['sleep', '60']))\n"
        "    except OSError:\n"
        "        pass\n"
        "print(len(started), flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = gated_python(spawn, code)
    group.add(child.pid)
    go(child)
    assert child.stdout is not None
    started = int(child.stdout.readline())

    assert 0 < started < 20  # the child itself is one of the twenty
    assert group.stats().pids <= 20
    assert group.kill()
    assert child.wait(timeout=5) == -9


def test_cpu_limit_throttles_a_busy_loop(layout: CgroupLayout, parent: str, spawn: Spawn) -> None:
    group = SandboxCgroup.create(layout, "box", CgroupLimits(cpu_millicores=100), parent=parent)
    code = (
        "import time\n"
        "wall, cpu = time.monotonic(), time.process_time()\n"
        "while time.monotonic() - wall < 1.0:\n"
        "    pass\n"
        "print(time.process_time() - cpu, time.monotonic() - wall)\n"
    )
    child = gated_python(spawn, code)
    group.add(child.pid)
    out, _ = child.communicate("go\n", timeout=30)
    cpu, wall = (float(x) for x in out.split())

    assert child.returncode == 0
    assert cpu < 0.5 * wall
    cpu_ns = group.stats().cpu_ns
    assert cpu_ns is not None
    assert 0 < cpu_ns < 0.5 * wall * 1e9
    group.destroy()

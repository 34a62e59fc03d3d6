"""Control groups for one sandbox: limits, accounting, and a kill that leaves nothing behind.

Two layouts exist and both are spoken here, chosen at run time from the mount table:

- **hybrid**: cgroup v1 hierarchies (memory, pids, cpu, cpuacct, freezer) plus a cgroup2
  mount, usually ``/sys/fs/cgroup/unified``, with no resource controllers. Limits live in
  v1; the v2 group is joined only for ``cgroup.kill`` and ``cgroup.events``.
- **unified**: one cgroup2 hierarchy with controllers. Limits and teardown share one
  group; the parent enables memory, pids and cpu for its children in
  ``cgroup.subtree_control``.

Every sandbox group sits under a parent that Stockade owns (``stockade`` by default), so a
daemon restarting after a crash can list and destroy what its predecessor left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from stockade.errors import InvalidInput, NotFound

DEFAULT_PARENT = "stockade"
CFS_PERIOD_US = 100_000
KILL_TIMEOUT = 2.0
_ROUND = 0.25  # how long one kill round waits before signalling again, in seconds

V1_CONTROLLERS = frozenset(
    {"blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb", "memory",
     "misc", "net_cls", "net_prio", "perf_event", "pids", "rdma"}
)  # fmt: skip
LIMITED = ("memory", "pids", "cpu")  # the controllers whose limits a sandbox sets
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True, slots=True)
class _File:
    """One interface file of a controller, as each hierarchy version names it."""

    controller: str
    v1: str
    v2: str


_MEMORY_MAX = _File("memory", "memory.limit_in_bytes", "memory.max")
_SWAP_MAX = _File("memory", "memory.memsw.limit_in_bytes", "memory.swap.max")
_MEMORY_CURRENT = _File("memory", "memory.usage_in_bytes", "memory.current")
_MEMORY_EVENTS = _File("memory", "memory.oom_control", "memory.events")
_PIDS_MAX = _File("pids", "pids.max", "pids.max")
_PIDS_CURRENT = _File("pids", "pids.current", "pids.current")
_CPU_MAX = _File("cpu", "cpu.cfs_quota_us", "cpu.max")


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """What a sandbox may use; None is unlimited."""

    memory_bytes: int | None = None
    pids: int | None = None
    cpu_millicores: int | None = None


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """A sandbox's usage; None where no mounted controller accounts for it."""

    memory_bytes: int | None
    cpu_ns: int | None
    pids: int
    oom_killed: bool


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """Where the hierarchies are mounted: v1 controller -> mount point, and the cgroup2
    mount with the controllers its root offers."""

    v1: Mapping[str, Path]
    unified: Path | None
    unified_controllers: frozenset[str] = frozenset()

    @classmethod
    def detect(
        cls, root: Path = Path("/sys/fs/cgroup"), *, mountinfo: Path = Path("/proc/self/mountinfo")
    ) -> CgroupLayout:
        """Read the mount table for the cgroup mounts at or under ``root``."""
        v1: dict[str, Path] = {}
        unified: Path | None = None
        for point, fstype, options in _cgroup_mounts(mountinfo.read_text()):
            if not point.is_relative_to(root):
                continue
            if fstype == "cgroup2" and unified is None:
                unified = point
            elif fstype == "cgroup":
                for controller in sorted(options & V1_CONTROLLERS):
                    v1.setdefault(controller, point)
        controllers = frozenset(_read(unified / "cgroup.controllers").split()) if unified else None
        return cls(v1, unified, controllers or frozenset())

    def v1_roots(self) -> dict[str, Path]:
        """The v1 hierarchies a sandbox joins: its limits, cpu accounting, and the freezer
        when there is no cgroup2 group to kill through."""
        wanted = (*LIMITED, "cpuacct", *(() if self.unified else ("freezer",)))
        return {c: self.v1[c] for c in wanted if c in self.v1}

    def v2_limited(self) -> frozenset[str]:
        """The limited controllers that cgroup2 provides because v1 does not."""
        return frozenset(c for c in LIMITED if c not in self.v1 and c in self.unified_controllers)

    def roots(self) -> list[Path]:
        """Every hierarchy root a sandbox group has a directory in."""
        roots = _unique(self.v1_roots().values())
        return [*roots, self.unified] if self.unified else roots


@dataclass(frozen=True, slots=True)
class SandboxCgroup:
    """One sandbox's group: a directory in each hierarchy it uses."""

    name: str
    parent: str
    v1: Mapping[str, Path]  # controller -> this group's directory
    v2: Path | None
    v2_controllers: frozenset[str]

    @classmethod
    def locate(
        cls, layout: CgroupLayout, name: str, *, parent: str = DEFAULT_PARENT
    ) -> SandboxCgroup:
        """The group's paths, whether or not it exists."""
        _check_name(parent)
        _check_name(name)
        v1 = {c: root / parent / name for c, root in layout.v1_roots().items()}
        v2 = layout.unified / parent / name if layout.unified else None
        return cls(name, parent, v1, v2, layout.v2_limited())

    @classmethod
    def create(
        cls,
        layout: CgroupLayout,
        name: str,
        limits: CgroupLimits = CgroupLimits(),
        *,
        parent: str = DEFAULT_PARENT,
    ) -> SandboxCgroup:
        """Make the group in every hierarchy and write its limits. Raises ``FileExistsError``
        if it exists, and removes what it made when a write fails."""
        group = cls.locate(layout, name, parent=parent)
        group._make_parents()
        made: list[Path] = []
        try:
            for directory in group.dirs:
                directory.mkdir()
                made.append(directory)
            group._write_limits(limits)
        except (OSError, InvalidInput):
            for directory in reversed(made):
                directory.rmdir()
            raise
        return group

    @classmethod
    def open(
        cls, layout: CgroupLayout, name: str, *, parent: str = DEFAULT_PARENT
    ) -> SandboxCgroup:
        """Re-attach to an existing group, e.g. one left by a daemon that crashed."""
        group = cls.locate(layout, name, parent=parent)
        if not any(d.is_dir() for d in group.dirs):
            raise NotFound(f"No cgroup {parent}/{name}.")
        return group

    @property
    def dirs(self) -> list[Path]:
        """The group's directories, one per hierarchy."""
        dirs = _unique(self.v1.values())
        return [*dirs, self.v2] if self.v2 else dirs

    def add(self, pid: int) -> None:
        """Move a process into the group in every hierarchy."""
        for directory in self.dirs:
            (directory / "cgroup.procs").write_text(str(pid))

    def empty(self) -> bool:
        """Whether no process is left in the group: one read of cgroup2's
        ``cgroup.events`` when there is one (every sandbox process joins it), else of
        every v1 ``cgroup.procs``."""
        if self.v2 is not None:
            events = _keyed(self.v2 / "cgroup.events", missing_ok=True)
            if "populated" in events:
                return not events["populated"]
        return not any(_procs(d) for d in _unique(self.v1.values()))

    def procs(self) -> list[int]:
        """The processes in the group, read from one hierarchy (every sandbox process
        joins them all): cgroup2's when there is one."""
        directory = self.v2 or next(iter(self.v1.values()), None)
        return _procs(directory) if directory is not None else []

    def pids(self) -> list[int]:
        """The processes in the group, in any of its hierarchies."""
        return sorted({pid for d in self.dirs for pid in _procs(d)})

    def stats(self) -> CgroupStats:
        """Memory and cpu used so far, processes now, and whether the OOM killer fired."""
        pids = self._read_int(_PIDS_CURRENT)
        return CgroupStats(
            memory_bytes=self._read_int(_MEMORY_CURRENT),
            cpu_ns=self._cpu_ns(),
            pids=len(self.pids()) if pids is None else pids,
            oom_killed=self._oom_killed(),
        )

    def kill(self, timeout: float = KILL_TIMEOUT) -> bool:
        """SIGKILL every process in the group; True once it is empty within ``timeout``.

        One write to cgroup2's ``cgroup.kill`` when there is one; otherwise, and in later
        rounds, freeze (v1 freezer), SIGKILL each listed process, thaw, and look again.
        """
        deadline = time.monotonic() + timeout
        fast = self._write_kill()
        while True:
            if not fast:
                self._signal_each()
            fast = False
            if _wait(self._empty, min(deadline, time.monotonic() + _ROUND)):
                return True
            if time.monotonic() >= deadline:
                return False

    def destroy(self, timeout: float = KILL_TIMEOUT) -> None:
        """Kill, then remove every directory; a group that is partly or wholly gone is fine.
        Raises ``OSError`` (EBUSY) if a directory still cannot be removed at ``timeout``."""
        self.kill(timeout)
        deadline = time.monotonic() + timeout
        for directory in self.dirs:
            _rmdir(directory, deadline)

    def set_limits(self, limits: CgroupLimits) -> None:
        """Change the limits of a group that exists (and may hold processes)."""
        try:
            self._write_limits(limits)
        except OSError:
            # v1 refuses a memory limit above the memory+swap one: raise that one first.
            if limits.memory_bytes is None:
                raise
            self._cap_swap(limits.memory_bytes)
            self._write_limits(limits)

    def _make_parents(self) -> None:
        for directory in self.dirs:
            directory.parent.mkdir(exist_ok=True)
        if self.v2 and self.v2_controllers:
            enable = " ".join(f"+{c}" for c in sorted(self.v2_controllers))
            for directory in (self.v2.parent.parent, self.v2.parent):
                (directory / "cgroup.subtree_control").write_text(enable)

    def _write_limits(self, limits: CgroupLimits) -> None:
        if limits.memory_bytes is not None:
            self._write(_MEMORY_MAX, str(limits.memory_bytes))
            self._cap_swap(limits.memory_bytes)
        if limits.pids is not None:
            self._write(_PIDS_MAX, str(limits.pids))
        if limits.cpu_millicores is not None:
            quota = max(1000, limits.cpu_millicores * CFS_PERIOD_US // 1000)
            if "cpu" in self.v1:
                _write_file(self.v1["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
                self._write(_CPU_MAX, str(quota))
            else:
                self._write(_CPU_MAX, f"{quota} {CFS_PERIOD_US}")

    def _cap_swap(self, memory_bytes: int) -> None:
        """Keep swap from extending the memory limit: v1 caps memory+swap at the limit,
        v2 caps swap at 0. The file is absent when the kernel does not account swap."""
        swap = self._path(_SWAP_MAX)
        if swap and swap.exists():
            _write_file(swap, str(memory_bytes) if "memory" in self.v1 else "0")

    def _path(self, file: _File) -> Path | None:
        if file.controller in self.v1:
            return self.v1[file.controller] / file.v1
        if self.v2 and file.controller in self.v2_controllers:
            return self.v2 / file.v2
        return None

    def _write(self, file: _File, value: str) -> None:
        path = self._path(file)
        if path is None:
            raise InvalidInput(f"No {file.controller} controller is mounted to limit with.")
        _write_file(path, value)

    def _read_int(self, file: _File) -> int | None:
        path = self._path(file)
        return int(_read(path)) if path else None

    def _cpu_ns(self) -> int | None:
        if "cpuacct" in self.v1:
            return int(_read(self.v1["cpuacct"] / "cpuacct.usage"))
        stat = self.v2 / "cpu.stat" if self.v2 else None  # cgroup2 accounts cpu time always
        return _keyed(stat)["usage_usec"] * 1000 if stat and stat.exists() else None

    def _oom_killed(self) -> bool:
        path = self._path(_MEMORY_EVENTS)
        if path is None:
            return False
        events = _keyed(path)
        if "oom_kill" in events:
            return events["oom_kill"] > 0
        return int(_read(path.with_name("memory.failcnt"))) > 0  # v1 before Linux 4.13

    def _write_kill(self) -> bool:
        if self.v2 is None:
            return False
        try:
            (self.v2 / "cgroup.kill").write_text("1")
        except FileNotFoundError:  # Linux before 5.14, or the group is gone
            return False
        return True

    def _signal_each(self) -> None:
        freezer = self.v1.get("freezer")
        _freeze(freezer, "FROZEN")
        try:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                    os.kill(pid, signal.SIGKILL)
        finally:
            _freeze(freezer, "THAWED")

    def _empty(self) -> bool:
        if self.v2 and _keyed(self.v2 / "cgroup.events", missing_ok=True).get("populated"):
            return False
        return not any(_procs(d) for d in _unique(self.v1.values()))


def list_sandbox_groups(layout: CgroupLayout, parent: str = DEFAULT_PARENT) -> list[str]:
    """The names of the sandbox groups under ``parent`` in any hierarchy."""
    _check_name(parent)
    names: set[str] = set()
    for root in layout.roots():
        if (root / parent).is_dir():
            names.update(p.name for p in (root / parent).iterdir() if p.is_dir())
    return sorted(names)


def remove_parent(layout: CgroupLayout, parent: str = DEFAULT_PARENT) -> None:
    """Destroy every sandbox group under ``parent``, then the parent itself."""
    for name in list_sandbox_groups(layout, parent):
        SandboxCgroup.locate(layout, name, parent=parent).destroy()
    deadline = time.monotonic() + KILL_TIMEOUT
    for root in layout.roots():
        _rmdir(root / parent, deadline)


def _cgroup_mounts(mountinfo: str) -> Iterator[tuple[Path, str, set[str]]]:
    """(mount point, fstype, super options) of each cgroup mount in a mountinfo text."""
    for line in mountinfo.splitlines():
        fields, sep, tail = line.partition(" - ")
        parts, rest = fields.split(), tail.split()
        if sep and len(parts) >= 5 and len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), parts[4])
            yield Path(point), rest[0], set(rest[2].split(","))


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"Not a usable cgroup name: {name!r}.")


def _unique(paths: Iterable[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))  # co-mounted v1 controllers share a directory


def _write_file(path: Path, value: str) -> None:
    """One write to a cgroup file (a third of ``Path.write_text``'s cost)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    return path.read_text().strip()


def _keyed(path: Path, *, missing_ok: bool = False) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise
    return {key: int(value) for key, value in (line.split() for line in lines if line)}


def _procs(directory: Path) -> list[int]:
    try:
        return [int(line) for line in (directory / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _freeze(freezer: Path | None, state: str) -> None:
    if freezer is None:
        return
    try:
        (freezer / "freezer.state").write_text(state)
    except FileNotFoundError:
        return
    if state == "FROZEN":  # wait, briefly, until no process can fork past the listing
        _wait(lambda: _read(freezer / "freezer.state") != "FREEZING", time.monotonic() + _ROUND)


def _wait(done: Callable[[], bool], until: float) -> bool:
    """Poll ``done`` with short, growing sleeps until it holds or ``until`` passes."""
    pause = 0.0005
    while not done():
        if time.monotonic() >= until:
            return done()
        time.sleep(pause)
        pause = min(pause * 2, 0.01)
    return True


def _rmdir(directory: Path, deadline: float) -> None:
    """Remove a cgroup directory, retrying while the kernel still counts exiting tasks."""
    while True:
        try:
            directory.rmdir()
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)
        else:
            return

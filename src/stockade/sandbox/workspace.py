"""A sandbox's writable storage: one size-capped tmpfs on the host, its disk quota.

The tmpfs is mounted by the daemon (as root, in the host's mount namespace) under the
backend's run directory, owned by the sandbox account, and bound into the sandbox as
``/tmp``, ``/home/sandbox`` and ``/dev/shm``; the sandbox's root and everything else in it
is read-only. All three places draw on the one ``size=`` cap, so filling any of them stops
at the storage limit, and the pages also count against the sandbox's memory cgroup.

``mount(2)`` and ``umount2(2)`` are called through libc (a ``mount`` subprocess would cost
a millisecond per sandbox).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from stockade.sandbox.base import SandboxError

MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

# Sub-directories of the tmpfs and where each appears inside the sandbox.
BINDS = (
    ("tmp", "/tmp", 0o1777),  # noqa: S108 - the sandbox's own /tmp
    ("home", "/home/sandbox", 0o755),
    ("shm", "/dev/shm", 0o1777),  # noqa: S108 - the sandbox's own /dev/shm
)
HOME = "/home/sandbox"

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str, path: Path) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what} {path}: {os.strerror(number)}")


def mount_tmpfs(target: Path, *, size: int, uid: int, gid: int, mode: int = 0o755) -> None:
    """Mount a tmpfs of ``size`` bytes at ``target``, owned by ``uid``:``gid``."""
    options = f"{_tmpfs_options(size)},mode={mode:04o},uid={uid},gid={gid}"
    result = _libc.mount(
        b"stockade", os.fsencode(target), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()
    )
    _check(result, "mount tmpfs on", target)


MS_REMOUNT = 0x20


def _tmpfs_options(size: int) -> str:
    return f"size={size},nr_inodes={max(4096, min(size // 4096, 1 << 20))}"


def unmount(target: Path) -> bool:
    """Detach whatever is mounted at ``target``; False when nothing was."""
    result = _libc.umount2(os.fsencode(target), MNT_DETACH | UMOUNT_NOFOLLOW)
    if result == 0:
        return True
    number = ctypes.get_errno()
    if number in (errno.EINVAL, errno.ENOENT):
        return False
    raise OSError(number, f"umount {target}: {os.strerror(number)}")


def is_mountpoint(path: Path) -> bool:
    """Whether something is mounted exactly at ``path``."""
    wanted = str(path).rstrip("/")
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return any(line.split(" ", 5)[4].replace("\\040", " ") == wanted for line in mountinfo)


def mounts_under(root: Path) -> Iterator[Path]:
    """Every mount point at or below ``root``, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            point = line.split(" ", 5)[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    for point in sorted(found, key=len, reverse=True):
        yield Path(point)


class Workspace:
    """The per-sandbox directory under the run directory, and the tmpfs inside it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.mountpoint = directory / "rw"

    def source(self, name: str) -> Path:
        return self.mountpoint / name

    def create(self, *, size: int, uid: int, gid: int) -> None:
        """Make the directory, mount the capped tmpfs and lay out its sub-directories.
        On failure nothing is left."""
        try:
            self.directory.mkdir(mode=0o711)
            self.mountpoint.mkdir(mode=0o700)
            mount_tmpfs(self.mountpoint, size=size, uid=uid, gid=gid)
            for name, _, mode in BINDS:
                path = self.mountpoint / name
                path.mkdir()
                os.chown(path, uid, gid)
                path.chmod(mode)
        except OSError as exc:
            self.destroy()
            raise SandboxError(f"cannot prepare the sandbox's storage: {exc}") from exc

    def resize(self, size: int) -> None:
        """Change the cap of the mounted tmpfs (it applies inside the sandbox at once: its
        binds share the one file system). Raises ``OSError`` below what is in use."""
        result = _libc.mount(
            None,
            os.fsencode(self.mountpoint),
            None,
            MS_REMOUNT | MS_NOSUID | MS_NODEV,
            _tmpfs_options(size).encode(),
        )
        _check(result, "resize tmpfs on", self.mountpoint)

    def usage(self) -> int | None:
        """Bytes in use on the tmpfs, or None when it is not mounted."""
        try:
            stat = os.statvfs(self.mountpoint)
        except OSError:
            return None
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize

    def remove(self) -> None:
        """The quick path of ``destroy`` for a tmpfs nothing else is mounted in: unmount
        it and remove the two directories. Raises ``OSError`` when that is not enough."""
        unmount(self.mountpoint)
        os.rmdir(self.mountpoint)
        os.rmdir(self.directory)

    def destroy(self) -> None:
        """Unmount and remove; idempotent."""
        if self.directory.exists():
            for point in mounts_under(self.directory):
                unmount(point)
            unmount(self.mountpoint)
        shutil.rmtree(self.directory, ignore_errors=True)

"""Which paths matter: file-system roots whose loss is fatal, disks, and system files.

Paths are compared after lexical normalisation (``//``, ``/./``, ``/usr/..``, trailing
slashes, a trailing ``/*``), so ``rm -rf /usr/../`` is ``rm -rf /`` and ``rm -rf ~/../*``
is ``rm -rf /home``. Relative paths are relative to the task's workspace and never count as
system paths.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Iterable

from stockade.policy.risk import Finding, Risk

# Deleting, recursively re-owning or re-moding one of these destroys the system or a user.
PROTECTED_ROOTS = frozenset(
    {
        "/",
        "~",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/snap",
        "/srv",
        "/sys",
        "/usr",
        "/usr/bin",
        "/usr/include",
        "/usr/lib",
        "/usr/lib64",
        "/usr/local",
        "/usr/sbin",
        "/usr/share",
        "/var",
        "/var/lib",
    }
)
# Writing under these changes the system rather than the task's own files.
_SYSTEM_PREFIXES = (
    "/bin/",
    "/boot/",
    "/dev/",
    "/etc/",
    "/lib",
    "/opt/",
    "/proc/",
    "/root/",
    "/run/",
    "/sbin/",
    "/srv/",
    "/sys/",
    "/usr/",
    "/var/",
)
_STARTUP_FILES = frozenset(
    {".bashrc", ".bash_profile", ".bash_login", ".profile", ".zshrc", ".zprofile", ".bash_logout"}
)
_HOME = re.compile(r"^(?:~[A-Za-z0-9._-]*|\$HOME|\$\{HOME\})(?=/|$)")
_HOME_STAND_IN = "/home/~"
# bash's own devices: a redirection to /dev/tcp/HOST/PORT opens a network connection.
_NETWORK_DEVICE = re.compile(r"^/dev/(?:tcp|udp)/")
_BLOCK_DEVICE = re.compile(
    r"^/dev/(?:(?:sd|hd|vd|xvd)[a-z]|nvme\d|mmcblk\d|md\d|dm-\d|loop\d|sr\d|nbd\d"
    r"|disk/|mapper/|root$|mem$|kmem$|port$)"
)
_HARMLESS = re.compile(r"^/dev/(?:null|zero|stdout|stderr|stdin|tty|fd/\d+|full)$|^/proc/self/fd/")
_GLOB = re.compile(r"[*?\[]")


def normalize(path: str) -> str:
    """Lexically normalise ``path``; home spellings (``~``, ``$HOME``, ``${HOME}``, ``~user``)
    become ``~``, and a trailing ``/*`` or ``/.`` names the directory it is in."""
    path = _HOME.sub("~", path.strip())
    if not path:
        return path
    collapsed = re.sub("/+", "/", path)
    while collapsed.endswith(("/*", "/.")) and len(collapsed) > 2:
        collapsed = collapsed[:-2]
    if collapsed in ("/*", "/."):
        return "/"
    if collapsed.startswith("~/"):
        # Read "~/.." against a stand-in home under /home: it names /home, not the workspace.
        normal = posixpath.normpath(_HOME_STAND_IN + collapsed[1:])
        if normal == _HOME_STAND_IN or normal.startswith(_HOME_STAND_IN + "/"):
            return "~" + normal[len(_HOME_STAND_IN) :]
        return normal
    normal = posixpath.normpath(collapsed)
    return "/" if normal.startswith("//") else normal


def protected_root(path: str, extra: Iterable[str] = ()) -> str | None:
    """The protected root ``path`` names (``/``, ``/etc``, ``~``, ``/home/alice``…), if any.

    A glob that could match one counts: ``/e*`` could be ``/etc``.
    """
    normal = normalize(path)
    roots = PROTECTED_ROOTS | {normalize(p) for p in extra}
    if normal in roots:
        return normal
    if re.fullmatch(r"/home/[^/]+", normal) and not _GLOB.search(normal):
        return normal
    if _GLOB.search(normal):
        for root in sorted(roots):
            if fnmatch.fnmatchcase(root, normal):
                return root
    return None


def describe_root(root: str) -> str:
    """A few words for what deleting ``root`` destroys."""
    if root == "/":
        return "the root file system"
    if root == "~" or root.startswith("/home/"):
        return "a home directory"
    if root == "/home":
        return "every home directory"
    return f"the system directory {root}"


def is_block_device(path: str) -> bool:
    """Whether ``path`` is a disk, partition or raw-memory device (``/dev/sda``, ``/dev/md0``)."""
    return bool(_BLOCK_DEVICE.match(normalize(path)))


def is_network_device(path: str) -> bool:
    """Whether ``path`` is bash's ``/dev/tcp/HOST/PORT`` or ``/dev/udp/HOST/PORT``."""
    return bool(_NETWORK_DEVICE.match(normalize(path)))


def is_harmless_target(path: str) -> bool:
    """Whether writing to ``path`` cannot change anything (``/dev/null``, ``/dev/stderr``…)."""
    return bool(_HARMLESS.match(normalize(path)))


def is_system_path(path: str, extra: Iterable[str] = ()) -> bool:
    """Whether ``path`` belongs to the system (``/etc/passwd``, ``/usr/bin/ls``), is a
    protected root, or is a shell start-up file or SSH key that would outlive the task."""
    normal = normalize(path)
    if protected_root(normal, extra) is not None or normal.startswith(_SYSTEM_PREFIXES):
        return True
    if any(normal.startswith(normalize(p).rstrip("/") + "/") for p in extra):
        return True
    name = posixpath.basename(normal)
    return name in _STARTUP_FILES or "/.ssh/" in f"/{normal}/"


def write_findings(
    path: str, *, verb: str = "writes to", extra: Iterable[str] = (), expanded: bool = False
) -> list[Finding]:
    """How risky it is to write ``path``: nothing for ``/dev/null``, blocked for a disk,
    high for a system path, medium for anything else (the task's own files)."""
    if is_block_device(path):
        return [Finding.block(f"{verb} the disk device {path}, destroying its data")]
    if is_system_path(path, extra):
        return [Finding(Risk.HIGH, f"{verb} {path}, a system path")]
    if expanded:
        return [Finding(Risk.MEDIUM, f"{verb} {path}, a path only known at run time")]
    if is_harmless_target(path):
        return []
    return [Finding(Risk.MEDIUM, f"{verb} {path}")]

"""How a ``namespace`` sandbox process is confined: the bubblewrap command line.

The daemon never starts bubblewrap as root (root-launched bwrap keeps every capability,
measured here: CapEff 1fffeffffff). ``setpriv`` first drops to the dedicated system user
``make install`` creates, then bwrap unshares every namespace (user, pid, mount, ipc,
uts, net, cgroup), maps that user to ``uid`` inside, forbids new user namespaces, sets
no_new_privs, loads the seccomp program, and starts the command with only the declared
environment. Limits come from cgroups (``cgroups.py``); the writable ``/tmp`` is a
size-capped tmpfs.
"""

from __future__ import annotations

import pwd
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from stockade.sandbox.base import SandboxError

SANDBOX_USER = "stockade-sandbox"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Inside the sandbox: a private, size-capped tmpfs, not the host's /tmp.
SANDBOX_TMP = "/tmp"  # noqa: S108
# The image "host": the host's /usr, read-only, with the usual merged-/usr symlinks.
HOST_IMAGE_BINDS = (("/usr", "/usr"),)
HOST_IMAGE_LINKS = (
    ("usr/bin", "/bin"),
    ("usr/sbin", "/sbin"),
    ("usr/lib", "/lib"),
    ("usr/lib64", "/lib64"),
)


@dataclass(frozen=True, slots=True)
class Account:
    """The host account sandboxes run as."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str = SANDBOX_USER) -> Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError as exc:
            raise SandboxError(
                f"the system user {name!r} does not exist: run `make install`"
            ) from exc
        if entry.pw_uid == 0:
            raise SandboxError(f"the sandbox user {name!r} must not be uid 0")
        return cls(name, entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything about one confined process that is not its command."""

    account: Account
    uid: int = 1000
    gid: int = 1000
    hostname: str = "sandbox"
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = SANDBOX_TMP
    tmp_bytes: int | None = 64 * 2**20
    share_network: bool = False
    ro_binds: Sequence[tuple[str, str]] = HOST_IMAGE_BINDS
    symlinks: Sequence[tuple[str, str]] = HOST_IMAGE_LINKS
    # Writable binds (host source, sandbox target), mounted after the read-only ones.
    binds: Sequence[tuple[str, str]] = ()
    # Make the sandbox's own root and /dev read-only once everything is mounted, so the
    # binds above are the only writable places.
    read_only_root: bool = False

    def environment(self) -> dict[str, str]:
        """Exactly what the process sees: the declared variables, and PATH and HOME
        when they were not declared."""
        return {"PATH": DEFAULT_PATH, "HOME": self.workdir} | dict(self.env)


def drop_privileges(account: Account) -> list[str]:
    """``setpriv`` to ``account``: the default way in, for callers without the agent."""
    return [
        "setpriv",
        f"--reuid={account.uid}",
        f"--regid={account.gid}",
        "--clear-groups",
        "--",
    ]


def command(
    profile: Profile,
    argv: Sequence[str],
    *,
    seccomp_fd: int,
    launcher: Sequence[str] | None = None,
) -> list[str]:
    """The full command line: the ``launcher`` that drops to the sandbox account (setpriv
    by default), then bwrap, then ``argv``. ``seccomp_fd`` must be passed to the child
    (``pass_fds``) and rewound to the start of the program."""
    if not argv:
        raise SandboxError("nothing to run: the command is empty")
    drop = list(launcher) if launcher is not None else drop_privileges(profile.account)
    isolate = [
        "bwrap",
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--uid",
        str(profile.uid),
        "--gid",
        str(profile.gid),
        "--hostname",
        profile.hostname,
    ]
    if profile.share_network:
        isolate.append("--share-net")
    for source, target in profile.ro_binds:
        isolate += ["--ro-bind", source, target]
    for link, target in profile.symlinks:
        isolate += ["--symlink", link, target]
    isolate += ["--proc", "/proc", "--dev", "/dev"]
    if profile.tmp_bytes is not None:
        isolate += ["--size", str(profile.tmp_bytes), "--tmpfs", SANDBOX_TMP]
    for source, target in profile.binds:
        isolate += ["--bind", source, target]
    if profile.read_only_root:
        isolate += ["--remount-ro", "/dev", "--remount-ro", "/"]
    isolate += ["--chdir", profile.workdir, "--clearenv"]
    for name, value in profile.environment().items():
        isolate += ["--setenv", name, value]
    isolate += ["--seccomp", str(seccomp_fd), "--"]
    return [*drop, *isolate, *argv]

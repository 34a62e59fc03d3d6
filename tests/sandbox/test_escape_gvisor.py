"""Escape and abuse on the ``gvisor`` backend: ``test_escape.py``'s attempts, run on a
gVisor sandbox, and three that only a kernel of the sandbox's own can pass.

Most of ``test_escape.py`` runs here unchanged (imported below). Four of its tests look at
what only a shared kernel shows, and run here in a gVisor form that asks the same
question:

- a memory hog: the host's OOM killer cannot tell the hog from the Sentry (its memory is
  the Sentry's), so it ends the whole sandbox rather than the command; what holds is that
  the limit is kept, the host and the other sandboxes are untouched, and the sandbox is
  reported lost and leaves nothing;
- the read-only root: gVisor checks permissions before the mount's read-only flag, so
  the default user sees EACCES where Linux says EROFS; as root inside, the original test
  passes as is;
- no privileges: gVisor's ``/proc/self/status`` has no ``NoNewPrivs`` or ``CapAmb``
  line; ``prctl`` answers instead;
- two sandboxes: no host process of the first is named after its command (its
  processes live in the Sentry); the host pids tried are runsc's own.

``test_the_files_api_cannot_reach_the_host`` is not repeated: it goes through the app,
which picks its backend from the settings.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from pathlib import Path

import pytest

from stockade.sandbox.base import Resources, SandboxError
from stockade.sandbox.gvisor import GvisorBackend
from stockade.sandbox.oci import GVISOR_DENIED

pytest.register_assert_rewrite("tests.sandbox.contract", "tests.sandbox.test_escape")
from tests.sandbox import contract  # noqa: E402
from tests.sandbox import test_contract_gvisor as gvisor  # noqa: E402
from tests.sandbox import test_escape as escape  # noqa: E402
from tests.sandbox.contract import Sandboxes, processes, run, wait_for  # noqa: E402
from tests.sandbox.test_contract_gvisor import GvisorHome  # noqa: E402

# The fixtures (pytest finds them as module attributes).
backend = gvisor.backend
gvisor_home = gvisor.gvisor_home
sandboxes = contract.sandboxes
sandbox = contract.sandbox
lost = escape.lost


@pytest.fixture
def namespace_home(gvisor_home: GvisorHome) -> GvisorHome:
    """``test_escape``'s tests ask their backend's home the same questions."""
    return gvisor_home


# test_escape.py's attempts that hold on gVisor as they are.
test_a_fork_bomb_is_contained_by_the_pids_limit = (
    escape.test_a_fork_bomb_is_contained_by_the_pids_limit
)
test_disk_fill_stops_at_the_storage_limit = escape.test_disk_fill_stops_at_the_storage_limit
test_storage_larger_than_memory_cannot_starve_the_sandbox = (
    escape.test_storage_larger_than_memory_cannot_starve_the_sandbox
)
test_a_busy_loop_is_throttled_to_its_cpu_limit = (
    escape.test_a_busy_loop_is_throttled_to_its_cpu_limit
)
test_no_egress = escape.test_no_egress
test_the_hosts_secrets_are_out_of_reach = escape.test_the_hosts_secrets_are_out_of_reach
test_a_setuid_binary_does_not_raise_privileges = (
    escape.test_a_setuid_binary_does_not_raise_privileges
)
test_a_fresh_exec_has_only_fds_0_1_2 = escape.test_a_fresh_exec_has_only_fds_0_1_2


async def test_every_denied_system_call_answers_eperm(
    backend: GvisorBackend, sandbox: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same test over gVisor's list, which leaves syslog to gVisor (its own log).
    monkeypatch.setattr(escape, "DENIED", GVISOR_DENIED)
    await escape.test_every_denied_system_call_answers_eperm(backend, sandbox)


# The gVisor forms of four tests (see the module's docstring).


async def test_a_memory_hog_ends_its_sandbox_and_nothing_else(
    backend: GvisorBackend,
    sandboxes: Sandboxes,
    gvisor_home: GvisorHome,
    lost: list[tuple[str, str]],
) -> None:
    bystander = await sandboxes.create()
    sandbox_id = await sandboxes.create(resources=Resources(memory_bytes=64 * escape.MiB))
    group = gvisor_home.group(sandbox_id)
    hog = "b = bytearray(512 << 20); b[::4096] = b'x' * len(b[::4096]); print('allocated')"
    try:
        result = await run(backend, sandbox_id, ["python3", "-c", hog])
    except SandboxError:
        pass  # the Sentry was killed mid-command: the sandbox is gone
    else:
        assert result.exit_code == 137
        assert b"allocated" not in result.stdout
    peak = int((group.v1["memory"] / "memory.max_usage_in_bytes").read_text())
    limit = int((group.v1["memory"] / "memory.limit_in_bytes").read_text())
    assert peak <= limit <= 64 * escape.MiB + (128 << 20)

    async def reported() -> bool:
        return [stopped for stopped, _ in lost] == [sandbox_id]

    await wait_for(reported, "the sandbox to be reported lost", patience=30)
    await backend.destroy(sandbox_id)
    assert gvisor.sandbox_traces(gvisor_home, sandbox_id) == []
    assert await escape.answers(backend, bystander)


async def test_everything_but_the_storage_is_read_only(
    backend: GvisorBackend, sandboxes: Sandboxes, sandbox: str
) -> None:
    for target in ("/planted", "/etc/planted", "/usr/planted", "/.stockade/x", "/etc/passwd"):
        result = await run(backend, sandbox, ["sh", "-c", f"echo x >> {target}"])
        assert result.exit_code != 0, target
        assert b"Permission denied" in result.stderr or b"Read-only" in result.stderr, target
    # As root inside, only the mounts' read-only flag stands in the way: the original test.
    as_root = await sandboxes.create(run_as_user=0, run_as_group=0)
    assert (await run(backend, as_root, ["id", "-u"])).stdout == b"0\n"
    await escape.test_everything_but_the_storage_is_read_only(backend, as_root)


NO_PRIVILEGES_PROBE = r"""
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
PR_GET_NO_NEW_PRIVS, PR_CAP_AMBIENT, IS_SET, PR_CAPBSET_READ = 39, 47, 1, 23
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
print(json.dumps({
    "no_new_privs": libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
    "ambient": [c for c in range(41) if libc.prctl(PR_CAP_AMBIENT, IS_SET, c, 0, 0) == 1],
    "bounding": [c for c in range(41) if libc.prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1],
    "status": {k: v.strip() for k, v in status.items() if k.startswith(("Cap", "Seccomp"))},
}))
"""


async def test_processes_have_no_privileges_and_no_new_ones(
    backend: GvisorBackend, sandbox: str
) -> None:
    result = await run(backend, sandbox, ["python3", "-I", "-c", NO_PRIVILEGES_PROBE])
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["no_new_privs"] == 1
    assert found["ambient"] == []
    assert found["bounding"] == []
    status = found["status"]
    assert status.pop("Seccomp") == "2"
    assert set(status) >= {"CapEff", "CapPrm", "CapInh", "CapBnd"}
    assert set(status.values()) == {"0000000000000000"}


async def test_two_sandboxes_cannot_see_or_signal_each_other(
    backend: GvisorBackend, sandboxes: Sandboxes, gvisor_home: GvisorHome
) -> None:
    first, second = await sandboxes.create(), await sandboxes.create()
    script = (
        "i=0; while [ $i -lt 20 ]; do /bin/true; i=$((i+1)); done; "
        "sleep 300 > /dev/null 2>&1 & echo $!"
    )
    pid = int((await run(backend, first, ["sh", "-c", script])).stdout)

    async def sleeping() -> bool:
        return (await processes(backend, first)).get(pid) == "sleep"

    await wait_for(sleeping, "the first sandbox's sleep")
    host_pids = await asyncio.to_thread(gvisor_home.group(first).pids)
    assert host_pids  # runsc's sandbox, gofer and stubs, on the host
    await backend.write_file(first, "/tmp/first-secret", b"first")
    theirs = await processes(backend, second)
    assert "sleep" not in theirs.values()
    assert pid not in theirs
    assert not set(host_pids) & set(theirs)
    for target in (pid, *host_pids):
        attempt = await run(backend, second, ["sh", "-c", f"kill -0 {target} || kill -9 {target}"])
        assert attempt.exit_code != 0, target
    storage = gvisor_home.storage(first)
    peek = await run(backend, second, ["cat", f"{storage}/rw/tmp/first-secret"])
    assert peek.exit_code != 0
    assert b"first" not in peek.stdout
    alive = await run(backend, first, ["sh", "-c", f"kill -0 {pid} && cat /proc/{pid}/comm"])
    assert (alive.exit_code, alive.stdout) == (0, b"sleep\n")


# What only a kernel of the sandbox's own passes.


async def test_the_kernel_is_gvisors_not_the_hosts(backend: GvisorBackend, sandbox: str) -> None:
    host_version = await asyncio.to_thread(Path("/proc/version").read_text)
    inside = await run(backend, sandbox, ["cat", "/proc/version"])
    assert inside.exit_code == 0, inside.stderr
    assert inside.stdout.decode() != host_version
    assert os.uname().release not in inside.stdout.decode()
    uname = await run(backend, sandbox, ["uname", "-r"])
    assert uname.stdout.decode().strip() != os.uname().release
    dmesg = await run(backend, sandbox, ["dmesg"])
    assert dmesg.exit_code == 0, dmesg.stderr
    assert b"Starting gVisor" in dmesg.stdout
    assert os.uname().release.encode() not in dmesg.stdout


UNIMPLEMENTED_PROBE = r"""
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
found = {}
for name, number in {"fanotify_init": 300, "pkey_alloc": 330, "vserver": 236}.items():
    ctypes.set_errno(0)
    answer = libc.syscall(number, 0, 0, 0, 0, 0, 0)
    found[name] = ctypes.get_errno() if answer == -1 else answer
print(json.dumps(found))
"""


async def test_a_system_call_gvisor_lacks_fails_cleanly(
    backend: GvisorBackend, sandbox: str, lost: list[tuple[str, str]]
) -> None:
    # The host's kernel has fanotify and protection keys (EPERM or a key, not ENOSYS);
    # gVisor implements neither.
    result = await run(backend, sandbox, ["python3", "-I", "-c", UNIMPLEMENTED_PROBE])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == dict.fromkeys(
        ["fanotify_init", "pkey_alloc", "vserver"], errno.ENOSYS
    )
    assert await escape.answers(backend, sandbox)
    assert lost == []


async def test_the_hosts_proc_is_not_visible(backend: GvisorBackend, sandbox: str) -> None:
    daemon = os.getpid()
    listing = await backend.list_files(sandbox, "/proc")
    inside = {int(e.path[6:]) for e in listing if e.path[6:].isdigit()}
    assert inside  # the sandbox's own: its agent at least
    host = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    assert daemon not in inside
    assert len(inside) < 10 < len(host)
    assert (await processes(backend, sandbox)).get(1) == "agent"
    looked = await run(
        backend, sandbox, ["sh", "-c", f"cat /proc/{daemon}/cmdline; ls /proc/{daemon}"]
    )
    assert looked.exit_code != 0
    assert looked.stdout == b""
    mounts = await run(backend, sandbox, ["cat", "/proc/self/mountinfo", "/proc/mounts"])
    host_root = str(Path("/run/stockade"))
    assert host_root.encode() not in mounts.stdout
    host_mounts = await asyncio.to_thread(Path("/proc/self/mountinfo").read_text)
    assert mounts.stdout.decode() != host_mounts

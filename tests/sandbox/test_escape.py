"""Escape and abuse, each a real attempt from inside a running ``namespace`` sandbox,
through the backend interface (and, for file transfer, through the HTTP API).

The launch profile alone is tested in test_bwrap.py, test_seccomp.py and
test_cgroups.py; here the same facts must hold for what the backend really starts.
Resource checks use cgroup accounting (``stats()``), never wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import socket
import subprocess
from pathlib import Path

import pyseccomp
import pytest

from stockade.errors import NotFound
from stockade.sandbox.base import Resources
from stockade.sandbox.namespace import NamespaceBackend
from stockade.sandbox.seccomp import DENIED, TIOCLINUX, TIOCSTI
from stockade.settings import Settings
from stockade.testing import TestApp, bearer

pytest.register_assert_rewrite("tests.sandbox.contract")
from tests.sandbox import contract  # noqa: E402
from tests.sandbox import test_contract_namespace as namespace  # noqa: E402
from tests.sandbox.contract import Sandboxes, processes, run, wait_for  # noqa: E402
from tests.sandbox.test_contract_namespace import NamespaceHome  # noqa: E402

# The fixtures shared with the contract's tests (pytest finds them as module attributes).
backend = namespace.backend
namespace_home = namespace.namespace_home
sandboxes = contract.sandboxes
sandbox = contract.sandbox

MiB = 1 << 20


@pytest.fixture
def lost(backend: NamespaceBackend) -> list[tuple[str, str]]:
    """Sandboxes the backend saw stop on their own; an abuse must not take one down."""
    stopped: list[tuple[str, str]] = []
    backend.on_lost = lambda sandbox_id, reason: stopped.append((sandbox_id, reason))
    return stopped


async def answers(backend: NamespaceBackend, sandbox_id: str) -> bool:
    result = await run(backend, sandbox_id, ["echo", "still here"], timeout=30)
    return result.stdout == b"still here\n" and result.exit_code == 0


# Resources.


async def test_a_fork_bomb_is_contained_by_the_pids_limit(
    backend: NamespaceBackend, sandboxes: Sandboxes, lost: list[tuple[str, str]]
) -> None:
    sandbox_id = await sandboxes.create(resources=Resources(pids=64))
    peak = 0
    bombing = True

    async def watch() -> None:
        nonlocal peak
        while bombing:
            peak = max(peak, (await backend.stats(sandbox_id)).pids)
            await asyncio.sleep(0.02)

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        # The classic: every process starts two more, forever; the exec itself waits.
        bomb = ":(){ :|:& };:; sleep 300"
        result = await run(backend, sandbox_id, ["bash", "-c", bomb], timeout=3)
    finally:
        bombing = False
        await watcher
    assert (result.exit_code, result.timed_out) == (137, True)
    assert b"Resource temporarily unavailable" in result.stderr  # fork() got EAGAIN
    assert 16 < peak <= 64
    # The timeout's kill reaches every process of the bomb.

    async def bomb_gone() -> bool:
        return "bash" not in (await processes(backend, sandbox_id)).values()

    await wait_for(bomb_gone, "the bomb's processes to die", patience=30)
    assert await answers(backend, sandbox_id)
    # The host is fine: it can still start processes.
    done = await asyncio.to_thread(subprocess.run, ["true"], check=False, timeout=30)
    assert done.returncode == 0
    assert lost == []


async def test_a_memory_hog_is_oom_killed_inside(
    backend: NamespaceBackend, sandboxes: Sandboxes, lost: list[tuple[str, str]]
) -> None:
    sandbox_id = await sandboxes.create(resources=Resources(memory_bytes=64 * MiB))
    hog = "b = bytearray(512 << 20); print('allocated', len(b))"
    result = await run(backend, sandbox_id, ["python3", "-c", hog])
    assert result.exit_code == 137  # SIGKILL, from the OOM killer
    assert result.timed_out is False
    assert b"allocated" not in result.stdout
    assert (await backend.stats(sandbox_id)).memory_bytes <= 64 * MiB
    assert await answers(backend, sandbox_id)
    assert lost == []


async def test_disk_fill_stops_at_the_storage_limit(
    backend: NamespaceBackend, sandboxes: Sandboxes
) -> None:
    sandbox_id = await sandboxes.create(resources=Resources(storage_bytes=8 * MiB))
    for place in ("/tmp", "/home/sandbox", "/dev/shm"):
        fill = await run(backend, sandbox_id, ["sh", "-c", f"head -c 64M /dev/zero > {place}/fill"])
        assert fill.exit_code != 0, place
        assert b"No space left on device" in fill.stderr, place
    sizes = await run(
        backend,
        sandbox_id,
        ["stat", "-c", "%s", "/tmp/fill", "/home/sandbox/fill", "/dev/shm/fill"],
    )
    used = sum(int(size) for size in sizes.stdout.split())
    assert 6 * MiB < used <= 8 * MiB  # one cap for the three places together
    disk = (await backend.stats(sandbox_id)).disk_bytes
    assert disk is not None
    assert disk <= 8 * MiB
    assert await answers(backend, sandbox_id)


async def test_storage_larger_than_memory_cannot_starve_the_sandbox(
    backend: NamespaceBackend, sandboxes: Sandboxes, lost: list[tuple[str, str]]
) -> None:
    """The storage is memory (tmpfs): asked for more than the memory limit, it is capped
    below it, so a full disk still leaves memory to clean up with; and the OOM killer's
    first pick is a command, never the agent (which would end the sandbox)."""
    sandbox_id = await sandboxes.create(
        resources=Resources(memory_bytes=64 * MiB, storage_bytes=1024 * MiB)
    )
    fill = await run(backend, sandbox_id, ["sh", "-c", "head -c 128M /dev/zero > /dev/shm/fill"])
    assert b"No space left on device" in fill.stderr
    cleanup = await run(
        backend, sandbox_id, ["sh", "-c", "rm /dev/shm/fill && cat /proc/self/oom_score_adj"]
    )
    assert cleanup.exit_code == 0, cleanup
    assert cleanup.stdout == b"1000\n"
    assert lost == []


async def test_everything_but_the_storage_is_read_only(
    backend: NamespaceBackend, sandbox: str
) -> None:
    for target in ("/planted", "/etc/planted", "/usr/planted", "/usr/lib/planted", "/.stockade/x"):
        result = await run(backend, sandbox, ["sh", "-c", f"echo x >> {target}"])
        assert result.exit_code != 0, target
        assert b"Read-only file system" in result.stderr, target
    # Existing files (root's, as the sandbox sees them) are refused even earlier.
    for target in ("/etc/passwd", "/usr/bin/sh", "/.stockade/agent"):
        result = await run(backend, sandbox, ["sh", "-c", f"echo x >> {target}"])
        assert result.exit_code != 0, target
        assert b"cannot create" in result.stderr, target
    made = await run(backend, sandbox, ["mkdir", "/etc/new", "/new"])
    assert made.exit_code != 0
    assert made.stderr.count(b"Read-only file system") == 2
    unchanged = await run(backend, sandbox, ["sh", "-c", "ls / /etc /usr; tail -c 2 /etc/passwd"])
    assert b"planted" not in unchanged.stdout
    assert b"new" not in unchanged.stdout.split()
    assert not unchanged.stdout.endswith(b"x\n")


async def test_a_busy_loop_is_throttled_to_its_cpu_limit(
    backend: NamespaceBackend, sandboxes: Sandboxes
) -> None:
    sandbox_id = await sandboxes.create(resources=Resources(cpu_millicores=200))
    before = (await backend.stats(sandbox_id)).cpu_nanoseconds
    loop = await run(backend, sandbox_id, ["timeout", "2", "sh", "-c", "while :; do :; done"])
    assert loop.exit_code == 124  # `timeout` stopped it: it ran its 2 s
    used = ((await backend.stats(sandbox_id)).cpu_nanoseconds - before) / 1e9
    # 200m of 2 s is 0.4 s of cpu (the quota is 20 ms per 100 ms period); unthrottled the
    # loop would take the whole 2 s. The cgroup's own accounting is what is compared.
    assert 0.02 < used < 0.7, used


# Network.

NETWORK_PROBE = r"""
import errno, json, socket, sys
port, host_ip = int(sys.argv[1]), sys.argv[2]
found = {}
def attempt(name, call):
    try:
        call()
        found[name] = "ok"
    except OSError as exc:
        found[name] = errno.errorcode.get(exc.errno, str(exc)) if exc.errno else type(exc).__name__
def tcp(address):
    with socket.create_connection(address, timeout=5):
        pass
attempt("loopback", lambda: tcp(("127.0.0.1", port)))
if host_ip:
    attempt("host", lambda: tcp((host_ip, port)))
attempt("internet", lambda: tcp(("1.1.1.1", 443)))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attempt("udp", lambda: udp.sendto(b"x", ("8.8.8.8", 53)))
attempt("dns", lambda: socket.getaddrinfo("deb.debian.org", 80))
attempt("ipv6", lambda: tcp(("::1", port)))
found["interfaces"] = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:])
print(json.dumps(found))
"""


def host_address() -> str:
    """The host's own non-loopback address, if it has a route out ("" if not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        except OSError:
            return ""
        address: str = probe.getsockname()[0]
        return address


async def test_no_egress(backend: NamespaceBackend, sandbox: str) -> None:
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))  # the host's loopback and its own address  # noqa: S104
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        host_ip = host_address()
        result = await run(
            backend, sandbox, ["python3", "-I", "-c", NETWORK_PROBE, str(port), host_ip]
        )
        assert result.exit_code == 0, result.stderr
        found = json.loads(result.stdout)
        try:
            connection, peer = listener.accept()
        except BlockingIOError:
            peer = None  # nothing from the sandbox reached the host's listener
        else:
            connection.close()
    assert peer is None
    assert found["loopback"] == "ECONNREFUSED"  # the sandbox's own lo, with no listener
    if host_ip:
        assert found["host"] in ("ENETUNREACH", "EHOSTUNREACH")
    assert found["internet"] in ("ENETUNREACH", "EHOSTUNREACH")
    assert found["udp"] in ("ENETUNREACH", "EHOSTUNREACH")
    assert found["dns"] != "ok"
    assert found["ipv6"] != "ok"
    assert found["interfaces"] == ["lo"]
    sys_net = await run(backend, sandbox, ["ls", "/sys/class/net"])
    assert sys_net.exit_code != 0 or sys_net.stdout.split() == [b"lo"]


# The host's secrets.

SECRETS_PROBE = r"""
import glob, json, sys
found = {}
for path in sys.argv[1:] + sorted(glob.glob("/proc/[0-9]*/environ")):
    try:
        with open(path, "rb") as f:
            found[path] = f.read().decode("latin-1")
    except OSError as exc:
        found[path] = None
print(json.dumps(found))
"""


def _environ(data: bytes | str) -> set[str]:
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    return {entry for entry in text.split("\0") if entry}


async def test_the_hosts_secrets_are_out_of_reach(
    backend: NamespaceBackend,
    sandboxes: Sandboxes,
    namespace_home: NamespaceHome,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    canary_text = f"canary-{secrets.token_hex(8)}"
    canary = namespace_home.state_dir / "canary-secret"
    canary.write_text(canary_text)
    monkeypatch.setenv("STOCKADE_HOME", str(namespace_home.state_dir))
    monkeypatch.setenv("STOCKADE_CANARY", canary_text)
    sandbox_id = await sandboxes.create()
    daemon = os.getpid()
    monitor = backend._live[sandbox_id].process.pid  # bubblewrap, on the host
    attempts = [
        "/etc/shadow",
        "/etc/gshadow",
        "/usr/../etc/shadow",
        "/proc/1/root/etc/shadow",
        "/proc/self/root/etc/shadow",
        str(canary),
        f"/proc/1/root{canary}",
        f"/proc/self/root{canary}",
        f"/proc/1/cwd{canary}",
        "/proc/1/environ",
        "/proc/1/task/1/environ",
        "/proc/1/root/proc/1/environ",
        "/proc/self/root/proc/1/environ",
        f"/proc/{daemon}/environ",
        f"/proc/{daemon}/root/etc/shadow",
        f"/proc/{monitor}/environ",
        f"/proc/{monitor}/root{canary}",
        "/run/stockade",
    ]
    result = await run(backend, sandbox_id, ["python3", "-I", "-c", SECRETS_PROBE, *attempts])
    assert result.exit_code == 0, result.stderr
    found: dict[str, str | None] = json.loads(result.stdout)
    readable = {path: text for path, text in found.items() if text is not None}
    # No shadow file and no canary, by any path.
    assert not [p for p in readable if "shadow" in p or "canary" in p]
    assert not [p for p, text in readable.items() if canary_text in text]
    # /proc/1 is the sandbox's own init, not the host's.
    host_init = await asyncio.to_thread(Path("/proc/1/cmdline").read_bytes)
    inside_init = await run(backend, sandbox_id, ["cat", "/proc/1/cmdline"])
    assert inside_init.stdout != host_init
    assert inside_init.stdout.split(b"\0")[0] != host_init.split(b"\0")[0]
    # Nothing of the daemon's environment shows in any environ the sandbox can read.
    daemon_environ = _environ(await asyncio.to_thread(Path("/proc/self/environ").read_bytes))
    distinctive = {e for e in daemon_environ if not e.startswith("PATH=")}
    assert distinctive
    for path, text in readable.items():
        assert not (_environ(text) & distinctive), path
    # Nor in an exec's own environment, nor is the canary's directory there.
    env = await run(backend, sandbox_id, ["sh", "-c", f"env; ls {namespace_home.state_dir}"])
    assert canary_text.encode() not in env.stdout
    assert b"STOCKADE_HOME" not in env.stdout
    assert b"No such file or directory" in env.stderr
    with pytest.raises(NotFound):
        await backend.read_file(sandbox_id, str(canary))
    assert canary.read_text() == canary_text


# The kernel's surface.

SYSCALL_PROBE = r"""
import ctypes, fcntl, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
found = {}
for name, number in json.loads(sys.argv[1]).items():
    ctypes.set_errno(0)
    answer = libc.syscall(number, 0, 0, 0, 0, 0, 0)
    found[name] = ctypes.get_errno() if answer == -1 else "succeeded"
for name, request in json.loads(sys.argv[2]).items():
    try:
        fcntl.ioctl(0, request, b"x")
        found[name] = "succeeded"
    except OSError as exc:
        found[name] = exc.errno
# The request number with junk in its upper 32 bits, as a raw system call.
ctypes.set_errno(0)
answer = libc.syscall(16, 0, ctypes.c_ulong((1 << 32) | 0x5412), ctypes.c_char_p(b"x"))
found["ioctl_tiocsti_high_bits"] = ctypes.get_errno() if answer == -1 else "succeeded"
found["seccomp"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")]
print(json.dumps(found))
"""


def denied_numbers() -> dict[str, int]:
    """``seccomp.DENIED`` as this architecture numbers it; names it lacks are left out."""
    numbers: dict[str, int] = {}
    for name in DENIED:
        with contextlib.suppress(OSError, ValueError):
            number = int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))
            if number >= 0:
                numbers[name] = number
    return numbers


async def test_every_denied_system_call_answers_eperm(
    backend: NamespaceBackend, sandbox: str
) -> None:
    numbers = denied_numbers()
    assert len(numbers) >= len(DENIED) - 2  # x86_64 has them all
    ioctls = {"ioctl_tiocsti": TIOCSTI, "ioctl_tioclinux": TIOCLINUX}
    for stdin in (None, b""):  # fd 0 is /dev/null, then a pipe
        result = await run(
            backend,
            sandbox,
            ["python3", "-I", "-c", SYSCALL_PROBE, json.dumps(numbers), json.dumps(ioctls)],
            stdin=stdin,
        )
        assert result.exit_code == 0, result.stderr
        found = json.loads(result.stdout)
        assert found.pop("seccomp") == ["2"]
        # Unfiltered, unshare(0) and ptrace(PTRACE_TRACEME) succeed, and TIOCSTI on a
        # pipe or /dev/null is ENOTTY: EPERM everywhere is the filter's doing.
        assert found == dict.fromkeys([*numbers, *ioctls, "ioctl_tiocsti_high_bits"], errno.EPERM)


async def test_a_setuid_binary_does_not_raise_privileges(
    backend: NamespaceBackend, sandbox: str
) -> None:
    # Real setuid-root binaries (root shows as the overflow uid in the user namespace).
    modes = await run(backend, sandbox, ["stat", "-c", "%a", "/usr/bin/su", "/usr/bin/passwd"])
    assert modes.stdout.split() == [b"4755", b"4755"]
    # Only root may see another account's password status.
    status = await run(backend, sandbox, ["passwd", "-S", "root"])
    assert status.exit_code != 0
    assert not status.stdout.startswith(b"root ")
    su = await run(backend, sandbox, ["su", "-c", "id -u", "root"], stdin=b"\n")
    assert su.exit_code != 0
    assert su.stdout.strip() != b"0"
    mount = await run(backend, sandbox, ["mount", "-t", "tmpfs", "none", "/tmp"])
    assert mount.exit_code != 0
    ids = await run(
        backend, sandbox, ["sh", "-c", "id -u; id -g; grep -E '^(Uid|Gid):' /proc/self/status"]
    )
    uid, gid, uids, gids = ids.stdout.decode().splitlines()
    assert (uid, gid) == ("1000", "1000")
    assert uids.split()[1:] == ["1000"] * 4
    assert gids.split()[1:] == ["1000"] * 4


async def test_processes_have_no_privileges_and_no_new_ones(
    backend: NamespaceBackend, sandbox: str
) -> None:
    result = await run(backend, sandbox, ["cat", "/proc/self/status"])
    lines = result.stdout.decode().splitlines()
    status = {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    for capabilities in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert status[capabilities] == "0000000000000000", capabilities


async def test_a_fresh_exec_has_only_fds_0_1_2(backend: NamespaceBackend, sandbox: str) -> None:
    listing = ["sh", "-c", "ls /proc/$$/fd"]
    assert (await run(backend, sandbox, listing)).stdout.split() == [b"0", b"1", b"2"]
    assert (await run(backend, sandbox, listing, stdin=b"x")).stdout.split() == [b"0", b"1", b"2"]
    # Nor does anything leak from a busy sandbox: a background process, a file transfer.
    await run(backend, sandbox, ["sh", "-c", "sleep 300 > /dev/null 2>&1 &"])
    await backend.write_file(sandbox, "/tmp/f", b"x")
    assert (await run(backend, sandbox, listing)).stdout.split() == [b"0", b"1", b"2"]


def host_pids_named(home: NamespaceHome, sandbox_id: str, name: str) -> list[int]:
    """The host pids of the sandbox's processes called ``name``, from its cgroup."""
    found = []
    for pid in home.group(sandbox_id).pids():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                found.append(pid)
    return found


async def test_two_sandboxes_cannot_see_or_signal_each_other(
    backend: NamespaceBackend, sandboxes: Sandboxes, namespace_home: NamespaceHome
) -> None:
    first, second = await sandboxes.create(), await sandboxes.create()
    # Use up pids in the first so that its sleep's pid is not one the second also has.
    script = (
        "i=0; while [ $i -lt 60 ]; do /bin/true; i=$((i+1)); done; "
        "sleep 300 > /dev/null 2>&1 & echo $!"
    )
    started = await run(backend, first, ["sh", "-c", script])
    pid = int(started.stdout)

    async def sleeping() -> bool:  # the forked shell may not have exec'd sleep yet
        return (await processes(backend, first)).get(pid) == "sleep"

    await wait_for(sleeping, "the first sandbox's sleep")
    host_pids = await asyncio.to_thread(host_pids_named, namespace_home, first, "sleep")
    assert len(host_pids) == 1
    host_pid = host_pids[0]
    await backend.write_file(first, "/tmp/first-secret", b"first")
    theirs = await processes(backend, second)
    assert "sleep" not in theirs.values()
    assert pid not in theirs
    assert host_pid not in theirs
    for target in (pid, host_pid):
        attempt = await run(backend, second, ["sh", "-c", f"kill -0 {target} || kill -9 {target}"])
        assert attempt.exit_code != 0, target
    # Nor can the second reach the first's storage on the host.
    storage = namespace_home.storage(first)
    peek = await run(backend, second, ["cat", f"{storage}/rw/tmp/first-secret"])
    assert peek.exit_code != 0
    assert b"first" not in peek.stdout
    alive = await run(backend, first, ["sh", "-c", f"kill -0 {pid} && cat /proc/{pid}/comm"])
    assert (alive.exit_code, alive.stdout) == (0, b"sleep\n")


# The files API.


async def test_the_files_api_cannot_reach_the_host(
    stockade: TestApp, admin_token: str, settings: Settings
) -> None:
    headers = bearer(admin_token)
    canary = settings.home / "canary-secret"
    canary.write_text(f"canary-{secrets.token_hex(8)}")
    before = (canary.read_bytes(), canary.stat().st_mtime_ns)
    created = await stockade.client.post(
        "/api/v1/environments", json={"name": "x"}, headers=headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "running"
    files = f"/api/v1/environments/{created.json()['id']}/files"

    async def get(path: str) -> int:
        response = await stockade.client.get(files, params={"path": path}, headers=headers)
        assert canary.read_bytes() not in response.content
        return response.status_code

    async def put(path: str, data: bytes = b"planted") -> int:
        response = await stockade.client.put(
            files, params={"path": path}, content=data, headers=headers
        )
        return response.status_code

    async def exec_(*argv: str) -> None:
        response = await stockade.client.post(
            f"/api/v1/environments/{created.json()['id']}/exec",
            json={"command": list(argv)},
            headers=headers,
        )
        assert response.status_code == 200
        assert response.json()["exit_code"] == 0, response.json()

    # Through "..": refused before the sandbox is asked.
    host_canary = str(canary)
    up = "../" * 12 + host_canary.lstrip("/")
    for path in ("../etc/shadow", "/tmp/../etc/shadow", up, "a/../../b", "/home/sandbox/.."):
        assert await get(path) == 400, path
        assert await put(path) == 400, path
    # Absolute host paths name the sandbox's own files: the host's are not there.
    assert await get("/etc/shadow") == 404
    assert await get(host_canary) == 404
    assert await get(str(settings.home / "jwt-secret")) == 404
    assert await put("/etc/shadow") == 403  # the sandbox's /etc is read-only
    # A symlink to the host file, made inside: neither followed for reading nor writing.
    await exec_("ln", "-s", host_canary, "/tmp/link")
    await exec_("ln", "-s", str(canary.parent), "/tmp/dir-link")
    await exec_("ln", "-s", "/proc/1/root" + host_canary, "/tmp/proc-link")
    for link in ("/tmp/link", "/tmp/proc-link"):
        assert await get(link) == 400, link
        assert await put(link) == 400, link
    assert await get(f"/tmp/dir-link/{canary.name}") == 404
    # A write to the canary's host path lands in the sandbox's own /tmp, not on the host.
    planted = settings.home / "planted"
    assert await put(host_canary) == 201
    assert await put(str(planted)) == 201
    assert not planted.exists()
    response = await stockade.client.get(files, params={"path": host_canary}, headers=headers)
    assert response.content == b"planted"
    assert (canary.read_bytes(), canary.stat().st_mtime_ns) == before

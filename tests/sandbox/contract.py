"""The contract every sandbox backend keeps, as tests that know nothing of how it keeps it.

A backend's test module star-imports this module (so pytest collects these tests there)
and provides four fixtures:

- ``backend``: a started ``SandboxBackend``, closed after the test;
- ``host_traces``: ``(sandbox_id) -> list[str]``, whatever of that sandbox is on the host
  (groups, storage, mounts, processes, ...), described; ``[]`` when nothing is;
- ``abandon``: ``async (sandbox_id) -> None``, leaves the sandbox the way a daemon that
  crashed would: the backend forgets it, its processes are gone, the rest stays;
- ``reopen``: ``() -> async context manager`` yielding a second, started backend on the
  same host state (what a restarted daemon makes), closed on exit.

Sandboxes come from the ``sandboxes`` fixture here, which gives each a unique id and
destroys it after the test. Nothing here measures wall-clock time: where order matters
the sandboxed command waits for a file that the test creates once it has seen enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from stockade.errors import InvalidInput, NotFound, PermissionDenied
from stockade.sandbox.base import (
    ExecEvent,
    ExecResult,
    Exit,
    LogLine,
    Output,
    SandboxBackend,
    SandboxSpec,
    collect,
)
from stockade.testing import poll_until

MiB = 1 << 20
# The longest any single step may take before the test gives up (not a measurement).
PATIENCE = 60.0


class Sandboxes:
    """Makes sandboxes with unique ids for one test and destroys them all afterwards."""

    def __init__(self, backend: SandboxBackend) -> None:
        self.backend = backend
        self.ids: list[str] = []

    def spec(self, **fields: Any) -> SandboxSpec:
        """A spec with a fresh id, remembered for the clean-up even if ``create`` fails."""
        sandbox_id = f"ct-{secrets.token_hex(6)}"
        self.ids.append(sandbox_id)
        return SandboxSpec(id=sandbox_id, **fields)

    async def create(self, **fields: Any) -> str:
        info = await self.backend.create(self.spec(**fields))
        return info.id

    async def destroy_all(self) -> None:
        for sandbox_id in self.ids:
            await self.backend.destroy(sandbox_id)


@pytest.fixture
async def sandboxes(backend: SandboxBackend) -> AsyncIterator[Sandboxes]:
    maker = Sandboxes(backend)
    try:
        yield maker
    finally:
        await maker.destroy_all()


@pytest.fixture
async def sandbox(sandboxes: Sandboxes) -> str:
    """One sandbox with the backend's default limits and no command."""
    return await sandboxes.create()


async def run(
    backend: SandboxBackend, sandbox_id: str, argv: list[str], **options: Any
) -> ExecResult:
    """An exec's whole output; ``PATIENCE`` seconds at most."""
    async with asyncio.timeout(PATIENCE):
        return await collect(backend.exec(sandbox_id, argv, **options))


async def events_of(backend: SandboxBackend, sandbox_id: str, argv: list[str]) -> list[ExecEvent]:
    async with (
        asyncio.timeout(PATIENCE),
        contextlib.aclosing(backend.exec(sandbox_id, argv)) as events,
    ):
        return [event async for event in events]


async def wait_for(condition: Callable[[], Any], what: str, *, patience: float = 10.0) -> None:
    """Poll an async ``condition`` until it is true; fail after ``patience`` seconds."""
    try:
        with anyio.fail_after(patience):
            await poll_until(condition)
    except TimeoutError:
        pytest.fail(f"gave up waiting for {what}")


# Inside a sandbox: every live process as "pid comm", without ps (images may lack it).
PROCESSES = (
    "for d in /proc/[0-9]*; do "
    "s=$(cat $d/stat 2>/dev/null) || continue; "
    'case "$s" in *") Z "*) continue;; esac; '  # zombies are already dead
    'echo "${d#/proc/} $(cat $d/comm 2>/dev/null)"; '
    "done"
)


async def processes(backend: SandboxBackend, sandbox_id: str) -> dict[int, str]:
    """The sandbox's live processes as its own /proc shows them: pid -> command name."""
    result = await run(backend, sandbox_id, ["sh", "-c", PROCESSES])
    assert result.exit_code == 0, result.stderr
    found: dict[int, str] = {}
    for line in result.stdout.decode().splitlines():
        pid, _, name = line.partition(" ")
        found[int(pid)] = name
    return found


def _lines(result: ExecResult) -> list[str]:
    return result.stdout.decode().splitlines()


# Create and exec.


async def test_create_then_exec(backend: SandboxBackend, sandboxes: Sandboxes) -> None:
    spec = sandboxes.spec()
    info = await backend.create(spec)
    assert info.id == spec.id
    assert info.backend == backend.name
    assert info.spawn_time_ms >= 0
    result = await run(backend, spec.id, ["echo", "hello", "sandbox"])
    assert (result.stdout, result.stderr, result.exit_code) == (b"hello sandbox\n", b"", 0)
    assert result.timed_out is False


async def test_exit_codes(backend: SandboxBackend, sandbox: str) -> None:
    codes = {
        "true": 0,
        "exit 3": 3,
        "kill -KILL $$": 128 + 9,
        "kill -TERM $$": 128 + 15,
    }
    for script, code in codes.items():
        result = await run(backend, sandbox, ["sh", "-c", script])
        assert (script, result.exit_code, result.timed_out) == (script, code, False)


async def test_a_missing_program_exits_127(backend: SandboxBackend, sandbox: str) -> None:
    result = await run(backend, sandbox, ["no-such-program-here", "arg"])
    assert result.exit_code == 127
    assert result.stdout == b""
    assert b"no-such-program-here" in result.stderr


async def test_an_unknown_sandbox_is_not_found(backend: SandboxBackend) -> None:
    missing = f"ct-missing-{secrets.token_hex(4)}"
    with pytest.raises(NotFound):
        await run(backend, missing, ["true"])
    with pytest.raises(NotFound):
        await backend.read_file(missing, "/tmp/x")
    with pytest.raises(NotFound):
        await backend.write_file(missing, "/tmp/x", b"x")
    with pytest.raises(NotFound):
        await backend.list_files(missing, "/tmp")
    with pytest.raises(NotFound):
        await backend.stats(missing)


# Stdin and output.


async def test_stdin_as_bytes(backend: SandboxBackend, sandbox: str) -> None:
    small = await run(backend, sandbox, ["cat"], stdin=b"one\0two\nthree")
    assert small.stdout == b"one\0two\nthree"
    data = secrets.token_bytes(3 * MiB + 5)  # several frames' worth
    large = await run(backend, sandbox, ["sha256sum"], stdin=data)
    assert large.exit_code == 0
    assert large.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    nothing = await run(backend, sandbox, ["cat"])
    assert (nothing.stdout, nothing.exit_code) == (b"", 0)


async def test_stdin_as_an_async_iterator(backend: SandboxBackend, sandbox: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"first\n", b"", b"second\0", b"third\n"):
            await asyncio.sleep(0)
            yield chunk

    result = await run(backend, sandbox, ["cat"], stdin=chunks())
    assert (result.stdout, result.exit_code) == (b"first\nsecond\0third\n", 0)


async def test_output_streams_before_the_process_exits(
    backend: SandboxBackend, sandbox: str
) -> None:
    # The command prints its pid, then waits for a file that the test creates only once
    # it has received that line: a backend that held output back until the process
    # exits never gets there (and the test fails on its timeout).
    gate = f"/tmp/gate-{secrets.token_hex(4)}"
    script = f"echo $$; while [ ! -e {gate} ]; do sleep 0.01; done; echo done"
    seen: list[ExecEvent] = []
    printed = b""
    async with (
        asyncio.timeout(PATIENCE),
        contextlib.aclosing(backend.exec(sandbox, ["sh", "-c", script])) as events,
    ):
        async for event in events:
            seen.append(event)
            if not isinstance(event, Output) or b"\n" in printed:
                continue
            printed += event.data
            if b"\n" in printed:
                # The first line is here while its process still runs.
                assert not any(isinstance(e, Exit) for e in seen)
                pid = int(printed.split(b"\n")[0])
                assert (await processes(backend, sandbox)).get(pid) == "sh"
                assert (await run(backend, sandbox, ["touch", gate])).exit_code == 0
    assert isinstance(seen[-1], Exit)
    assert seen[-1] == Exit(0)
    output = b"".join(e.data for e in seen if isinstance(e, Output))
    assert output == printed.split(b"\n")[0] + b"\ndone\n"
    assert all(isinstance(e, Output) and e.stream == "stdout" for e in seen[:-1])


async def test_stdout_and_stderr_are_kept_apart(backend: SandboxBackend, sandbox: str) -> None:
    script = "echo out1; echo err1 >&2; echo out2; echo err2 >&2"
    events = await events_of(backend, sandbox, ["sh", "-c", script])
    assert events[-1] == Exit(0)
    streams: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    for event in events[:-1]:
        assert isinstance(event, Output)
        streams[event.stream] += event.data
    assert streams == {"stdout": b"out1\nout2\n", "stderr": b"err1\nerr2\n"}


async def test_large_output_arrives_complete(backend: SandboxBackend, sandbox: str) -> None:
    result = await run(backend, sandbox, ["sh", "-c", "seq 1 1000000; seq 1 300000 >&2"])
    assert result.exit_code == 0
    expected = "".join(f"{i}\n" for i in range(1, 1_000_001)).encode()
    assert len(expected) > 6 * MiB
    assert len(result.stdout) == len(expected)
    assert result.stdout == expected
    assert result.stderr == "".join(f"{i}\n" for i in range(1, 300_001)).encode()


async def test_background_processes_outlive_their_exec(
    backend: SandboxBackend, sandbox: str
) -> None:
    started = await run(backend, sandbox, ["sh", "-c", "sleep 300 > /dev/null 2>&1 & echo $!"])
    assert started.exit_code == 0
    pid = int(started.stdout)
    later = await run(backend, sandbox, ["kill", "-0", str(pid)])
    assert later.exit_code == 0

    async def sleeping() -> bool:  # the forked shell may not have exec'd sleep yet
        return (await processes(backend, sandbox)).get(pid) == "sleep"

    await wait_for(sleeping, "the background process to be sleep")
    for _ in range(3):
        assert (await run(backend, sandbox, ["true"])).exit_code == 0
    assert (await processes(backend, sandbox)).get(pid) == "sleep"


# Environment and working directory.


async def test_only_the_declared_environment_is_visible(
    backend: SandboxBackend, sandboxes: Sandboxes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOCKADE_DAEMON_CANARY", "the-daemons-own")
    sandbox_id = await sandboxes.create(env={"FROM_SPEC": "spec value", "ALSO_SPEC": ""})
    result = await run(
        backend, sandbox_id, ["env", "-0"], env={"FROM_EXEC": "exec\nvalue", "OTHER": "x"}
    )
    assert result.exit_code == 0
    seen = dict(item.split("=", 1) for item in result.stdout.decode().split("\0") if item)
    assert set(seen) == {"PATH", "HOME", "FROM_SPEC", "ALSO_SPEC", "FROM_EXEC", "OTHER"}
    assert (seen["FROM_SPEC"], seen["ALSO_SPEC"]) == ("spec value", "")
    assert seen["FROM_EXEC"] == "exec\nvalue"
    assert seen["PATH"]
    assert seen["HOME"].startswith("/")
    # The exec's variables are its own: the next exec does not see them.
    again = await run(backend, sandbox_id, ["env", "-0"])
    assert "FROM_EXEC" not in again.stdout.decode()
    assert "FROM_SPEC=spec value" in again.stdout.decode()


async def test_the_working_directory(backend: SandboxBackend, sandbox: str) -> None:
    default = await run(backend, sandbox, ["sh", "-c", 'pwd; echo "$HOME"'])
    cwd, home = _lines(default)
    assert cwd == home  # without a cwd, commands start in the sandbox's home
    assert _lines(await run(backend, sandbox, ["pwd"], cwd="/tmp")) == ["/tmp"]
    made = await run(backend, sandbox, ["mkdir", "-p", "/tmp/work/deeper"])
    assert made.exit_code == 0
    assert _lines(await run(backend, sandbox, ["pwd"], cwd="/tmp/work/deeper")) == [
        "/tmp/work/deeper"
    ]
    missing = await run(backend, sandbox, ["pwd"], cwd="/tmp/not-there")
    assert missing.exit_code != 0
    assert missing.stdout == b""


# Files.


async def test_a_file_round_trip_keeps_every_byte(backend: SandboxBackend, sandbox: str) -> None:
    data = bytes(range(256)) * 4096 + b"\0\0tail\0"  # over 1 MiB, NULs included
    await backend.write_file(sandbox, "/tmp/data.bin", data)
    assert await backend.read_file(sandbox, "/tmp/data.bin") == data
    inside = await run(backend, sandbox, ["sha256sum", "/tmp/data.bin"])
    assert inside.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    # Replacing truncates; missing parents are made; an empty file is a file.
    await backend.write_file(sandbox, "/tmp/data.bin", b"short")
    assert await backend.read_file(sandbox, "/tmp/data.bin") == b"short"
    await backend.write_file(sandbox, "/home/sandbox/a/b/c.txt", b"")
    assert await backend.read_file(sandbox, "/home/sandbox/a/b/c.txt") == b""
    # What a command writes, read_file reads.
    made = await run(backend, sandbox, ["sh", "-c", "printf 'x\\0y' > /tmp/made"])
    assert made.exit_code == 0
    assert await backend.read_file(sandbox, "/tmp/made") == b"x\0y"


async def test_a_files_mode_is_applied(backend: SandboxBackend, sandbox: str) -> None:
    await backend.write_file(sandbox, "/tmp/tool", b"#!/bin/sh\necho ran\n", mode=0o750)
    await backend.write_file(sandbox, "/tmp/private", b"secret", mode=0o600)
    stat = await run(
        backend, sandbox, ["sh", "-c", "stat -c '%a %u' /tmp/tool /tmp/private; id -u"]
    )
    tool, private, uid = _lines(stat)
    assert tool == f"750 {uid}"  # the mode as asked, owned by the sandbox's user
    assert private == f"600 {uid}"
    ran = await run(backend, sandbox, ["/tmp/tool"])
    assert (ran.exit_code, ran.stdout) == (0, b"ran\n")
    modes = {e.path: e.mode & 0o7777 for e in await backend.list_files(sandbox, "/tmp")}
    assert modes["/tmp/tool"] == 0o750
    assert modes["/tmp/private"] == 0o600


async def test_list_files(backend: SandboxBackend, sandbox: str) -> None:
    made = await run(backend, sandbox, ["mkdir", "-p", "/tmp/listing/sub"])
    assert made.exit_code == 0
    await backend.write_file(sandbox, "/tmp/listing/a.txt", b"abc")
    await backend.write_file(sandbox, "/tmp/listing/b.bin", b"\0" * 1000)
    entries = await backend.list_files(sandbox, "/tmp/listing")
    by_path = {e.path: e for e in entries}
    assert set(by_path) == {"/tmp/listing/a.txt", "/tmp/listing/b.bin", "/tmp/listing/sub"}
    assert (by_path["/tmp/listing/a.txt"].size, by_path["/tmp/listing/a.txt"].is_dir) == (3, False)
    assert (by_path["/tmp/listing/b.bin"].size, by_path["/tmp/listing/b.bin"].is_dir) == (
        1000,
        False,
    )
    assert by_path["/tmp/listing/sub"].is_dir is True
    assert all(e.modified.tzinfo is not None and e.modified.year >= 2020 for e in entries)
    assert await backend.list_files(sandbox, "/tmp/listing/sub") == []


async def test_a_missing_file_is_not_found(backend: SandboxBackend, sandbox: str) -> None:
    with pytest.raises(NotFound):
        await backend.read_file(sandbox, "/tmp/not-there")
    with pytest.raises(NotFound):
        await backend.list_files(sandbox, "/tmp/not-there")
    with pytest.raises(NotFound):
        await backend.read_file(sandbox, "/tmp/not-there/either")


async def test_reading_a_directory_is_invalid(backend: SandboxBackend, sandbox: str) -> None:
    with pytest.raises(InvalidInput):
        await backend.read_file(sandbox, "/tmp")
    with pytest.raises(InvalidInput):
        await backend.write_file(sandbox, "/tmp", b"x")


async def test_a_symlink_as_last_component_is_refused(
    backend: SandboxBackend, sandbox: str
) -> None:
    await backend.write_file(sandbox, "/tmp/target", b"original")
    linked = await run(
        backend,
        sandbox,
        ["sh", "-c", "ln -s /tmp/target /tmp/link && ln -s /etc/passwd /tmp/passwd-link"],
    )
    assert linked.exit_code == 0
    for link in ("/tmp/link", "/tmp/passwd-link"):
        with pytest.raises(InvalidInput):
            await backend.read_file(sandbox, link)
    with pytest.raises(InvalidInput):
        await backend.write_file(sandbox, "/tmp/link", b"through the link")
    assert await backend.read_file(sandbox, "/tmp/target") == b"original"
    # Still a link, to the same place.
    kept = await run(backend, sandbox, ["readlink", "/tmp/link"])
    assert kept.stdout == b"/tmp/target\n"


async def test_the_root_is_read_only(backend: SandboxBackend, sandbox: str) -> None:
    for path in ("/planted", "/etc/planted", "/usr/planted", "/etc/passwd"):
        with pytest.raises(PermissionDenied):
            await backend.write_file(sandbox, path, b"x")
    # A missing parent cannot be made there either.
    with pytest.raises((PermissionDenied, NotFound)):
        await backend.write_file(sandbox, "/new-dir/file", b"x")
    for path in ("/planted", "/etc/planted", "/usr/planted", "/new-dir/file"):
        with pytest.raises(NotFound):
            await backend.read_file(sandbox, path)
    assert await backend.read_file(sandbox, "/etc/passwd") != b"x"


# Logs.


async def _log_lines(backend: SandboxBackend, sandbox_id: str, **options: Any) -> list[LogLine]:
    async with contextlib.aclosing(backend.logs(sandbox_id, **options)) as lines:
        return [line async for line in lines]


async def test_logs_are_the_commands_output(backend: SandboxBackend, sandboxes: Sandboxes) -> None:
    # The second line waits for the first to be in the log, so their order is certain.
    script = "echo one; while [ ! -e /tmp/go ]; do sleep 0.01; done; echo two >&2; exec sleep 300"
    sandbox_id = await sandboxes.create(command=("sh", "-c", script))

    async def logged(count: int) -> bool:
        return len(await _log_lines(backend, sandbox_id)) >= count

    await wait_for(lambda: logged(1), "the first log line")
    assert (await run(backend, sandbox_id, ["touch", "/tmp/go"])).exit_code == 0
    await wait_for(lambda: logged(2), "the second log line")
    lines = await _log_lines(backend, sandbox_id)
    assert [(line.stream, line.message) for line in lines] == [
        ("stdout", "one"),
        ("stderr", "two"),
    ]
    assert lines[0].timestamp <= lines[1].timestamp
    assert lines[0].timestamp.tzinfo is not None
    tail = await _log_lines(backend, sandbox_id, tail=1)
    assert [(line.stream, line.message) for line in tail] == [("stderr", "two")]
    assert await _log_lines(backend, sandbox_id, tail=0) == []


async def test_following_logs_until_the_sandbox_ends(
    backend: SandboxBackend, sandboxes: Sandboxes
) -> None:
    script = (
        "echo first; while [ ! -e /tmp/next ]; do sleep 0.01; done; echo second >&2; exec sleep 300"
    )
    sandbox_id = await sandboxes.create(command=("sh", "-c", script))
    received: list[tuple[str, str]] = []
    arrived = asyncio.Event()

    async def follow() -> None:
        async with contextlib.aclosing(backend.logs(sandbox_id, follow=True)) as lines:
            async for line in lines:
                received.append((line.stream, line.message))
                arrived.set()

    follower = asyncio.get_running_loop().create_task(follow())
    try:

        async def has(entry: tuple[str, str]) -> bool:
            return entry in received

        await wait_for(lambda: has(("stdout", "first")), "the first followed line")
        assert not follower.done()
        # "second" is printed only now, while the follower waits for more.
        assert (await run(backend, sandbox_id, ["touch", "/tmp/next"])).exit_code == 0
        await wait_for(lambda: has(("stderr", "second")), "a line printed while following")
        assert received == [("stdout", "first"), ("stderr", "second")]
        assert not follower.done()
        await backend.destroy(sandbox_id)
        async with asyncio.timeout(PATIENCE):
            await follower  # the follow ends with the sandbox
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


# Stats.


async def test_stats_memory_and_cpu(backend: SandboxBackend, sandbox: str) -> None:
    before = await backend.stats(sandbox)
    assert before.memory_bytes > 0
    assert before.cpu_nanoseconds >= 0
    busy = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"
    assert (await run(backend, sandbox, ["sh", "-c", busy])).exit_code == 0
    after = await backend.stats(sandbox)
    assert after.cpu_nanoseconds > before.cpu_nanoseconds


async def test_stats_count_a_background_process(backend: SandboxBackend, sandbox: str) -> None:
    before = await backend.stats(sandbox)
    started = await run(backend, sandbox, ["sh", "-c", "sleep 300 > /dev/null 2>&1 & echo $!"])
    assert started.exit_code == 0
    after = await backend.stats(sandbox)
    assert after.pids == before.pids + 1
    killed = await run(backend, sandbox, ["kill", started.stdout.decode().strip()])
    assert killed.exit_code == 0

    async def back_to_before() -> bool:
        return (await backend.stats(sandbox)).pids == before.pids

    await wait_for(back_to_before, "the killed process to leave the count")


async def test_stats_disk_grows_with_a_written_file(backend: SandboxBackend, sandbox: str) -> None:
    # Every backend gives a sandbox its storage, so every backend reports its use.
    before = await backend.stats(sandbox)
    assert before.disk_bytes is not None, f"the {backend.name} backend reports no disk use"
    await backend.write_file(sandbox, "/tmp/bulk", secrets.token_bytes(2 * MiB))
    after = await backend.stats(sandbox)
    assert after.disk_bytes is not None
    assert after.disk_bytes >= before.disk_bytes + 2 * MiB
    removed = await run(backend, sandbox, ["rm", "/tmp/bulk"])
    assert removed.exit_code == 0
    again = await backend.stats(sandbox)
    assert again.disk_bytes is not None
    assert again.disk_bytes < after.disk_bytes


# Timeouts.


async def test_a_timeout_kills_the_whole_tree(backend: SandboxBackend, sandbox: str) -> None:
    result = await run(
        backend, sandbox, ["sh", "-c", "sleep 100 & sleep 100 & echo started; wait"], timeout=0.5
    )
    assert (result.exit_code, result.timed_out) == (137, True)
    assert result.stdout == b"started\n"

    async def no_sleep_left() -> bool:
        return "sleep" not in (await processes(backend, sandbox)).values()

    await wait_for(no_sleep_left, "the timed-out tree to be gone")
    # The sandbox itself goes on.
    assert (await run(backend, sandbox, ["echo", "still here"])).stdout == b"still here\n"


# Destroy, independence, recovery.


async def test_destroy_leaves_nothing(
    backend: SandboxBackend, sandboxes: Sandboxes, host_traces: Callable[[str], list[str]]
) -> None:
    sandbox_id = await sandboxes.create(command=("sleep", "300"))
    await backend.write_file(sandbox_id, "/tmp/data", b"x" * MiB)
    started = await run(backend, sandbox_id, ["sh", "-c", "sleep 300 > /dev/null 2>&1 &"])
    assert started.exit_code == 0
    assert host_traces(sandbox_id)  # the check below can see a sandbox
    await backend.destroy(sandbox_id)
    assert host_traces(sandbox_id) == []
    with pytest.raises(NotFound):
        await run(backend, sandbox_id, ["true"])
    with pytest.raises(NotFound):
        await backend.read_file(sandbox_id, "/tmp/data")
    await backend.destroy(sandbox_id)  # idempotent
    await backend.destroy(f"ct-never-{secrets.token_hex(4)}")
    assert host_traces(sandbox_id) == []


async def test_destroy_with_grace_lets_processes_end(
    backend: SandboxBackend, sandboxes: Sandboxes, host_traces: Callable[[str], list[str]]
) -> None:
    sandbox_id = await sandboxes.create()
    started = await run(backend, sandbox_id, ["sh", "-c", "sleep 300 > /dev/null 2>&1 &"])
    assert started.exit_code == 0
    await backend.destroy(sandbox_id, grace=5.0)
    assert host_traces(sandbox_id) == []
    with pytest.raises(NotFound):
        await run(backend, sandbox_id, ["true"])


async def test_two_sandboxes_are_independent(backend: SandboxBackend, sandboxes: Sandboxes) -> None:
    first, second = await sandboxes.create(), await sandboxes.create()
    await backend.write_file(first, "/tmp/only-in-first", b"first")
    await backend.write_file(first, "/home/sandbox/only-in-first", b"first")
    made = await run(backend, first, ["sh", "-c", "echo x > /dev/shm/only-in-first"])
    assert made.exit_code == 0
    for path in ("/tmp/only-in-first", "/home/sandbox/only-in-first", "/dev/shm/only-in-first"):
        with pytest.raises(NotFound):
            await backend.read_file(second, path)
    listed = await run(backend, second, ["ls", "-A", "/tmp", "/home/sandbox", "/dev/shm"])
    assert b"only-in-first" not in listed.stdout
    # Destroying one leaves the other running.
    await backend.destroy(first)
    assert (await run(backend, second, ["echo", "alive"])).stdout == b"alive\n"


async def test_recover_removes_what_a_crashed_daemon_left(
    backend: SandboxBackend,
    sandboxes: Sandboxes,
    host_traces: Callable[[str], list[str]],
    abandon: Callable[[str], Any],
    reopen: Callable[[], contextlib.AbstractAsyncContextManager[SandboxBackend]],
) -> None:
    sandbox_id = await sandboxes.create()
    await backend.write_file(sandbox_id, "/tmp/data", b"left behind")
    await abandon(sandbox_id)
    assert host_traces(sandbox_id)  # a crash leaves something for recover to find
    async with reopen() as restarted:
        recovery = await restarted.recover([])
        assert sandbox_id in recovery.cleaned
        assert sandbox_id not in recovery.adopted
        assert host_traces(sandbox_id) == []
        with pytest.raises(NotFound):
            await run(restarted, sandbox_id, ["true"])
        # The restarted backend works.
        fresh = Sandboxes(restarted)
        try:
            other = await fresh.create()
            assert (await run(restarted, other, ["echo", "ok"])).stdout == b"ok\n"
        finally:
            await fresh.destroy_all()


# What a backend's module gets from ``from tests.sandbox.contract import *``: the tests,
# the fixtures they use, and the helpers.
__all__ = [
    "PATIENCE",
    "Sandboxes",
    "events_of",
    "processes",
    "run",
    "sandbox",
    "sandboxes",
    "wait_for",
    *(name for name in list(globals()) if name.startswith("test_")),
]

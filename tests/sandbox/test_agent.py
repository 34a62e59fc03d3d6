"""The in-sandbox agent (``stockade-agent``, docs/agent-protocol.md), driven over its pipes.

``serve`` runs directly on the host here (as root, outside any namespace), with a frame
codec written from the spec rather than borrowed from the daemon; one test runs it the way
a sandbox does, under bubblewrap as the sandbox user.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import select
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stockade.sandbox.bwrap import HOST_IMAGE_BINDS, Account, Profile, command
from stockade.sandbox.native import agent_binary
from stockade.sandbox.seccomp import bpf_program, program_fd
from stockade.testing import wait_until

HEADER = struct.Struct(">IBI")
ENTRY = struct.Struct(">cIQqH")
MAX_PAYLOAD = 1 << 20

EXEC, STDIN, SIGNAL, FLOW = 0x01, 0x02, 0x03, 0x04
READ, WRITE, WRITE_DATA, WRITE_END, LIST = 0x10, 0x11, 0x12, 0x13, 0x14
HELLO, STDOUT, STDERR, EXIT = 0x80, 0x81, 0x82, 0x83
DATA, LISTING, END, FAULT = 0x90, 0x92, 0x9F, 0xFF

ENV = {"PATH": "/usr/bin:/bin"}


@dataclass(frozen=True)
class Frame:
    type: int
    channel: int
    payload: bytes


@dataclass(frozen=True)
class Result:
    stdout: bytes
    stderr: bytes
    code: int


def encode(kind: int, channel: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload) + 5, kind, channel) + payload


def exec_payload(argv: list[str], env: dict[str, str], cwd: str, *, stdin: bool) -> bytes:
    strings = [cwd, *argv, *(f"{k}={v}" for k, v in env.items())]
    head = struct.pack(">BHH", 1 if stdin else 0, len(argv), len(env))
    return head + b"".join(s.encode() + b"\0" for s in strings)


class Agent:
    """One agent process and our end of its two pipes."""

    def __init__(self, argv: list[str], **popen: object) -> None:
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **popen,  # type: ignore[call-overload]
        )
        self._buffer = bytearray()

    def send(self, kind: int, channel: int, payload: bytes = b"") -> None:
        self.send_raw(encode(kind, channel, payload))

    def send_raw(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def _fill(self, size: int, deadline: float) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while len(self._buffer) < size:
            left = deadline - time.monotonic()
            assert left > 0, "the agent did not answer in time"
            if select.select([fd], [], [], left)[0]:
                data = os.read(fd, 1 << 20)
                if not data:
                    raise EOFError("the agent closed its stdout")
                self._buffer += data

    def recv(self, timeout: float = 5.0) -> Frame:
        deadline = time.monotonic() + timeout
        self._fill(HEADER.size, deadline)
        length, kind, channel = HEADER.unpack_from(self._buffer)
        assert 5 <= length <= MAX_PAYLOAD + 5
        self._fill(4 + length, deadline)
        payload = bytes(self._buffer[HEADER.size : 4 + length])
        del self._buffer[: 4 + length]
        return Frame(kind, channel, payload)

    def exec(
        self,
        channel: int,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str = "/",
        stdin: bool = False,
    ) -> None:
        payload = exec_payload(argv, ENV if env is None else env, cwd, stdin=stdin)
        self.send(EXEC, channel, payload)

    def collect(self, channel: int, timeout: float = 5.0) -> Result:
        """The exec's output up to its EXIT; nothing else may arrive meanwhile."""
        out, err = bytearray(), bytearray()
        while True:
            frame = self.recv(timeout)
            assert frame.channel == channel, frame
            if frame.type == STDOUT:
                out += frame.payload
            elif frame.type == STDERR:
                err += frame.payload
            else:
                assert frame.type == EXIT, frame
                (code,) = struct.unpack(">i", frame.payload)
                return Result(bytes(out), bytes(err), code)

    def run(self, argv: list[str], **kwargs: object) -> Result:
        self.exec(7, argv, **kwargs)  # type: ignore[arg-type]
        return self.collect(7)

    def request(self, kind: int, channel: int, payload: bytes) -> list[Frame]:
        """A file request's answers, up to and including END."""
        self.send(kind, channel, payload)
        return self.until_end(channel)

    def until_end(self, channel: int) -> list[Frame]:
        frames: list[Frame] = []
        while not frames or frames[-1].type != END:
            frames.append(self.recv())
            assert frames[-1].channel == channel, frames[-1]
        return frames

    def close(self) -> int:
        """End of input: the agent's exit status. Safe to call again."""
        try:
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                assert stream is not None
                with contextlib.suppress(BrokenPipeError):
                    stream.close()
            status: int = self.process.wait(5)
            return status
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def end_errno(frame: Frame) -> int:
    assert frame.type == END
    number: int = struct.unpack(">I", frame.payload)[0]
    return number


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def session_members(sid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[3]) == sid:
            members.append(int(entry.name))
    return members


def eventually(check: Callable[[], object]) -> bool:
    """For a state that has no event to wait on (a process changing session, a file
    going away): look again, for at most 3 s. Process exits use ``exits``, which waits
    on the kernel's own notice."""
    return wait_until(check, timeout=3.0, every=0.01)


def exits(*pids: int, within: float = 3.0) -> bool:
    """Whether every one of ``pids`` exits within ``within`` seconds: a pidfd becomes
    readable when its process ends."""
    deadline = time.monotonic() + within
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # gone already
        try:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0] and alive(pid):
                return False
        finally:
            os.close(fd)
    return True


@pytest.fixture(scope="module")
def binary() -> Path:
    return agent_binary()


@pytest.fixture
def agent(binary: Path) -> Iterator[Agent]:
    live = Agent([str(binary), "serve"], env={})
    assert live.recv() == Frame(HELLO, 0, b"stockade-agent 1")
    yield live
    live.close()


# Exec.


def test_hello_comes_first_and_nothing_else(binary: Path) -> None:
    live = Agent([str(binary), "serve"], env={})
    assert live.recv() == Frame(HELLO, 0, b"stockade-agent 1")
    with pytest.raises(AssertionError, match="in time"):
        live.recv(timeout=0.1)
    assert live.close() == 0


def test_echo(agent: Agent) -> None:
    agent.exec(1, ["echo", "hi"])
    assert agent.recv() == Frame(STDOUT, 1, b"hi\n")
    assert agent.recv() == Frame(EXIT, 1, struct.pack(">i", 0))


def test_exit_codes_and_signals(agent: Agent) -> None:
    assert agent.run(["sh", "-c", "exit 3"]).code == 3
    assert agent.run(["sh", "-c", "kill -TERM $$"]).code == 128 + signal.SIGTERM


def test_flow_pauses_and_resumes_an_execs_output(agent: Agent, tmp_path: Path) -> None:
    """While paused the agent reads nothing of the exec's output, so the writer blocks on
    its pipe instead of the agent forwarding a flood; resumed, everything arrives."""
    marker = tmp_path / "written"
    agent.send(FLOW, 7, b"\x00")  # for a channel it does not know yet: ignored
    agent.exec(7, ["sh", "-c", f"head -c 1000000 /dev/zero; echo done > {marker}"])
    first = agent.recv()
    assert first.type == STDOUT
    assert first.channel == 7
    agent.send(FLOW, 7, b"\x00")
    received = len(first.payload)
    with contextlib.suppress(TimeoutError, AssertionError):
        while True:  # whatever was in flight before the pause
            frame = agent.recv(timeout=0.3)
            received += len(frame.payload)
    assert received < 1_000_000
    assert not marker.exists()  # the writer is blocked on its full pipe
    agent.send(FLOW, 7, b"\x01")
    rest = agent.collect(7)
    assert received + len(rest.stdout) == 1_000_000
    assert rest.code == 0
    assert marker.read_text() == "done\n"


def test_stderr_is_separate(agent: Agent) -> None:
    done = agent.run(["sh", "-c", "echo out; echo err >&2"])
    assert (done.stdout, done.stderr, done.code) == (b"out\n", b"err\n", 0)


def test_stdin_is_piped_from_stdin_frames(agent: Agent) -> None:
    agent.exec(1, ["cat"], stdin=True)
    agent.send(STDIN, 1, b"hello ")
    agent.send(STDIN, 1, b"world")
    agent.send(STDIN, 1, b"")
    assert agent.collect(1) == Result(b"hello world", b"", 0)


def test_megabytes_of_stdin_go_through(agent: Agent) -> None:
    data = os.urandom(3 << 20)
    agent.exec(1, ["cat"], stdin=True)

    def feed() -> None:  # from a thread: the agent's answers must be read meanwhile
        for start in range(0, len(data), MAX_PAYLOAD):
            agent.send(STDIN, 1, data[start : start + MAX_PAYLOAD])
        agent.send(STDIN, 1, b"")

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        assert agent.collect(1) == Result(data, b"", 0)
    finally:
        feeder.join()


def test_a_child_that_does_not_read_its_stdin_blocks_nothing(agent: Agent) -> None:
    agent.exec(1, ["sleep", "100"], stdin=True)
    for _ in range(17):
        agent.send(STDIN, 1, bytes(MAX_PAYLOAD))
    assert agent.recv() == Frame(STDERR, 1, b"stockade-agent: stdin: 16 MiB not read, closing it\n")
    assert agent.run(["echo", "still here"]).stdout == b"still here\n"
    agent.send(SIGNAL, 1, bytes((signal.SIGKILL, 0)))
    assert agent.collect(1).code == 128 + signal.SIGKILL


def test_stdin_is_dev_null_without_the_flag(agent: Agent) -> None:
    agent.exec(1, ["cat"])
    agent.send(STDIN, 1, b"ignored")  # no pipe: dropped
    assert agent.collect(1) == Result(b"", b"", 0)


def test_the_environment_is_exactly_the_given_one(agent: Agent, tmp_path: Path) -> None:
    done = agent.run(["env"], env={"PATH": "/usr/bin:/bin", "FOO": "bar baz"})
    assert done.stdout.decode().splitlines() == ["PATH=/usr/bin:/bin", "FOO=bar baz"]
    tool = tmp_path / "mytool"
    tool.write_text("#!/bin/sh\necho found me\n")
    tool.chmod(0o755)
    assert agent.run(["mytool"], env={"PATH": str(tmp_path)}).stdout == b"found me\n"
    assert agent.run(["env"], env={"PATH": str(tmp_path)}).code == 127  # not on this PATH


def test_command_not_found_is_127(agent: Agent) -> None:
    done = agent.run(["no-such-command-here"])
    assert done.code == 127
    assert done.stderr.startswith(b"stockade-agent: no-such-command-here: No such file")


def test_not_runnable_or_bad_cwd_is_126(agent: Agent, tmp_path: Path) -> None:
    done = agent.run(["true"], cwd=str(tmp_path / "missing"))
    assert done.code == 126
    assert b"stockade-agent: chdir" in done.stderr
    plain = tmp_path / "plain"
    plain.write_text("echo no\n")
    plain.chmod(0o644)
    done = agent.run([str(plain)])
    assert (done.code, done.stdout) == (126, b"")
    assert b"Permission denied" in done.stderr


def test_the_child_starts_clean(agent: Agent, tmp_path: Path) -> None:
    assert agent.run(["sh", "-c", "ls /proc/$$/fd"]).stdout == b"0\n1\n2\n"
    assert agent.run(["sh", "-c", "pwd"], cwd=str(tmp_path)).stdout == f"{tmp_path}\n".encode()
    status = agent.run(["cat", "/proc/self/status"]).stdout.decode()
    masks = dict(line.split(":\t") for line in status.splitlines() if line.startswith("Sig"))
    assert masks["SigBlk"] == masks["SigIgn"] == "0000000000000000"  # SIGPIPE is not ignored
    pid, pgrp, sid = agent.run(
        ["sh", "-c", "echo $$; cut -d' ' -f5,6 /proc/$$/stat"]
    ).stdout.split()
    assert pid == pgrp == sid  # its own session and process group


def test_concurrent_execs_interleave(agent: Agent) -> None:
    agent.exec(1, ["cat"], stdin=True)
    agent.exec(2, ["cat"], stdin=True)
    for channel, data in ((1, b"a"), (2, b"b"), (1, b"c"), (2, b"d")):
        agent.send(STDIN, channel, data)
        assert agent.recv() == Frame(STDOUT, channel, data)
    agent.send(STDIN, 2, b"")
    assert agent.recv() == Frame(EXIT, 2, struct.pack(">i", 0))
    agent.send(STDIN, 1, b"e")
    agent.send(STDIN, 1, b"")
    assert agent.collect(1) == Result(b"e", b"", 0)


def test_large_output_arrives_complete(agent: Agent) -> None:
    agent.exec(1, ["head", "-c", "5000000", "/dev/zero"])
    total = bytearray()
    while (frame := agent.recv()).type == STDOUT:
        assert len(frame.payload) <= MAX_PAYLOAD
        total += frame.payload
    assert frame == Frame(EXIT, 1, struct.pack(">i", 0))
    assert total == bytes(5_000_000)


def test_output_still_in_the_pipes_at_exit_is_forwarded(agent: Agent, tmp_path: Path) -> None:
    # The child fills a 1 MiB pipe and exits while we are not reading, so its EXIT and a
    # full pipe are ready together: all of it must come before the EXIT.
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    script = (
        "import fcntl, os; fcntl.fcntl(1, 1031, 1 << 20); os.write(1, b'x' * 1000000); "
        f"f = os.open({str(fifo)!r}, os.O_WRONLY); os.write(f, str(os.getpid()).encode())"
    )
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        agent.exec(1, ["python3", "-c", script])
        # The child says who it is once its output is all written; then it exits.
        assert select.select([reader], [], [], 10)[0], "the child never wrote its pid"
        pid = int(os.read(reader, 32))
    finally:
        os.close(reader)
    assert exits(pid, within=10)
    assert agent.collect(1) == Result(b"x" * 1_000_000, b"", 0)


# Signals.


def test_background_processes_outlive_their_exec_until_signalled(agent: Agent) -> None:
    started = time.monotonic()
    done = agent.run(["sh", "-c", "sleep 30 & echo $!"])
    assert done.code == 0
    assert time.monotonic() - started < 2  # its EXIT did not wait for the sleep's pipes
    pid = int(done.stdout)
    assert alive(pid)
    agent.send(SIGNAL, 7, bytes((signal.SIGKILL, 1)))  # the exec has exited already
    assert exits(pid)


def test_signal_scope_0_reaches_the_process_group(agent: Agent) -> None:
    agent.exec(1, ["sh", "-c", "echo ready; sleep 100"])
    assert agent.recv() == Frame(STDOUT, 1, b"ready\n")
    agent.send(SIGNAL, 1, bytes((signal.SIGTERM, 0)))
    assert agent.collect(1).code == 128 + signal.SIGTERM


def test_signal_scope_1_kills_the_whole_tree(agent: Agent) -> None:
    script = "sleep 100 & a=$!; setsid sleep 100 & echo $a $! $$; wait"
    agent.exec(1, ["sh", "-c", script])
    frame = agent.recv()
    assert frame.type == STDOUT
    first, escaped, sid = map(int, frame.payload.split())
    assert eventually(lambda: session_members(escaped) == [escaped])  # its own session now
    assert sorted(session_members(sid)) == sorted([first, sid])
    agent.send(SIGNAL, 1, bytes((signal.SIGKILL, 1)))
    assert agent.collect(1).code == 128 + signal.SIGKILL
    assert eventually(lambda: not session_members(sid) and not alive(escaped))


def test_signal_on_channel_0_reaches_every_process_but_the_agent(agent: Agent) -> None:
    agent.exec(1, ["sleep", "100"])
    background = int(agent.run(["sh", "-c", "sleep 100 & echo $!"]).stdout)
    agent.send(SIGNAL, 0, bytes((signal.SIGTERM, 1)))
    assert agent.collect(1).code == 128 + signal.SIGTERM
    assert exits(background)
    assert agent.run(["echo", "alive"]).stdout == b"alive\n"


# Files.


def test_read(agent: Agent, tmp_path: Path) -> None:
    content = os.urandom(600_000)
    (tmp_path / "blob").write_bytes(content)
    frames = agent.request(READ, 3, f"{tmp_path}/blob\0".encode())
    assert [f.type for f in frames] == [DATA, DATA, DATA, END]
    assert all(len(f.payload) <= 256 << 10 for f in frames)
    assert b"".join(f.payload for f in frames[:-1]) == content
    assert end_errno(frames[-1]) == 0
    (tmp_path / "empty").touch()
    assert agent.request(READ, 3, f"{tmp_path}/empty\0".encode()) == [
        Frame(END, 3, struct.pack(">I", 0))
    ]


def test_read_refuses_what_is_not_a_regular_file(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "target").write_text("secret")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    os.mkfifo(tmp_path / "fifo")
    for name, number in (
        ("missing", errno.ENOENT),
        ("", errno.EISDIR),
        ("link", errno.ELOOP),
        ("fifo", errno.EINVAL),
    ):
        frames = agent.request(READ, 3, f"{tmp_path}/{name}\0".encode())
        assert len(frames) == 1, name
        assert end_errno(frames[0]) == number, name


def test_write(agent: Agent, tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.txt"
    agent.send(WRITE, 4, struct.pack(">I", 0o640) + f"{target}\0".encode())
    for chunk in (b"one ", b"two ", b"three"):
        agent.send(WRITE_DATA, 4, chunk)
    assert agent.request(WRITE_END, 4, b"") == [Frame(END, 4, struct.pack(">I", 0))]
    assert target.read_bytes() == b"one two three"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755
    # Again, shorter: truncated, and the mode follows.
    agent.send(WRITE, 4, struct.pack(">I", 0o600) + f"{target}\0".encode())
    agent.send(WRITE_DATA, 4, b"new")
    assert end_errno(agent.request(WRITE_END, 4, b"")[0]) == 0
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_write_errors_wait_for_write_end(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "target").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    for name, number in (("link", errno.ELOOP), ("", errno.EISDIR)):
        agent.send(WRITE, 4, struct.pack(">I", 0o644) + f"{tmp_path}/{name}\0".encode())
        agent.send(WRITE_DATA, 4, b"discarded")
        # Nothing answers WRITE itself: the next frame is this READ's END.
        assert agent.request(READ, 5, b"/nonexistent\0") == [
            Frame(END, 5, struct.pack(">I", errno.ENOENT))
        ]
        assert agent.request(WRITE_END, 4, b"") == [Frame(END, 4, struct.pack(">I", number))]
    assert (tmp_path / "target").read_text() == "keep"


def test_list(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"12345")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to("file")
    os.mkfifo(tmp_path / "fifo")
    many = tmp_path / "dir"
    for i in range(300):  # 300 x 223 bytes: more than one LISTING frame's worth
        (many / f"{i:0200d}").touch()
    frames = agent.request(LIST, 6, f"{tmp_path}\0".encode())
    assert end_errno(frames[-1]) == 0
    entries = {}
    for frame in frames[:-1]:
        assert frame.type == LISTING
        offset = 0
        while offset < len(frame.payload):
            kind, mode, size, mtime, length = ENTRY.unpack_from(frame.payload, offset)
            offset += ENTRY.size
            name = frame.payload[offset : offset + length].decode()
            offset += length
            entries[name] = (kind, stat.S_IFMT(mode), size, mtime)
    info = (tmp_path / "file").stat()
    assert entries["file"] == (b"f", stat.S_IFREG, 5, int(info.st_mtime))
    assert entries["dir"][:2] == (b"d", stat.S_IFDIR)
    assert entries["link"][:3] == (b"l", stat.S_IFLNK, 4)
    assert entries["fifo"][:2] == (b"o", stat.S_IFIFO)
    assert set(entries) == {"file", "dir", "link", "fifo"}
    big = agent.request(LIST, 6, f"{many}\0".encode())
    assert len(big) >= 3  # two LISTING frames at least, then END
    assert sum(frame.payload.count(b"0" * 190) for frame in big[:-1]) == 300


def test_list_refuses_what_is_not_a_directory(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "file").touch()
    (tmp_path / "link").symlink_to(tmp_path)
    for name, number in (("missing", errno.ENOENT), ("file", errno.ENOTDIR), ("link", errno.ELOOP)):
        frames = agent.request(LIST, 6, f"{tmp_path}/{name}\0".encode())
        assert [end_errno(f) for f in frames] == [number], name


# Ending.


def test_end_of_input_kills_everything_and_exits_0(agent: Agent) -> None:
    agent.exec(1, ["sh", "-c", "echo $$; exec sleep 100"])
    running = int(agent.recv().payload)
    background = int(agent.run(["sh", "-c", "sleep 100 & echo $!"]).stdout)
    assert alive(running)
    assert alive(background)
    assert agent.close() == 0
    assert exits(running, background)


@pytest.mark.parametrize(
    "data",
    [
        HEADER.pack(5 + MAX_PAYLOAD + 1, EXEC, 1),  # over 1 MiB: refused from the header
        encode(0x7E, 1),  # an unknown type
    ],
    ids=["oversized", "unknown-type"],
)
def test_a_broken_stream_ends_the_agent_with_2(agent: Agent, data: bytes) -> None:
    agent.exec(1, ["sh", "-c", "echo $$; exec sleep 100"])
    pid = int(agent.recv().payload)
    agent.send_raw(data)
    frame = agent.recv()
    assert (frame.type, frame.channel) == (FAULT, 0)
    assert agent.process.wait(5) == 2
    assert exits(pid)  # it took its children with it


# Launch.


@pytest.fixture(scope="module")
def sandbox_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("stockade-sandbox")
    return entry.pw_uid, grp.getgrgid(entry.pw_gid).gr_gid


def test_launch_joins_then_drops(
    binary: Path, tmp_path: Path, sandbox_ids: tuple[int, int]
) -> None:
    uid, gid = sandbox_ids
    procs = [tmp_path / "one.procs", tmp_path / "two.procs"]
    for path in procs:
        path.touch()
    script = "id -u; id -g; id -G"
    process = subprocess.Popen(
        [str(binary), "launch", str(uid), str(gid), *map(str, procs), "--", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        extra_groups=[0, 4],  # supplementary groups to be dropped
    )
    out, err = process.communicate(timeout=5)
    assert process.returncode == 0, err
    assert out.decode().split() == [str(uid), str(gid), str(gid)]
    for path in procs:
        assert path.read_text() == f"{process.pid}\n"


@pytest.mark.parametrize(
    "ids", [("0", "995"), ("999", "0"), ("x", "995")], ids=["uid0", "gid0", "garbage"]
)
def test_launch_refuses(binary: Path, tmp_path: Path, ids: tuple[str, str]) -> None:
    procs = tmp_path / "procs"
    procs.touch()
    done = subprocess.run(
        [str(binary), "launch", *ids, str(procs), "--", "id", "-u"],
        capture_output=True,
        timeout=5,
        check=False,
    )
    assert done.returncode == 125
    assert done.stdout == b""
    assert done.stderr.startswith(b"stockade-agent: launch: ")
    assert procs.read_text() == ""  # refused before joining anything


def test_launch_fails_on_a_missing_procs_file(binary: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(binary), "launch", "999", "995", str(tmp_path / "missing"), "--", "true"],
        capture_output=True,
        timeout=5,
        check=False,
    )
    assert done.returncode == 125
    assert b"No such file or directory" in done.stderr


# Under bubblewrap, the way a sandbox runs it.


@pytest.fixture(scope="module")
def installed(binary: Path) -> Iterator[Path]:
    """The agent where the sandbox user can reach it, as the daemon installs it."""
    directory = Path(tempfile.mkdtemp(prefix="stockade-agent-test-"))
    directory.chmod(0o755)
    copy = directory / "stockade-agent"
    shutil.copyfile(binary, copy)
    copy.chmod(0o755)
    yield copy
    shutil.rmtree(directory)


def test_serve_under_bubblewrap(installed: Path) -> None:
    profile = Profile(
        Account.lookup(), ro_binds=(*HOST_IMAGE_BINDS, (str(installed), "/.stockade/agent"))
    )
    fd = program_fd(bpf_program())
    try:
        live = Agent(command(profile, ["/.stockade/agent", "serve"], seccomp_fd=fd), pass_fds=(fd,))
    finally:
        os.close(fd)
    assert live.recv() == Frame(HELLO, 0, b"stockade-agent 1")
    done = live.run(["sh", "-c", "echo $PPID; id -u; sleep 100 & echo $! > /tmp/pid"])
    assert done.stdout.split() == [b"2", b"1000"]  # bubblewrap's init is 1, the agent 2
    frames = live.request(READ, 3, b"/tmp/pid\0")
    assert frames[-1] == Frame(END, 3, struct.pack(">I", 0))
    stat_file = b"/proc/%d/stat\0" % int(b"".join(f.payload for f in frames[:-1]))
    assert end_errno(live.request(READ, 3, stat_file)[-1]) == 0
    # Everything but the agent (kill(-1) inside the sandbox): the sleep ends, we do not.
    live.send(SIGNAL, 0, bytes((signal.SIGTERM, 1)))
    assert eventually(lambda: end_errno(live.request(READ, 3, stat_file)[-1]) == errno.ENOENT)
    assert live.request(READ, 3, b"/etc/shadow\0") == [
        Frame(END, 3, struct.pack(">I", errno.ENOENT))
    ]
    assert live.close() == 0

"""The daemon's half of the agent protocol (``docs/agent-protocol.md``): frames in and out.

Everything that comes from the agent is treated as untrusted: a process inside the sandbox
shares the agent's uid, so the daemon bounds every frame and every field it reads.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from stockade.sandbox.base import FileEntry, SandboxError

HEADER = struct.Struct(">IBI")  # length (of type + channel + payload), type, channel
MAX_PAYLOAD = 1 << 20

# Daemon -> agent.
EXEC = 0x01
STDIN = 0x02
SIGNAL = 0x03
FLOW = 0x04
READ = 0x10
WRITE = 0x11
WRITE_DATA = 0x12
WRITE_END = 0x13
LIST = 0x14
# Agent -> daemon.
HELLO = 0x80
STDOUT = 0x81
STDERR = 0x82
EXIT = 0x83
DATA = 0x90
LISTING = 0x92
END = 0x9F
FAULT = 0xFF

EXEC_STDIN_PIPE = 0x01
SCOPE_GROUP = 0
SCOPE_TREE = 1
GREETING = b"stockade-agent 1"

_ENTRY = struct.Struct(">cIQqH")
_KINDS = {b"f": False, b"d": True, b"l": False, b"o": False}


class ProtocolError(SandboxError):
    """The agent sent something the protocol does not allow."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    channel: int
    payload: bytes


def frame(kind: int, channel: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("frame payload over 1 MiB")
    return HEADER.pack(len(payload) + 5, kind, channel) + payload


def _cstring(text: str) -> bytes:
    data = text.encode()
    if b"\0" in data:
        raise SandboxError("a NUL byte is not allowed in a command, path or variable")
    return data + b"\0"


def exec_request(
    channel: int, argv: Sequence[str], env: Mapping[str, str], cwd: str, *, stdin: bool
) -> bytes:
    strings = [cwd, *argv, *(f"{name}={value}" for name, value in env.items())]
    payload = struct.pack(">BHH", EXEC_STDIN_PIPE if stdin else 0, len(argv), len(env))
    payload += b"".join(_cstring(s) for s in strings)
    return frame(EXEC, channel, payload)


def stdin_chunks(channel: int, data: bytes) -> Iterator[bytes]:
    """STDIN frames carrying ``data`` (none when it is empty; EOF is separate)."""
    for start in range(0, len(data), MAX_PAYLOAD):
        yield frame(STDIN, channel, data[start : start + MAX_PAYLOAD])


def stdin_eof(channel: int) -> bytes:
    return frame(STDIN, channel)


def signal_request(channel: int, signal: int, scope: int) -> bytes:
    return frame(SIGNAL, channel, bytes((signal, scope)))


def flow_request(channel: int, *, reading: bool) -> bytes:
    return frame(FLOW, channel, bytes((1 if reading else 0,)))


def path_request(kind: int, channel: int, path: str) -> bytes:
    return frame(kind, channel, _cstring(path))


def write_request(channel: int, path: str, mode: int) -> bytes:
    return frame(WRITE, channel, struct.pack(">I", mode & 0o7777) + _cstring(path))


def write_chunks(channel: int, data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), MAX_PAYLOAD):
        yield frame(WRITE_DATA, channel, data[start : start + MAX_PAYLOAD])


class FrameParser:
    """Cuts the agent's byte stream into frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= HEADER.size:
            length, kind, channel = HEADER.unpack_from(buffer, offset)
            if length < 5 or length - 5 > MAX_PAYLOAD:
                raise ProtocolError(f"the agent sent a frame of {length} bytes")
            end = offset + 4 + length
            if len(buffer) < end:
                break
            frames.append(Frame(kind, channel, bytes(buffer[offset + HEADER.size : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return frames


def exit_status(payload: bytes) -> int:
    if len(payload) != 4:
        raise ProtocolError("malformed EXIT frame")
    status: int = struct.unpack(">i", payload)[0]
    return status


def end_errno(payload: bytes) -> int:
    if len(payload) != 4:
        raise ProtocolError("malformed END frame")
    number: int = struct.unpack(">I", payload)[0]
    return number


def listing_entries(directory: str, payload: bytes) -> Iterator[FileEntry]:
    offset = 0
    base = directory.rstrip("/") or ""
    while offset < len(payload):
        if len(payload) - offset < _ENTRY.size:
            raise ProtocolError("malformed LISTING frame")
        kind, mode, size, mtime, name_length = _ENTRY.unpack_from(payload, offset)
        offset += _ENTRY.size
        name = payload[offset : offset + name_length]
        offset += name_length
        if len(name) != name_length or kind not in _KINDS:
            raise ProtocolError("malformed LISTING entry")
        yield FileEntry(
            path=f"{base}/{name.decode(errors='replace')}",
            size=size,
            is_dir=_KINDS[kind],
            mode=mode,
            modified=datetime.fromtimestamp(max(0, min(mtime, 2**33)), UTC),
        )

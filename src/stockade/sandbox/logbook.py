"""A sandbox's log: the output of its ``command``, kept for readers and followers.

Lines are kept in a ring of recent ones (what ``logs`` reads while the sandbox runs), in a
JSON-lines file under the daemon's state directory (which a crash does not lose), and are
handed to whoever follows. The pacing of floods lives with the reader of the command's
output (``namespace.py``); this module only keeps what it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

from stockade.sandbox.base import LogLine, Stream

LOG_LINES = 10_000  # recent lines kept in memory
LOG_LINE_BYTES = 16 * 1024  # a longer line is cut into pieces of this size
LOG_FILE_BYTES = 16 << 20  # past this the file stops growing
LOG_BYTES_PER_SECOND = 1 << 20  # the pace of a sandbox's logging
LOG_LINES_PER_SECOND = 2000


class LogBook:
    """The output of a sandbox's ``command``: a ring of recent lines, a JSON-lines file
    that outlives a daemon crash, and the followers waiting for more."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: deque[LogLine] = deque(maxlen=LOG_LINES)
        self.followers: set[asyncio.Queue[LogLine | None]] = set()
        self._partial: dict[Stream, bytes] = {"stdout": b"", "stderr": b""}
        self._file = path.open("ab", buffering=0)
        self._written = 0

    def feed(self, stream: Stream, data: bytes) -> int:
        """Add output; returns how many lines it completed."""
        pending = self._partial[stream] + data
        *complete, rest = pending.split(b"\n")
        while len(rest) > LOG_LINE_BYTES:
            complete.append(rest[:LOG_LINE_BYTES])
            rest = rest[LOG_LINE_BYTES:]
        self._partial[stream] = rest
        for raw in complete:
            self._add(stream, raw)
        return len(complete)

    def note(self, message: str) -> None:
        """A line of the daemon's own, on stderr."""
        self._add("stderr", message.encode())

    def flush(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._add(stream, rest)
            self._partial[stream] = b""

    def _add(self, stream: Stream, raw: bytes) -> None:
        if self._file.closed:
            return
        line = LogLine(datetime.now(UTC), stream, raw.decode(errors="replace"))
        self.lines.append(line)
        if self._written < LOG_FILE_BYTES:
            record = json.dumps({"t": line.timestamp.isoformat(), "s": stream, "m": line.message})
            encoded = record.encode() + b"\n"
            self._written += len(encoded)
            with contextlib.suppress(OSError):
                self._file.write(encoded)
        for follower in self.followers:
            follower.put_nowait(line)

    def close(self) -> None:
        self.flush()
        for follower in self.followers:
            follower.put_nowait(None)
        self._file.close()


def read_log_file(path: Path) -> list[LogLine]:
    """The lines a log file holds; unreadable lines are skipped."""
    lines: list[LogLine] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return lines
    for raw in text.splitlines():
        try:
            record = json.loads(raw)
            stream: Stream = "stderr" if record["s"] == "stderr" else "stdout"
            lines.append(LogLine(datetime.fromisoformat(record["t"]), stream, str(record["m"])))
        except (ValueError, KeyError, TypeError):
            continue
    return lines


def first_lines(data: bytes, count: int) -> bytes:
    """``data`` up to and including its ``count``-th newline (all of it if it has fewer)."""
    end = -1
    for _ in range(max(0, count)):
        end = data.find(b"\n", end + 1)
        if end < 0:
            return data
    return data[: end + 1] if count > 0 else b""


def last_lines(lines: list[LogLine], tail: int | None) -> list[LogLine]:
    if tail is None:
        return lines
    return lines[-tail:] if tail > 0 else []

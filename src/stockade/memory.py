"""The daemon's memory, as glibc's malloc holds it: one arena for all threads, and what a
busy spell freed given back to the system once the spell is over.

Measured with bench/load.py, whose capacity probe queues a request on every one of 450
connections: RSS went 157 -> 167 MiB and stayed there, with the same Python objects as
before (the spell's memory was freed, but malloc kept it). With one arena it went to
163 MiB, and ``malloc_trim`` gave back another 2.3 MiB of the main heap.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import time
from collections.abc import Callable

M_ARENA_MAX = -8  # glibc's mallopt parameter

# A spell is busy when the daemon used more than this share of a core over an interval,
# and over when it used less.
BUSY_SHARE = 0.25
QUIET_SHARE = 0.05
INTERVAL_SECONDS = 5.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None  # not glibc


def one_malloc_arena() -> bool:
    """Have malloc serve every thread from one arena; False where it cannot.

    By default each thread that allocates gets an arena of its own (up to 8 per core),
    and what an arena grows to it mostly keeps. The daemon's worker threads (cgroup
    reads, teardowns) are few and short, and its Python runs under the GIL anyway, so
    one arena costs nothing in contention."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, 1))


def malloc_trim() -> bool:
    """Give the free memory malloc holds back to the system; False where it cannot."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


class Trimmer:
    """Calls ``trim`` once each time a busy spell of the process is over.

    ``check`` is one look: the CPU time used since the last look, against the interval.
    ``start`` looks every ``interval`` seconds from a thread of its own, which costs a
    ``getrusage`` per interval and a trim (milliseconds) per spell."""

    def __init__(
        self,
        *,
        interval: float = INTERVAL_SECONDS,
        cpu: Callable[[], float] = time.process_time,
        trim: Callable[[], bool] = malloc_trim,
    ) -> None:
        self.interval = interval
        self._cpu = cpu
        self._trim = trim
        self._last = cpu()
        self._busy = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.trims = 0

    def check(self) -> bool:
        """True when this look ended a busy spell, and so trimmed."""
        now = self._cpu()
        share = (now - self._last) / self.interval
        self._last = now
        if share > BUSY_SHARE:
            self._busy = True
        elif share < QUIET_SHARE and self._busy:
            self._busy = False
            self._trim()
            self.trims += 1
            return True
        return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stockade-trim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

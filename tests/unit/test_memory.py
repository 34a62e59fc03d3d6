"""The daemon's memory (``stockade.memory``): one malloc arena, and trims after busy
spells."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stockade.memory import INTERVAL_SECONDS, Trimmer
from stockade.testing import wait_until

THREAD_HEAPS = """
import sys, threading
from stockade.memory import one_malloc_arena
if sys.argv[1] == "one":
    assert one_malloc_arena()
kept = []
together = threading.Barrier(4)
def allocate():
    kept.extend(bytes(10_000) for _ in range(100))  # from malloc, not pymalloc
    together.wait()  # no thread ends, and frees its arena for the next, before all allocated
threads = [threading.Thread(target=allocate) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
# A thread's arena is a heap mapped 64 MiB at a time, mostly reserved (---p); the
# other inaccessible mappings are 4 KiB stack guards.
reserved = 0
for line in open("/proc/self/maps"):
    fields = line.split()
    start, end = (int(x, 16) for x in fields[0].split("-"))
    if fields[1] == "---p" and len(fields) == 5 and end - start > 16 << 20:
        reserved += 1
print(reserved)
"""


@pytest.mark.parametrize("arenas", ["default", "one"])
def test_one_malloc_arena_keeps_threads_off_arenas_of_their_own(arenas: str) -> None:
    """The control ("default") shows that threads get arenas of their own, so that the
    daemon's setting is seen to remove them."""
    ran = subprocess.run(
        [sys.executable, "-c", THREAD_HEAPS, arenas], capture_output=True, text=True, check=True
    )
    heaps = int(ran.stdout)
    if arenas == "default":
        assert heaps >= 2
    else:
        assert heaps == 0


class Clock:
    """Process CPU seconds, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def trimmer(clock: Clock, trims: list[float]) -> Trimmer:
    def trim() -> bool:
        trims.append(clock.now)
        return True

    return Trimmer(cpu=clock, trim=trim)


def test_a_busy_spell_is_trimmed_once_when_it_is_over() -> None:
    clock, trims = Clock(), []
    watch = trimmer(clock, trims)
    for share in (0.6, 0.9, 0.3):  # busy
        clock.now += share * INTERVAL_SECONDS
        assert not watch.check()
    clock.now += 0.01 * INTERVAL_SECONDS  # quiet
    assert watch.check()
    for _ in range(3):  # still quiet: nothing more to give back
        clock.now += 0.01 * INTERVAL_SECONDS
        assert not watch.check()
    assert len(trims) == 1
    assert watch.trims == 1


def test_an_idle_or_a_steady_process_is_not_trimmed() -> None:
    clock, trims = Clock(), []
    watch = trimmer(clock, trims)
    for share in (0.0, 0.01, 0.1, 0.2, 0.1):  # idle, then steady below busy
        clock.now += share * INTERVAL_SECONDS
        assert not watch.check()
    for _ in range(5):  # busy, and staying so
        clock.now += 0.8 * INTERVAL_SECONDS
        assert not watch.check()
    clock.now += 0.1 * INTERVAL_SECONDS  # calmer, not quiet
    assert not watch.check()
    assert trims == []


def test_each_spell_is_trimmed() -> None:
    clock, trims = Clock(), []
    watch = trimmer(clock, trims)
    for share in (0.5, 0.0, 0.7, 0.7, 0.02, 0.0, 0.4, 0.0):
        clock.now += share * INTERVAL_SECONDS
        watch.check()
    assert len(trims) == 3


def test_the_trimmer_thread_looks_every_interval_and_stops() -> None:
    clock, trims = Clock(), []
    watch = Trimmer(interval=0.01, cpu=clock, trim=lambda: trims.append(1) is None)
    clock.now += 1.0  # a busy first interval: 100 cores' worth
    watch.start()
    try:
        wait_until(lambda: trims, timeout=10, every=0.005)  # the thread looks every 10 ms
    finally:
        watch.stop()
    assert trims == [1]
    assert watch._thread is not None
    assert not watch._thread.is_alive()


FREED_THEN_TRIMMED = """
from stockade.memory import malloc_trim
def rss():
    return int(open("/proc/self/statm").read().split()[1])
kept = [bytes(10_000) for _ in range(5_000)]  # 50 MB from malloc's heap
kept.append(bytes(1_000))  # malloc'd last: the heap's top stays in use, free() cannot shrink it
high = rss()
del kept[:-1]
before = rss()
assert malloc_trim()
print(high, before, rss())
"""


def test_malloc_trim_gives_freed_memory_back() -> None:
    ran = subprocess.run(
        [sys.executable, "-c", FREED_THEN_TRIMMED], capture_output=True, text=True, check=True
    )
    high, freed, trimmed = (int(pages) for pages in ran.stdout.split())
    assert freed > high * 0.8  # free() alone kept most of it
    assert trimmed < freed - (30 << 20) // 4096  # the trim gave back over 30 MB

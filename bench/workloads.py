"""Functions the benchmarks run in workers.

Standard library only (and not even ``typing`` at run time), so that importing
this module costs a worker next to nothing and the measurements are of the
pools, not of the workload's imports.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def noop() -> None:
    """The trivial task: measures pure round-trip overhead."""


def identity(x: Any) -> Any:
    """Echo the argument back (the 64 MiB echo)."""
    return x


def square(x: int) -> int:
    """A tiny task with an argument and a result (map)."""
    return x * x


def burn(seconds: float) -> float:
    """Use ``seconds`` of CPU time in a busy loop; return the wall time taken."""
    start = time.monotonic()
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        for _ in range(1000):
            pass
    return time.monotonic() - start


def arrive_and_wait(directory: str, count: int) -> tuple[int, float, int]:
    """Note when this task started, then wait until ``count`` workers have.

    A barrier through files named by pid in ``directory``: holding every
    worker until all have arrived keeps one worker from taking two of these
    tasks, and the latest start time says when the pool was all busy (on the
    system-wide monotonic clock). Returns the pid, the start time and the
    resident memory.
    """
    started = time.monotonic()
    pid = os.getpid()
    with open(os.path.join(directory, str(pid)), "w"):
        pass
    deadline = started + 60.0
    while len(os.listdir(directory)) < count and time.monotonic() < deadline:
        time.sleep(0.001)
    return pid, started, resident_memory()


def resident_memory() -> int:
    """This process's resident set size in bytes (Linux)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def always() -> bool:
    """trio-parallel's ``retire`` callable for one task per worker."""
    return True

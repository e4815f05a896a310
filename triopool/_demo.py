"""The work the ``triopool demo`` command runs, sequentially and in workers.

Worker-side code: it imports only the standard library (never trio or attrs),
so a worker that runs it starts in the time a bare interpreter takes.
"""

from __future__ import annotations

import os
import signal

#: The first number the demo looks at, and how many numbers each task checks.
BASE = 1_000_000
SPAN = 16_000


def task_range(index: int) -> tuple[int, int]:
    """The numbers task ``index`` checks: ``range(start, stop)``."""
    start = BASE + index * SPAN
    return start, start + SPAN


def count_primes(start: int, stop: int) -> int:
    """Count the primes in ``range(start, stop)`` by trial division.

    Deliberately plain Python: a CPU-bound loop that holds the GIL, the kind
    of work threads cannot speed up and processes can.
    """
    count = 0
    for n in range(max(start, 2), stop):
        if n < 4:
            count += 1
            continue
        if n % 2 == 0:
            continue
        divisor = 3
        while divisor * divisor <= n:
            if n % divisor == 0:
                break
            divisor += 2
        else:
            count += 1
    return count


def count_primes_or_die(start: int, stop: int, die: bool) -> int:
    """Like :func:`count_primes`, but with ``die`` the worker kills itself
    halfway, the way a segfault or the OOM killer would end it."""
    if not die:
        return count_primes(start, stop)
    count_primes(start, (start + stop) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: the worker was killed")  # pragma: no cover

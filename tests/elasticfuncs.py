"""Functions the elasticity tests run in workers (standard library only)."""

from __future__ import annotations

import os
import time


def meet(directory: str, count: int, timeout: float) -> tuple[int, int]:
    """Mark this worker in ``directory`` and wait until ``count`` distinct
    workers have (or ``timeout`` passes). Returns (pid, workers seen): only
    ``count`` workers running at once can all see ``count``."""
    pid = os.getpid()
    with open(os.path.join(directory, str(pid)), "w"):
        pass
    deadline = time.monotonic() + timeout
    seen = len(os.listdir(directory))
    while seen < count and time.monotonic() < deadline:
        time.sleep(0.01)
        seen = len(os.listdir(directory))
    return pid, seen


def echo_with_pid_and_age(x: int) -> tuple[int, int]:
    return x, os.getpid()

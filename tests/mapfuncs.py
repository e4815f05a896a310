"""Functions the map/imap tests run in workers. Standard library only, so that
a worker importing this module stays fast and never imports trio."""

from __future__ import annotations

import os
import time


def square(x: int) -> int:
    return x * x


def square_with_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fail_on_negative(x: int) -> int:
    if x < 0:
        raise ValueError(x)
    return x


def sleep_for(seconds: float) -> float:
    """Sleep, then return the argument: items are delays."""
    time.sleep(seconds)
    return seconds


def sleep_or_fail(seconds: float) -> float:
    """Sleep that long; a negative delay raises ValueError at once."""
    if seconds < 0:
        raise ValueError(seconds)
    time.sleep(seconds)
    return seconds


def die_on_negative(x: int) -> int:
    if x < 0:
        os._exit(7)
    return x


def add_to(k: int, x: int) -> int:
    return k + x


def fail_when_started(job: tuple[str, str]) -> str:
    """Coordinate items through a marker file, so a test needs no timing.

    ``("sleep", path)`` creates ``path`` and sleeps 30 s; ``("fail", path)``
    waits until ``path`` exists (a sleeper is running), then raises
    ValueError.
    """
    kind, path = job
    if kind == "sleep":
        with open(path, "w"):
            pass
        time.sleep(30)
        return kind
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    raise ValueError(kind)


def sleep_with_pid(seconds: float) -> int:
    """Sleep that long (no CPU used); return the worker's pid."""
    time.sleep(seconds)
    return os.getpid()


def unpicklable_on_negative(x: int) -> object:
    """A result that cannot be pickled (a lock) for a negative item."""
    if x < 0:
        import threading

        return threading.Lock()
    return x


#: What :func:`counted` does with its item, by name.
OK, DIE, DIE_ONCE, HANG, RAISE = "ok", "die", "die once", "hang", "raise"


def counted(job: tuple[str, int, str]) -> int:
    """One run of item ``index``, recorded in ``folder``; returns ``index``.

    Each run creates ``<index>-<n>`` with O_EXCL (so each run number is
    claimed once, whatever process runs it), then does ``action``: ``OK``
    returns; ``DIE`` exits the worker on every run, ``DIE_ONCE`` on its
    first run only; ``HANG`` sleeps past any time limit; ``RAISE`` raises
    ValueError(index).
    """
    folder, index, action = job
    number = 1
    while True:
        try:
            os.close(
                os.open(
                    os.path.join(folder, f"{index}-{number}"),
                    os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                )
            )
        except FileExistsError:
            number += 1
            continue
        break
    if action == DIE or (action == DIE_ONCE and number == 1):
        os._exit(7)
    if action == HANG:
        time.sleep(600)
    if action == RAISE:
        raise ValueError(index)
    return index


def runs(folder: str, count: int) -> list[int]:
    """How many times :func:`counted` ran each of items ``0..count-1``."""
    names = os.listdir(folder)
    return [
        sum(1 for name in names if name.split("-")[0] == str(index))
        for index in range(count)
    ]

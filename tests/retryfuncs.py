"""A task for the retry tests, run in workers: each run leaves a marker file,
and says so if it ever runs while another run of the same task does. Imports
only the standard library (a worker must not import trio)."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

#: What a run does, by letter: crash its worker, outlive any time limit,
#: raise KeyError, raise ValueError, or return its run number.
CRASH, HANG, KEY_ERROR, VALUE_ERROR, OK = "c", "h", "k", "v", "o"


def run(directory: str, plan: str) -> int:
    """One run of the task whose runs are recorded in ``directory``.

    Run ``n`` creates ``run-<n>`` with O_EXCL (so each number is claimed by
    one run) holding its pid, and does ``plan[n - 1]`` (the last letter
    for runs beyond the plan). While it runs it holds an exclusive ``flock``
    on ``lock``: the kernel drops it only when the run ends or its process
    exits, however it exits, so a run that finds it taken proves two runs
    at once, and leaves ``overlap-<pid>`` to say so.
    """
    folder = Path(directory)
    lock = os.open(folder / "lock", os.O_CREAT | os.O_RDWR)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            (folder / f"overlap-{os.getpid()}").touch()
        number = 1
        while True:
            try:
                marker = os.open(
                    folder / f"run-{number}", os.O_CREAT | os.O_EXCL | os.O_WRONLY
                )
            except FileExistsError:
                number += 1
                continue
            os.write(marker, str(os.getpid()).encode())
            os.close(marker)
            break
        action = plan[min(number, len(plan)) - 1]
        # Hold the lock a while, so that an overlap would have time to show.
        time.sleep(0.05)
        if action == CRASH:
            os._exit(3)
        if action == HANG:
            time.sleep(600)
        if action == KEY_ERROR:
            raise KeyError(number)
        if action == VALUE_ERROR:
            raise ValueError(number)
        return number
    finally:
        os.close(lock)  # drops the flock


def runs(directory: str) -> list[int]:
    """The pid of each run so far, in run order."""
    folder = Path(directory)
    count = len(list(folder.glob("run-*")))
    return [int((folder / f"run-{n}").read_text()) for n in range(1, count + 1)]


def overlaps(directory: str) -> list[str]:
    return sorted(path.name for path in Path(directory).glob("overlap-*"))


def item(root: str, name_and_plan: tuple[str, str]) -> int:
    """:func:`run` for a map: each item names its folder under ``root``."""
    name, plan = name_and_plan
    folder = Path(root) / name
    folder.mkdir(exist_ok=True)
    return run(str(folder), plan)


def slow_restarts(directory: str, seconds: float) -> None:
    """An initializer: the first worker starts at once, every later one
    takes ``seconds`` (a task retried after a crash waits that long)."""
    try:
        os.close(os.open(Path(directory) / "started", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        time.sleep(seconds)

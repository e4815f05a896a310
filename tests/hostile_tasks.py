"""Tasks that do to their own worker process what a pool must survive: fork
and come back, leave processes holding the pipes, break the result pipe.
Standard library only: a worker importing this never imports trio."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from tests import hostilefuncs


def fork_and_come_back(value: Any, how: str) -> tuple[Any, int | None]:
    """Fork; the child does not call ``os._exit`` but returns, raises or
    calls ``sys.exit(5)``: it comes back into the worker loop. The parent
    returns ``value`` and the child's exit code."""
    pid = os.fork()
    if pid == 0:
        if how == "return":
            return "the child's value", None
        if how == "raise":
            raise ValueError("the child's exception")
        sys.exit(5)
    _, status = os.waitpid(pid, 0)
    return value, os.waitstatus_to_exitcode(status)


def inheritable_pipes() -> list[int]:
    """The fds of this process that are pipes and would pass to a program it
    starts (``subprocess`` with ``close_fds=False``, ``os.system``)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own fd
        if target.startswith("pipe:") and fd > 2 and os.get_inheritable(fd):
            found.append(fd)
    return found


def start_then_exit(pid_file: str, how: str, code: int) -> None:
    """Leave a process behind that may hold the worker's pipes, then exit with
    ``code``. ``how``: "popen" (``subprocess.Popen(close_fds=False)``) or
    "fork" (a forked child, which holds every fd, close-on-exec or not)."""
    if how == "popen":
        pid = subprocess.Popen(["sleep", "60"], close_fds=False).pid
        _write_pid(pid_file, pid)
    else:
        _forked_sleeper(pid_file)
    os._exit(code)


def leave_forked_sleeper(pid_file: str) -> int:
    """Leave a forked child holding every fd of the worker; return at once."""
    _forked_sleeper(pid_file)
    return os.getpid()


def _forked_sleeper(pid_file: str) -> None:
    """Fork a child that sleeps a minute (holding every fd); write its pid."""
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    _write_pid(pid_file, pid)


def _write_pid(pid_file: str, pid: int) -> None:
    with open(pid_file, "w") as f:
        f.write(str(pid))


def _result_pipe() -> int:
    """The worker's result pipe: its one pipe fd open for writing only."""
    (fd,) = hostilefuncs.result_pipes()
    return fd


def break_result_pipe(how: str, seconds: float) -> None:
    """``dup2`` /dev/null over the result pipe, or close every fd, then
    sleep: the worker lives on, but the pool hears nothing from it."""
    if how == "dup2":
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, _result_pipe())
        os.close(null)
    else:
        os.closerange(3, 1 << 16)
    time.sleep(seconds)


class StrRaises(Exception):
    """An exception whose ``str()`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be turned into a string")


def raise_str_raises(tag: str) -> None:
    raise StrRaises(tag)


def block_in_waitpid(seconds: float) -> int:
    """Block in a system call (waitpid, via subprocess) for ``seconds``."""
    return subprocess.run(["sleep", str(seconds)], check=False).returncode


def initializer_burns_cpu(folder: str, seconds: float) -> None:
    """An initializer that costs ``seconds`` of CPU time, and notes in a file
    of ``folder`` when it began and ended (monotonic clock, which every
    process shares)."""
    began = time.monotonic()
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    with open(os.path.join(folder, str(os.getpid())), "w") as file:
        file.write(f"{began} {time.monotonic()}")


def most_at_once(folder: str) -> tuple[int, int]:
    """How many initializers noted in ``folder`` ran, and the most that
    ran at the same moment."""
    events: list[tuple[float, int]] = []
    for name in os.listdir(folder):
        with open(os.path.join(folder, name)) as file:
            began, ended = map(float, file.read().split())
        events += [(began, 1), (ended, -1)]
    running = most = 0
    for _, change in sorted(events):  # an end before a begin at the same time
        running += change
        most = max(most, running)
    return len(events) // 2, most

"""Hostile tasks for the storms: each does to its own worker process something
a pool must survive without delivering any task's outcome to another caller.

Worker side: standard library only, so a worker importing this never imports
trio. Every task takes the caller's nonce and, when it returns, echoes it with
this worker's pid, as ``workerfuncs.storm_task`` does.

The parent-side helpers (the process group that holds the grandchildren, the
pid files) are in ``tests/storm.py``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

# How long a grandchild holds the worker's pipes. A pool that learns of its
# worker's death only by EOF on the result pipe answers the caller no sooner
# than this; the storms check that the grandchild still runs when the caller
# gets its answer, so this only needs to be far above how long a busy machine
# takes to notice an exit. The storms kill the grandchildren when they end.
GRANDCHILD_SECONDS = 20.0
# How long a task that broke its result pipe lives on before it exits by
# itself with BROKE_PIPE_EXIT: a pool that kills such a worker at once
# reports SIGKILL; one that waits for the worker reports this exit code.
BROKEN_PIPE_SECONDS = 20.0
BROKE_PIPE_EXIT = 4
# The exit code of a task that leaves a grandchild behind and exits.
GRANDCHILD_EXIT = 3
# How long the parent of a fork waits for its child before it gives up on it.
FORK_WAIT_SECONDS = 10.0


class ForkedChildError(Exception):
    """Raised by a forked copy of a task that comes back into the worker."""


class ForkedChildLingered(Exception):
    """The forked copy of a task did not exit: it went on as a worker."""


def fork_and_return(nonce: str, child_does: str) -> tuple[str, int]:
    """Fork, and let the child come back into the worker loop instead of
    calling ``os._exit``: it returns a value that is not the caller's
    (``"return"``), raises (``"raise"``) or calls ``sys.exit(7)``
    (``"exit"``). The parent waits for the child and echoes ``nonce``.

    A worker loop that lets the child go on would deliver the child's outcome
    to a caller and serve tasks from two processes. The parent does not wait
    forever for such a child: it kills it and raises
    :class:`ForkedChildLingered`, which no caller may receive either.
    """
    pid = os.fork()
    if pid == 0:
        if child_does == "raise":
            raise ForkedChildError(f"raised by the forked copy of task {nonce}")
        if child_does == "exit":
            sys.exit(7)
        return f"the forked copy of task {nonce}", os.getpid()
    deadline = time.monotonic() + FORK_WAIT_SECONDS
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise ForkedChildLingered(
                f"the forked copy {pid} of task {nonce} still ran after "
                f"{FORK_WAIT_SECONDS} s"
            )
        time.sleep(0.002)
    return nonce, os.getpid()


def leave_grandchild(
    nonce: str, then: str, group: int, pid_dir: str
) -> tuple[str, int]:
    """Start ``sleep`` with ``close_fds=False``, so that it inherits whatever
    inheritable fds the worker has (its pipes, unless the pool made them
    non-inheritable), then exit with GRANDCHILD_EXIT (``then="exit"``) or
    echo ``nonce`` (``then="return"``).

    The grandchild joins the process group ``group`` (the storm's, which
    kills it at the end) and its pid and start time go to
    ``pid_dir/grandchild-nonce`` before the worker exits, so that the storm can check that the pool
    answered the caller while the grandchild still held the pipes.
    """
    child = subprocess.Popen(
        ["sleep", str(GRANDCHILD_SECONDS)], close_fds=False, process_group=group
    )
    _write_pid(pid_dir, f"grandchild-{nonce}", child.pid)
    if then == "exit":
        os._exit(GRANDCHILD_EXIT)
    return nonce, os.getpid()


def result_pipes() -> list[int]:
    """The fds of this worker that are pipes open for writing only, besides
    0, 1 and 2: its result pipe (the pool gives a worker one pipe end to
    write to and one to read from)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            is_pipe = os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            continue  # the listing's own fd, closed by now
        if is_pipe and flags & os.O_ACCMODE == os.O_WRONLY:
            found.append(fd)
    return found


def break_result_pipe(nonce: str, pid_dir: str) -> tuple[str, int]:
    """``dup2`` /dev/null over the result pipe, then live on for a while and
    exit with BROKE_PIPE_EXIT: the pool hears EOF but the worker does not
    die by itself. A pool that waits for its exit answers the caller with
    that exit code; one that kills it at once, with SIGKILL.

    First this worker's pid goes to ``pid_dir/worker-nonce``, so that the
    storms can tell the pool's report of a broken pipe from a mix-up."""
    _write_pid(pid_dir, f"worker-{nonce}", os.getpid())
    pipes = result_pipes()
    if not pipes:
        raise RuntimeError(f"task {nonce} found no result pipe to break")
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in pipes:
        os.dup2(null, fd)
    os.close(null)
    time.sleep(BROKEN_PIPE_SECONDS)
    os._exit(BROKE_PIPE_EXIT)


def _write_pid(pid_dir: str, name: str, pid: int) -> None:
    """Write ``pid`` and its start time to ``pid_dir/name``, whole or not at
    all (the start time tells the process from a later one of that pid)."""
    with open(f"/proc/{pid}/stat") as stat:
        started = stat.read().rpartition(")")[2].split()[19]
    path = os.path.join(pid_dir, name)
    with open(path + ".tmp", "w") as f:
        f.write(f"{pid} {started}")
    os.rename(path + ".tmp", path)

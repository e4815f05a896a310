"""The worker process and its operating system: signals, dying with its
parent, its memory, its exit code, and copies of it that a task forks.

Invariants:

- SIGINT is ignored and SIGTERM has a handler that does nothing while the
  worker serves (see ``_child``); SIGCHLD has its default action, so tasks
  learn the exit status of the programs they run.
- On Linux the worker dies with its parent (``PR_SET_PDEATHSIG``); elsewhere
  a thread watches the parent's pid.
- A copy of the worker that a task forked and that came back into the worker
  loop leaves without touching the pipes, shared buffers or ``atexit``
  handlers.

Standard library only, like the rest of the worker side; it never imports
trio or attrs.
"""

from __future__ import annotations

import os
import signal
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType

_PR_SET_PDEATHSIG = 1


def resident_memory() -> int:
    """The process's current resident set size, in bytes."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        # Not Linux: the peak is the best the standard library offers, so a
        # worker that once went above the limit retires after its next task.
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def die_with_parent(parent_pid: int) -> None:
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    else:  # pragma: no cover - exercised on other systems only
        import threading
        import time

        def watchdog() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watchdog, daemon=True).start()
    if os.getppid() != parent_pid:
        # The parent died before the signal was armed.
        os._exit(1)


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, SystemExit):
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 1
    return 1


def ignore_stop_signals() -> None:
    # A program that ignores SIGCHLD passes that on across exec: tasks would
    # then never learn the exit status of the programs they run.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_sigterm)
    # Restart interrupted system calls, as if the signal were ignored, so
    # that C code a task runs never sees EINTR because of it.
    signal.siginterrupt(signal.SIGTERM, False)
    # Blocked by the parent across the start (see _spawn): pending ones are
    # delivered now, harmlessly.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    pass


def leave_if_forked(worker_pid: int, exc: BaseException | None) -> None:
    """End a copy of the worker that a task forked and that came back here.

    A task that forks and lets the child return or raise (instead of calling
    ``os._exit``) would otherwise have two processes read the same tasks and
    answer on the same pipe. The copy leaves without touching the pipes,
    without flushing buffers it shares with the worker, and without running
    ``atexit`` handlers it inherited.
    """
    if os.getpid() == worker_pid:
        return
    code = exit_code(exc) if exc is not None else 0
    try:
        os.write(
            2,
            f"triopool: process {os.getpid()}, forked by a task in worker "
            f"{worker_pid}, came back into the worker loop; it exits now with "
            f"code {code} (a forked child should end with os._exit())\n".encode(),
        )
    finally:
        os._exit(code)

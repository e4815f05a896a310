"""Functions the limits and lifecycle tests run in workers (stdlib only, like
``workerfuncs``, so that workers stay light and never import trio)."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any


def sleep_through_soft_limit(seconds: float) -> str:
    """Block in time.sleep; report whether the soft limit interrupted it."""
    from triopool import SoftTimeLimitExceeded

    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "finished"


def ignore_soft_limit(seconds: float) -> str:
    """Catch the soft limit and keep running, as a badly behaved task would."""
    from triopool import SoftTimeLimitExceeded

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except SoftTimeLimitExceeded:
            pass
    return "finished"


def allocate_and_free(megabytes: int) -> int:
    """Touch a large block, then free it: the peak grows, the current RSS not."""
    block = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    del block
    return os.getpid()


def resident_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def initializer_fails_every_other_start(counter_path: str) -> None:
    """Fail on the 1st, 3rd, 5th... start (the count lives in a file)."""
    try:
        with open(counter_path) as f:
            count = int(f.read() or "0")
    except FileNotFoundError:
        count = 0
    with open(counter_path, "w") as f:
        f.write(str(count + 1))
    if count % 2 == 0:
        raise RuntimeError(f"start {count + 1} fails on purpose")


def announce_then_sleep(seconds: float) -> int:
    """Print this worker's pid on the inherited stdout, then sleep."""
    # One write of a short line is atomic on a pipe: lines from two workers
    # cannot interleave (print() may write the text and the newline apart).
    os.write(1, f"busy {os.getpid()}\n".encode())
    time.sleep(seconds)
    return os.getpid()


def signal_state() -> dict[str, Any]:
    """How this worker treats SIGINT and SIGTERM."""
    term = signal.getsignal(signal.SIGTERM)
    return {
        "sigint_ignored": signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
        "sigterm_default": term is signal.SIG_DFL,
        "sigterm_ignored": term is signal.SIG_IGN,
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
    }


def exec_child_sigterm() -> str:
    """The SIGTERM disposition a program started by a task gets."""
    import subprocess

    code = "import signal; print(int(signal.getsignal(signal.SIGTERM)))"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()

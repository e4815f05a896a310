"""Functions the tests run in workers. Imports only the standard library, so
that a worker importing this module stays fast and never imports trio."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any


def add(a: int, b: int) -> int:
    return a + b


def identity(x: Any) -> Any:
    return x


def getpid() -> int:
    return os.getpid()


def echo_with_pid(nonce: Any) -> tuple[Any, int]:
    return nonce, os.getpid()


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def raise_value_error(*args: Any) -> None:
    raise ValueError(*args)


def exit_with(code: int) -> None:
    os._exit(code)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(10)


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def raise_system_exit(code: Any) -> None:
    raise SystemExit(code)


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def open_fds() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc/self/fd"))


def fd_targets() -> dict[int, str]:
    """The worker's open fds and what each points at."""
    result = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            result[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
    return result


def loaded_modules() -> list[str]:
    return sorted(sys.modules)


def sys_path_and_cwd() -> tuple[list[str], str]:
    return list(sys.path), os.getcwd()


def nbytes(data: Any) -> tuple[str, int]:
    return type(data).__name__, len(memoryview(data).cast("B"))


def sigint_disposition() -> bool:
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


_counter = 0


def count_calls() -> tuple[int, int]:
    global _counter
    _counter += 1
    return os.getpid(), _counter


def initializer_fails() -> None:
    raise RuntimeError("initializer failed on purpose")


def initializer_exits() -> None:
    os._exit(3)


def initializer_sleeps(seconds: float) -> None:
    time.sleep(seconds)


_initialized: list[Any] = []


def initializer_records(*args: Any) -> None:
    _initialized.append(args)


def initialized() -> list[Any]:
    return list(_initialized)


def busy_loop(seconds: float) -> str:
    from triopool import SoftTimeLimitExceeded

    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            pass
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "finished"


def allocate(megabytes: int) -> int:
    global _hoard
    _hoard = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(_hoard), 4096):
        _hoard[i] = 1
    return os.getpid()


_hoard = bytearray()


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


def return_unpicklable() -> Unpicklable:
    return Unpicklable()


class FailsToUnpickle:
    """Pickles fine, but raises when it is unpickled."""

    def __reduce__(self) -> Any:
        return (_refuse, ())


def _refuse() -> None:
    raise RuntimeError("this object refuses to be unpickled")


def return_fails_to_unpickle() -> FailsToUnpickle:
    return FailsToUnpickle()


class UnpicklableError(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"needs two args: {a} {b}")


def raise_unpicklable_error() -> None:
    raise UnpicklableError(1, 2)


class LockError(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle this error")


def raise_lock_error() -> None:
    raise LockError("locked")


# Limits and lifecycle (tests/test_limits.py, tests/test_lifecycle.py).


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

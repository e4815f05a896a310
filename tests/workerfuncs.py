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


def fd_targets() -> dict[int, tuple[str, bool]]:
    """The worker's open fds: what each points at, and whether it is read-only."""
    import fcntl

    result = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
            read_only = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        except OSError:
            continue  # the listing's own fd, closed by now
        result[fd] = (target, read_only)
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


def spin_until(deadline: float) -> None:
    """Burn CPU in pure Python until ``time.monotonic()`` reaches *deadline*."""
    while time.monotonic() < deadline:
        pass


def busy_loop(seconds: float) -> str:
    from triopool import SoftTimeLimitExceeded

    try:
        # The loop is a call, not written inside the `try`: on Python 3.13 a
        # signal handler's exception can escape a `try` around a tight loop
        # (CPython issues 108214 and 130279; see docs/limits.rst). From a
        # call it is raised at the call, which the `try` always covers.
        spin_until(time.monotonic() + seconds)
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


def public_name_in_worker() -> str:
    import triopool

    return triopool.open_pool.__name__


_held_open: list[int] = []


def hold_open_read_only(path: str) -> None:
    """Keep a file open read-only for the worker's life, as a newer libffi
    does with its own library file once ``ctypes`` is imported."""
    _held_open.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))


def pid_and_fd_targets() -> tuple[int, dict[int, tuple[str, bool]]]:
    time.sleep(0.05)  # so that concurrent calls spread over the workers
    return os.getpid(), fd_targets()


def touch(path: str) -> str:
    with open(path, "w") as f:
        f.write("ran")
    return path


def parent_pid() -> int:
    return os.getppid()


def preload_probe_state() -> tuple[int, int | None]:
    """(parent pid, pid that imported tests.preload_probe, if it is loaded)."""
    module = sys.modules.get("tests.preload_probe")
    return os.getppid(), getattr(module, "IMPORTED_IN", None)


def pid_and_parent() -> tuple[int, int]:
    return os.getpid(), os.getppid()


def sleep_then_pid_and_parent(seconds: float) -> tuple[int, int]:
    time.sleep(seconds)
    return os.getpid(), os.getppid()


# The recycling storm (tests/storm.py).


def storm_task(nonce: str, action: str, argument: float) -> tuple[str, int]:
    """Echo ``nonce`` with this worker's pid, or die or hang as told."""
    if action == "exit":
        os._exit(int(argument))
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(argument)
    return nonce, os.getpid()


def storm_task_noting_start(
    nonce: str, action: str, argument: float, started: str
) -> tuple[str, int]:
    """:func:`storm_task`, having first appended ``"nonce pid"`` to the file
    ``started``: what ran, and where, as the worker saw it."""
    fd = os.open(started, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        # One small write to a file opened O_APPEND: whole lines, in order.
        os.write(fd, f"{nonce} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return storm_task(nonce, action, argument)


def initializer_random_delay(quick: float, slow_low: float, slow_high: float) -> None:
    """Delay UP: briefly for most workers, across the start timeout for some."""
    import random

    rng = random.Random()
    if rng.random() < quick:
        time.sleep(rng.uniform(0.0, 0.02))
    else:
        time.sleep(rng.uniform(slow_low, slow_high))


def raise_large_error(size: int) -> None:
    """An exception whose pickle is large enough to travel out of band."""
    raise ValueError("x" * size)


def exit_with_large_message(size: int) -> None:
    raise SystemExit("x" * size)


def write_garbage_to_result_pipe() -> str:
    """Break the protocol: write bytes that are not a frame to every fd > 2
    this worker holds (its result pipe among them)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.write(fd, b"\xee" * 32)
            except OSError:
                pass
    return "wrote garbage"


def leave_a_thread_running(seconds: float) -> int:
    """Leave a non-daemon thread behind, which holds up the worker's exit."""
    import threading
    import time

    threading.Thread(target=time.sleep, args=(seconds,)).start()
    return os.getpid()


class CustomBaseException(BaseException):
    """Neither an Exception nor one of Python's own BaseExceptions."""


def raise_base_exception(message: str) -> None:
    raise CustomBaseException(message)


def pipe_capacities() -> list[int]:
    """The capacity of each pipe this worker holds, besides 0, 1 and 2."""
    import fcntl

    capacities = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                capacities.append(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))
            except OSError:
                pass  # not a pipe (the listing's own fd)
    return capacities


def sleep_then_die(seconds: float) -> None:
    time.sleep(seconds)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


def sleep_deaf_to_skips(seconds: float) -> float:
    """Sleep with SIGURG (the pool's "take in your SKIP frames") blocked for
    the rest of the worker's life, so that it sees them only between tasks."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGURG})
    time.sleep(seconds)
    return seconds


def outlive_parent(seconds: float) -> tuple[int, int]:
    """Sleep, then stop dying with the parent (undo the worker's
    PR_SET_PDEATHSIG), as if the kill at its fork server's death lagged."""
    import ctypes

    time.sleep(seconds)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, 0, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG, no signal
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return os.getpid(), os.getppid()


def multiprocessing_authkey() -> bytes:
    import multiprocessing

    return bytes(multiprocessing.current_process().authkey)


def getenv(name: str) -> str | None:
    return os.environ.get(name)


def dask_worker_address(seconds: float) -> str:
    """The address of the Dask worker running this task, after ``seconds``."""
    import distributed  # only ever called on a Dask worker

    time.sleep(seconds)
    address: str = distributed.get_worker().address
    return address


def note_pids_then_sleep(path: str, seconds: float) -> float:
    """Write "pid parent_pid" to ``path``, then sleep ``seconds``."""
    with open(path + ".tmp", "w") as file:
        file.write(f"{os.getpid()} {os.getppid()}")
    os.replace(path + ".tmp", path)
    time.sleep(seconds)
    return seconds

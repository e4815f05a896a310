"""Functions the log forwarding and current_worker tests run in workers.

Imports only the standard library (and triopool's worker-side names), so a
worker importing this module never imports trio.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import triopool

log = logging.getLogger("tests.logfuncs")


def where() -> triopool.WorkerInfo:
    return triopool.current_worker()


def where_and_modules() -> tuple[triopool.WorkerInfo, list[str]]:
    return triopool.current_worker(), sorted(sys.modules)


def where_then_exit(code: int) -> None:
    triopool.current_worker()
    os._exit(code)


# Set by the initializer below, in the worker.
_from_initializer: triopool.WorkerInfo | None = None


def remember_worker() -> None:
    global _from_initializer
    _from_initializer = triopool.current_worker()


def remembered() -> triopool.WorkerInfo | None:
    return _from_initializer


def log_in_initializer(name: str) -> None:
    logging.getLogger(name).warning("initializer ran", extra={"step": "init"})


class _Counting(logging.Filter):
    """Counts the records made in this worker, whatever becomes of them."""

    def __init__(self) -> None:
        super().__init__()
        self.made: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        self.made[record.levelname] = self.made.get(record.levelname, 0) + 1
        return True


def log_levels(name: str = "tests.logfuncs") -> dict[str, int]:
    """Log one record per level on ``name``; return how many records were made here."""
    logger = logging.getLogger(name)
    counting = _Counting()
    logger.addFilter(counting)
    try:
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
            logger.log(
                level, "at %s", logging.getLevelName(level), extra={"step": level}
            )
    finally:
        logger.removeFilter(counting)
    return counting.made


def log_exception() -> str:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("division", extra={"step": "exception"})
    return "logged"


class Unpicklable:
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return "<Unpicklable>"


def log_unpicklable() -> str:
    thing = Unpicklable()
    log.warning("thing %s", thing, extra={"step": "unpicklable", "thing": thing})
    return "logged"


def log_from_thread(count: int) -> int:
    def run() -> None:
        for n in range(count):
            log.warning("from a thread", extra={"step": n})

    thread = threading.Thread(target=run)
    thread.start()
    for n in range(count):
        log.warning("from the task", extra={"step": -1 - n})
    thread.join()
    return count


def log_then_return(value: Any) -> Any:
    log.warning("returning", extra={"step": "return"})
    return value


def sleep_then_where(seconds: float) -> triopool.WorkerInfo:
    import time

    time.sleep(seconds)
    return triopool.current_worker()


def log_later(delay: float) -> str:
    """Return at once; a thread logs ``delay`` seconds later, while the
    worker idles."""
    import time

    def run() -> None:
        time.sleep(delay)
        log.warning("while idle", extra={"step": "idle"})

    threading.Thread(target=run, daemon=True).start()
    return "returned"


def forked_current_worker() -> str:
    """What current_worker() does in a process the task forks."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            triopool.current_worker()
            outcome = b"no error"
        except RuntimeError:
            outcome = b"RuntimeError"
        os.write(write, outcome)
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        return pipe.read().decode()


def log_until_soft_limit() -> int:
    """Log without pause until the soft time limit strikes; return how many."""
    count = 0
    try:
        while True:
            log.warning("busy", extra={"step": "busy"})
            count += 1
    except triopool.SoftTimeLimitExceeded:
        return count


def configure_own_logging() -> None:
    """Initializer: the worker handles its records itself."""
    logging.basicConfig(level=logging.DEBUG, handlers=[logging.NullHandler()])

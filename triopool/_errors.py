"""The exception types of triopool.

Every public exception pickles: a worker raises :class:`SoftTimeLimitExceeded`
and sends it to the parent, and users send the pool's errors between processes
of their own. This module imports only the standard library, because the worker
process imports it too and must start fast.
"""

from __future__ import annotations

__all__ = [
    "BrokenPoolError",
    "BrokenWorkerError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "TimeLimitExceeded",
    "TriopoolError",
    "WorkerStartError",
]


class TriopoolError(Exception):
    """Base class of the errors the pool raises on its own account."""


class BrokenWorkerError(TriopoolError):
    """The worker process died while it was running the task.

    Attributes:
        pid: The process id of the worker that died.
        exitcode: Its exit status: negative when it was killed by a signal
            (``-9`` for SIGKILL), ``None`` if it could not be learned.
        runs: How many runs of the task were tried, this last one included
            (more than 1 only with ``retries``).
    """

    runs: int = 1

    def __init__(self, message: str, pid: int | None, exitcode: int | None) -> None:
        super().__init__(message, pid, exitcode)
        self.pid = pid
        self.exitcode = exitcode

    def __str__(self) -> str:
        return str(self.args[0])


class TimeLimitExceeded(TriopoolError):
    """The task ran past its hard time limit; its worker was killed.

    Attributes:
        time_limit: The limit that was exceeded, in seconds.
        runs: How many runs of the task were tried, this last one included
            (more than 1 only with ``retries``).
    """

    runs: int = 1

    def __init__(self, message: str, time_limit: float) -> None:
        super().__init__(message, time_limit)
        self.time_limit = time_limit

    def __str__(self) -> str:
        return str(self.args[0])


class WorkerStartError(TriopoolError):
    """A worker failed to start.

    Its initializer raised, the process exited before it reported up, or it
    did not report up within ``start_timeout``.
    """


class BrokenPoolError(TriopoolError):
    """The pool gave up starting workers after ``max_start_failures`` in a row.

    Raised by every waiting and every later call; ``__cause__`` is the last
    :class:`WorkerStartError`.
    """


class SerializationError(TriopoolError):
    """A function, its arguments, its result or its exception could not cross
    the process boundary. The pickling error is the ``__cause__`` when it
    happened in this process; otherwise its text is in the message."""


class RemoteError(TriopoolError):
    """The task raised an exception that could not be sent to the parent.

    Attributes:
        type_name: The qualified name of the exception's type.
        message: ``str()`` of the exception.
        traceback_text: The worker's formatted traceback.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback as the ``__cause__`` of the
    exception re-raised in the parent, so printing it shows the worker's
    frames."""

    def __init__(self, traceback_text: str) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f'\n"""\n{self.traceback_text.rstrip()}\n"""'


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task, in the worker, when its soft time limit expires.

    The task may catch it to clean up; if it lets it escape, the caller gets it.
    """


for _cls in (
    TriopoolError,
    BrokenWorkerError,
    TimeLimitExceeded,
    WorkerStartError,
    BrokenPoolError,
    SerializationError,
    RemoteError,
    RemoteTraceback,
    SoftTimeLimitExceeded,
):
    _cls.__module__ = "triopool"
del _cls

"""What ``triopool`` shows on the terminal: a progress line, and everything
else kept off it.

On a terminal the progress line owns the last line of stderr: everything
else written to the terminal while it shows (results on stdout, messages, the
pool's log records, what workers print) first erases it, and it is redrawn
after. Workers' output reaches the terminal through a pipe the parent relays
for that reason (see :class:`OutputRelay`). Off a terminal the line is written
afresh every 2 s instead, so logs stay readable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import IO, TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .. import Pool
    from .._progress import Progress

READ_SIZE = 1 << 16


class LogToProgress(logging.Handler):
    """The pool's log records, written as :meth:`Progress.message` lines.

    The command configures no logging, so without this the records would go
    to ``logging.lastResort`` (warnings and errors, bare messages, on stderr),
    right onto the status line. This writes the same lines, the right way.
    """

    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.WARNING)
        self._progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._progress.message(self.format(record))
        except Exception:  # pragma: no cover - as logging.Handler does
            self.handleError(record)


@contextlib.contextmanager
def pool_log_through(progress: Progress) -> Iterator[None]:
    """Route the ``"triopool"`` logger's records through ``progress``, unless
    the program has configured logging itself."""
    logger = logging.getLogger("triopool")
    if logger.hasHandlers():
        yield
        return
    handler = LogToProgress(progress)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


class OutputRelay:
    """Workers' stdout and stderr, relayed line by line around the status line.

    Workers write straight to the fds they inherit. While the progress line
    is on a terminal, this process's fd 2 is swapped for a pipe before the
    pool starts, so the workers inherit the pipe; the progress line itself
    writes to a copy of the terminal. :meth:`relay` reads the pipe and
    writes each line with :meth:`Progress.message`. :meth:`restore` puts the
    terminal back on fd 2, which closes this process's write end: once the
    workers have exited too, the relay reads EOF and ends.
    """

    def __init__(self) -> None:
        sys.stderr.flush()
        self.terminal_fd = os.dup(2)
        self._read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._restored = False
        self._relaying = False

    def terminal(self) -> IO[str]:
        """A text stream on the terminal (it owns the copy of the fd)."""
        return open(  # closed by the caller
            self.terminal_fd,
            "w",
            encoding=sys.stderr.encoding,
            errors="backslashreplace",
            closefd=True,
        )

    async def relay(self, progress: Progress) -> None:
        """Copy the pipe to the terminal, a line at a time, until EOF."""
        partial = b""
        self._relaying = True
        async with trio.lowlevel.FdStream(self._read_fd) as pipe:
            while True:
                data = await pipe.receive_some(READ_SIZE)
                if not data:
                    break
                *whole, partial = (partial + data).split(b"\n")
                if len(partial) >= READ_SIZE:  # a very long line: let it out
                    whole.append(partial)
                    partial = b""
                for line in whole:
                    progress.message(line.decode(errors="backslashreplace"))
        if partial:
            progress.message(partial.decode(errors="backslashreplace"))

    def restore(self) -> None:
        """Put the terminal back on fd 2 (idempotent)."""
        if not self._restored:
            self._restored = True
            os.dup2(self.terminal_fd, 2)
            if not self._relaying:  # the relay never took the pipe over
                os.close(self._read_fd)


def pool_status(pool: Pool) -> str:
    stats = pool.statistics()
    return (
        f"workers alive {stats.workers_alive}/{stats.workers}"
        f"  recycled {stats.workers_recycled}  lost {stats.workers_lost}"
    )

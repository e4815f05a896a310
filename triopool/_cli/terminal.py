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
import math
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .. import Pool

READ_SIZE = 1 << 16


class Progress:
    """A status line on stderr, redrawn in place on a terminal.

    On a terminal the line is rewritten every 0.1 s; elsewhere (a log file,
    CI) a new line is written every 2 s, so logs stay readable. On a
    terminal, other output must not land on the status line: write it inside
    :meth:`hidden`, or through :meth:`message`.
    """

    def __init__(self, stream: IO[str], *, enabled: bool) -> None:
        self._stream = stream
        self.enabled = enabled
        self._tty = isatty(stream)
        self.interval = 0.1 if self._tty else 2.0
        self._last_draw = -math.inf
        self._drawn = False
        self._text = ""
        self._render: Callable[[], str] | None = None

    @property
    def on_terminal(self) -> bool:
        """Whether a status line is shown and redrawn in place."""
        return self.enabled and self._tty

    def draw(self, text: str, *, force: bool = False) -> None:
        """Show ``text``, unless the last draw was less than an interval ago."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        self._text = text
        if self._tty:
            self._stream.write(f"\r{text}\x1b[K")
            self._drawn = True
        else:
            self._stream.write(f"{text}\n")
        self._stream.flush()

    def clear(self) -> None:
        """Erase the status line (on a terminal), leaving the cursor at the
        start of the empty line."""
        if self._tty and self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False

    @contextlib.contextmanager
    def hidden(self) -> Iterator[None]:
        """Erase the status line for the block, then draw it again."""
        self.clear()
        try:
            yield
        finally:
            if self.on_terminal and self._text:
                text = self._text if self._render is None else self._render()
                self.draw(text, force=True)

    def message(self, text: str) -> None:
        """Write a message line on the same stream, without mangling the
        status line: on a terminal it is erased first and redrawn after."""
        with self.hidden():
            self._stream.write(f"{text}\n")
            self._stream.flush()

    def done(self, text: str) -> None:
        """Show the final state and end the line."""
        if not self.enabled:
            return
        self.draw(text, force=True)
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
            self._text = ""
            self._render = None

    async def run(self, render: Callable[[], str]) -> None:
        """Redraw ``render()`` until cancelled."""
        self._render = render
        while True:
            self.draw(render(), force=True)
            await trio.sleep(self.interval)


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


def isatty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def pool_status(pool: Pool) -> str:
    stats = pool.statistics()
    return (
        f"workers alive {stats.workers_alive}/{stats.workers}"
        f"  recycled {stats.workers_recycled}  lost {stats.workers_lost}"
    )


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:.1f}/s" if seconds > 0 else "-"

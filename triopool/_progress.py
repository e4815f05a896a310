"""Progress of a ``map``: the snapshots a callable gets, and the line on stderr.

:class:`MapProgress` is what ``progress=`` callables of
:meth:`triopool.Pool.map` and :meth:`triopool.Pool.imap` receive;
:class:`Reporter` counts a call's results and hands out snapshots, at most
ten a second and once at the end; :func:`describe` renders one as the
progress line (done, total when known, failures, rate, ETA) that both
``progress=True`` and the ``triopool map`` command show; :class:`Progress`
draws such a line on a stream, in place on a terminal.

This module never runs in a worker.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import IO, TYPE_CHECKING, Any

import attrs
import trio

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

#: The least time between two snapshots handed to a callable, in seconds.
MIN_INTERVAL = 0.1


@attrs.frozen
class MapProgress:
    """How far a :meth:`~triopool.Pool.map` or :meth:`~triopool.Pool.imap`
    call has got: a frozen snapshot.

    Attributes:
        done: Items whose outcome is known (finished or failed).
        failed: Of those, how many failed.
        total: How many items the input has, if it has a length
            (``len(iterable)``); ``None`` otherwise.
        elapsed: Seconds since the call started.
    """

    done: int
    failed: int
    total: int | None
    elapsed: float

    @property
    def rate(self) -> float:
        """Items done per second so far (0.0 before any time has passed)."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; ``None`` without a total or a rate."""
        rate = self.rate
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.done, 0) / rate


def describe(progress: MapProgress, *, pulled: int | None = None) -> str:
    """The progress line: ``"1234/5000  failed 3  812.4/s  ETA 0:05"``.

    Without a total, ``pulled`` (items taken from the input so far) is shown
    with a ``+`` in its place, or nothing.
    """
    if progress.total is not None:
        count = f"{progress.done}/{progress.total}"
    elif pulled is not None:
        count = f"{progress.done}/{pulled}+"
    else:
        count = f"{progress.done}"
    text = f"{count}  failed {progress.failed}  {rate(progress.done, progress.elapsed)}"
    eta = progress.eta
    if eta is not None and progress.done < (progress.total or 0):
        text += f"  ETA {_duration(eta)}"
    return text


def _duration(seconds: float) -> str:
    seconds = math.ceil(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02}:{seconds:02}"
    return f"{minutes}:{seconds:02}"


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:.1f}/s" if seconds > 0 else "-"


def isatty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Reporter:
    """Counts one call's outcomes and hands snapshots to ``callback``.

    :meth:`add` calls it at most once per :data:`MIN_INTERVAL`;
    :meth:`finish` calls it once more, with the final counts, and
    ``on_end`` if given (it ends the line on a terminal).
    """

    __slots__ = ("_callback", "_last", "_on_end", "_start", "done", "failed", "total")

    def __init__(
        self,
        callback: Callable[[MapProgress], object],
        *,
        on_end: Callable[[MapProgress], object] | None = None,
    ) -> None:
        self._callback = callback
        self._on_end = on_end
        self._start = time.monotonic()
        self._last = -math.inf
        self.done = 0
        self.failed = 0
        self.total: int | None = None

    def snapshot(self) -> MapProgress:
        return MapProgress(
            self.done, self.failed, self.total, time.monotonic() - self._start
        )

    def add(self, done: int, failed: int) -> None:
        """``done`` more outcomes are known, ``failed`` of them failures."""
        self.done += done
        self.failed += failed
        now = time.monotonic()
        if now - self._last >= MIN_INTERVAL:
            self._last = now
            self._callback(self.snapshot())

    def finish(self) -> None:
        """The call has ended: the final snapshot."""
        final = self.snapshot()
        if self._on_end is not None:
            self._on_end(final)
        else:
            self._callback(final)


def stderr_reporter() -> Reporter | None:
    """``progress=True``: a line on stderr if it is a terminal, else nothing."""
    stream = sys.stderr
    if not isatty(stream):
        return None
    line = Progress(stream, enabled=True)
    return Reporter(
        lambda progress: line.draw(f"map  {describe(progress)}"),
        on_end=lambda progress: line.done(f"map  {describe(progress)}"),
    )


def reporter_for(progress: object) -> Reporter | None:
    """The reporter for a call's ``progress=`` argument (checked already)."""
    if progress is None or progress is False:
        return None
    if progress is True:
        return stderr_reporter()
    assert callable(progress)
    return Reporter(progress)


def check_progress(progress: object) -> None:
    """Raise TypeError unless ``progress`` is None, a bool or a callable."""
    if progress is None or isinstance(progress, bool) or callable(progress):
        return
    raise TypeError(
        "progress must be None, True/False, or a callable taking a "
        f"triopool.MapProgress, got {progress!r}"
    )


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

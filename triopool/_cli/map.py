"""``triopool map``: call a function on each line of the input, in a pool.

Built on the public API only (:func:`open_pool` and :meth:`Pool.run_sync`).
It streams: input is read as results are written, with a bounded number of
chunks in flight, so memory stays flat however long the input is. The worker
does the per-item work (:func:`triopool._cli_worker.call_lines` decodes each
line, calls the function and encodes the output line); this side splits the
input into lines, batches them into chunks and writes what comes back.

Invariants:

- At most ``2 * workers`` chunks are between reading and writing; a chunk
  holds its token from the moment it is read until its lines are written.
- In input order, lines are written in order; a chunk's outcomes are written
  together, and the count of failures covers exactly the lines written.
- ``--chunksize auto`` sizes chunks with the ``ChunkPlanner`` of
  ``pool.map``, without a length (the input streams), and never waits for
  input to fill a chunk: it takes what has been read, so a slow producer is
  not held back.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from collections import deque
from typing import IO, TYPE_CHECKING, Any

import trio

from .. import BrokenPoolError, TriopoolError, _cli_worker, open_pool
from .._chunksize import MAX_AUTO_CHUNK, ChunkPlanner
from .._progress import MapProgress, Progress, describe, isatty
from .parser import AUTO, PROG, UsageError
from .terminal import READ_SIZE, OutputRelay, pool_log_through, pool_status

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from .. import Pool


def _load_target(target: str) -> Callable[[Any], Any]:
    """Import ``MODULE:FUNCTION``, with errors a user can act on."""
    module_name, colon, qualname = target.partition(":")
    if not colon or not module_name or not qualname:
        raise UsageError(f"expected MODULE:FUNCTION, got {target!r}")
    # Like ``python -m``: modules in the current directory are found (the
    # workers get this sys.path too).
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # The module itself or a package on its path is missing, rather than
        # something the module imports ("numpyx" importing a missing "numpy").
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(f"{exc.name}.")
        ):
            raise UsageError(
                f"cannot import module {module_name!r}: {exc} "
                f"(looked in the current directory and sys.path)"
            ) from None
        raise UsageError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    except Exception as exc:
        raise UsageError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(
                f"module {module_name!r} has no function {qualname!r}"
            ) from None
    if not callable(obj):
        raise UsageError(f"{target} is not callable: {obj!r}")
    if inspect.iscoroutinefunction(obj) or inspect.isasyncgenfunction(obj):
        raise UsageError(f"{target} is an async function; map needs a regular one")
    fn: Callable[[Any], Any] = obj
    return fn


def _open_input(path: str) -> tuple[IO[bytes], str, bool]:
    """The input stream, its name for messages, and whether to close it."""
    if path == "-":
        return sys.stdin.buffer, "<stdin>", False
    try:
        return open(path, "rb"), path, True  # closed by the caller
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


class _LineReader:
    """Input lines with their line numbers, read in a thread.

    Empty lines are skipped (with ``as_json``, blank ones: JSON allows
    whitespace around a value, so they are empty documents).
    """

    def __init__(self, stream: IO[bytes], *, as_json: bool) -> None:
        self._stream = stream
        self._as_json = as_json
        self._lines: deque[tuple[int, bytes]] = deque()
        self._partial = b""
        self._lineno = 0
        self.eof = False

    async def next_chunk(self, size: int, *, wait: bool) -> list[tuple[int, bytes]]:
        """Up to ``size`` lines. With ``wait``, fewer only at the end of the
        input; without, whatever has been read (at least one line, unless
        the input has ended)."""
        while not self._lines and not self.eof:
            await self._fill()
        while wait and len(self._lines) < size and not self.eof:
            await self._fill()
        count = min(size, len(self._lines))
        return [self._lines.popleft() for _ in range(count)]

    async def _fill(self) -> None:
        read = getattr(self._stream, "read1", self._stream.read)
        # Abandon on cancel: a read from a terminal may block for ever.
        data: bytes = await trio.to_thread.run_sync(
            read, READ_SIZE, abandon_on_cancel=True
        )
        if not data:
            self.eof = True
            pieces = [self._partial] if self._partial else []
            self._partial = b""
        else:
            pieces = (self._partial + data).split(b"\n")
            self._partial = pieces.pop()
        for piece in pieces:
            self._lineno += 1
            if piece.strip() if self._as_json else piece not in (b"", b"\r"):
                self._lines.append((self._lineno, piece))


class _MapRun:
    """One ``triopool map``: dispatch chunks, write outcomes, count them."""

    def __init__(
        self,
        args: argparse.Namespace,
        fn: Callable[[Any], Any],
        reader: _LineReader,
        input_name: str,
        out: IO[bytes],
        progress: Progress,
    ) -> None:
        self.fn = fn
        self.progress = progress
        self.reader = reader
        self.input_name = input_name
        self.out = out
        self.as_json: bool = args.json
        self.ordered = not args.unordered
        self.keep_going: bool = args.keep_going
        self.timeout: float | None = args.timeout
        #: The size of every chunk, or None for ``auto``: then :attr:`planner`
        #: sizes them.
        self.fixed_size: int | None
        if args.chunksize != AUTO:
            self.fixed_size = args.chunksize
        elif self.timeout is not None:
            # A limit per item holds exactly only for chunks of one item.
            self.fixed_size = 1
        else:
            self.fixed_size = None
        #: Made by :meth:`run`, which knows how many workers there are.
        self.planner: ChunkPlanner | None = None
        self.items_read = 0
        self.done = 0
        self.failed = 0
        #: Where the first failure was: "<stdin>:3".
        self.first_failure: str | None = None
        self.stopped = False
        # The pool broke: raised once, after the run, instead of once per
        # chunk in flight (each of which fails with it).
        self.broken: BrokenPoolError | None = None
        # Results go to the terminal the status line is on: erase it first.
        self._hide_progress = progress.on_terminal and isatty(out)
        # Ordered mode: finished chunks waiting for the ones before them.
        self._finished: dict[
            int, tuple[list[tuple[int, bytes]], list[tuple[int, str]]]
        ] = {}
        self._next_to_write = 0
        self._work: trio.Nursery | None = None

    def chunk_size(self) -> int:
        """The size of the next chunk."""
        if self.planner is None:
            assert self.fixed_size is not None
            return self.fixed_size
        # No length: the input streams. No input observations either: auto
        # chunks never wait for input, so a slow one delays no result.
        return self.planner.next_size()

    async def run(self, pool: Pool) -> None:
        start = trio.current_time()
        progress = self.progress
        workers = pool.statistics().workers
        if self.fixed_size is None:
            self.planner = ChunkPlanner(workers=workers, max_size=MAX_AUTO_CHUNK)

        def render() -> str:
            # The total is known once the input has ended.
            total = self.items_read if self.reader.eof else None
            elapsed = trio.current_time() - start
            snapshot = MapProgress(self.done, self.failed, total, elapsed)
            return (
                f"map  {describe(snapshot, pulled=self.items_read)}"
                f"  chunk {self.chunk_size()}  {pool_status(pool)}"
            )

        # Each chunk holds a token from reading until it is written, so at
        # most this many chunks are in memory, even in order.
        tokens = trio.Semaphore(2 * workers)
        wait = self.fixed_size is not None
        async with trio.open_nursery() as nursery:
            if progress.enabled:
                nursery.start_soon(progress.run, render)
            async with trio.open_nursery() as work:
                self._work = work
                index = 0
                while not self.stopped:
                    await tokens.acquire()
                    chunk = await self.reader.next_chunk(self.chunk_size(), wait=wait)
                    if not chunk:
                        break
                    self.items_read += len(chunk)
                    work.start_soon(self._run_chunk, pool, tokens, index, chunk)
                    index += 1
            nursery.cancel_scope.cancel()
        progress.done(render())
        if self.broken is not None:
            raise self.broken

    def _input_value(self, line: bytes) -> Any:
        """The input as it appears in an error line the parent writes itself."""
        try:
            return _cli_worker.parse_line(line, self.as_json)
        except ValueError:
            return line.decode("utf-8", "replace")

    async def _run_chunk(
        self,
        pool: Pool,
        tokens: trio.Semaphore,
        index: int,
        chunk: list[tuple[int, bytes]],
    ) -> None:
        lines = [line for _, line in chunk]
        time_limit = None if self.timeout is None else self.timeout * len(chunk)
        try:
            outcomes, seconds = await pool.run_sync(
                _cli_worker.call_lines,
                self.fn,
                lines,
                self.as_json,
                time_limit=time_limit,
            )
        except BrokenPoolError as exc:
            # No worker can start: every chunk in flight fails the same way.
            if self.broken is None:
                self.broken = exc
            self._stop()
            return
        except TriopoolError as exc:
            # The worker died, hit the time limit, or something could not be
            # pickled: every item of the chunk fails with that error.
            if self.planner is not None:
                self.planner.observe_failure()
            type_name = _cli_worker.error_type_name(exc)
            outcomes = [
                (
                    _cli_worker.FAILED,
                    _cli_worker.error_record(
                        self._input_value(line), type_name, str(exc)
                    ),
                )
                for line in lines
            ]
        else:
            if self.planner is not None:
                self.planner.observe_run(len(lines), seconds)
        if not self.ordered:
            self._write(chunk, outcomes)
            tokens.release()
            return
        self._finished[index] = (chunk, outcomes)
        while self._next_to_write in self._finished and not self.stopped:
            self._write(*self._finished.pop(self._next_to_write))
            self._next_to_write += 1
            tokens.release()

    def _stop(self) -> None:
        self.stopped = True
        assert self._work is not None
        self._work.cancel_scope.cancel()

    def _write(
        self, chunk: list[tuple[int, bytes]], outcomes: list[tuple[int, str]]
    ) -> None:
        if self.stopped:
            return
        hide = self.progress.hidden() if self._hide_progress else _NO_HIDING
        with hide:
            self._write_lines(chunk, outcomes)

    def _write_lines(
        self, chunk: list[tuple[int, bytes]], outcomes: list[tuple[int, str]]
    ) -> None:
        out = self.out
        for (lineno, _), (kind, text) in zip(chunk, outcomes, strict=True):
            self.done += 1
            if kind == _cli_worker.BAD_INPUT:
                out.flush()
                self.progress.message(f"{PROG} map: {self.input_name}:{lineno}: {text}")
            else:
                out.write(text.encode() + b"\n")
            if kind != _cli_worker.OK:
                self.failed += 1
                if self.first_failure is None:
                    self.first_failure = f"{self.input_name}:{lineno}"
                if not self.keep_going:
                    self._stop()
                    break
        out.flush()

    def summary(self) -> str | None:
        """The line that says why the exit status is 1, if it is for failures."""
        if not self.failed:
            return None
        if self.keep_going:
            return f"{PROG} map: {self.failed} of {self.done} items failed"
        return (
            f"{PROG} map: stopped at the first failure ({self.first_failure});"
            " --keep-going processes every item"
        )


_NO_HIDING = contextlib.nullcontext()


async def run(args: argparse.Namespace) -> int:
    """``triopool map``; returns the exit status."""
    fn = _load_target(args.target)
    stream, input_name, close = _open_input(args.file)
    enabled = isatty(sys.stderr) if args.progress is None else args.progress
    relay: OutputRelay | None = None
    terminal: IO[str] = sys.stderr
    try:
        if enabled and isatty(sys.stderr):
            relay = OutputRelay()
            terminal = relay.terminal()
        progress = Progress(terminal, enabled=enabled)
        map_run = _MapRun(
            args,
            fn,
            _LineReader(stream, as_json=args.json),
            input_name,
            sys.stdout.buffer,
            progress,
        )
        with pool_log_through(progress):
            async with trio.open_nursery() as nursery:
                if relay is not None:
                    nursery.start_soon(relay.relay, progress)
                try:
                    async with open_pool(
                        args.workers,
                        max_tasks_per_child=args.max_tasks_per_child,
                        initializer=_cli_worker.stdout_to_stderr,
                    ) as pool:
                        await map_run.run(pool)
                except BrokenPoolError as exc:
                    progress.message(f"{PROG} map: error: the pool broke: {exc}")
                    return 1
                finally:
                    # Every worker has exited: the relay reads to EOF and ends.
                    if relay is not None:
                        relay.restore()
    finally:
        if relay is not None:
            relay.restore()
            if terminal is not sys.stderr:
                terminal.close()
        if close:
            stream.close()
    summary = map_run.summary()
    if summary is not None:
        print(summary, file=sys.stderr)
        return 1
    return 0

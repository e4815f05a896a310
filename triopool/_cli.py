"""The ``triopool`` command line: ``triopool demo`` and ``triopool map``.

Built on the public API only (:func:`open_pool` and :meth:`Pool.run_sync`).
``map`` streams: it reads input as results are written, with a bounded number
of chunks in flight, so memory stays flat however long the input is. The
worker-side code lives in ``_demo`` and ``_cli_worker``, which never import
trio: a package's ``__main__`` is not re-run in workers.

Exit statuses: 0 success; 1 a task or an item failed (``map`` without
``--keep-going``, or a ``demo`` result that does not match), the pool broke,
or stdout was closed before every result was written (``| head``); 2 bad usage
(arguments, a missing module or function, an unreadable file); 130 Ctrl-C.

On a terminal the progress line owns the last line of stderr: everything
else written to the terminal while it shows (results on stdout, messages, the
pool's log records, what workers print) first erases it, and it is redrawn
after. Workers' output reaches the terminal through a pipe the parent relays
for that reason (see :class:`_OutputRelay`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import logging
import math
import os
import random
import sys
import time
from collections import deque
from typing import IO, TYPE_CHECKING, Any

import trio

from . import _cli_worker, _demo
from ._errors import BrokenPoolError, TriopoolError
from ._pool import _usable_cpus, open_pool

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from ._pool import Pool

_PROG = "triopool"
_READ_SIZE = 1 << 16


class UsageError(Exception):
    """A problem with the command line itself: reported, exit status 2."""


# Argument parsing


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``triopool`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="A process pool for Trio, from the command line.",
        epilog=(
            "Run 'triopool COMMAND --help' for the options of a command. "
            "Exit status: 0 success; 1 a task or item failed, the pool broke, "
            "or stdout was closed early; 2 bad usage; 130 interrupted."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )

    demo = commands.add_parser(
        "demo",
        help="count primes sequentially, then in a pool, and compare",
        description=(
            "Run a CPU-bound job (counting the primes in consecutive ranges of "
            "numbers) once sequentially in this process and once through a "
            "pool of worker processes, with a live progress line on stderr, "
            "then print the speed-up and the pool's statistics. The pool's "
            "results are checked against the sequential ones."
        ),
    )
    demo.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="worker processes (default: the number of usable CPUs)",
    )
    demo.add_argument(
        "--tasks",
        type=_positive_int,
        default=48,
        metavar="N",
        help=f"ranges of {_demo.SPAN} numbers to check (default: %(default)s)",
    )
    demo.add_argument(
        "--max-tasks-per-child",
        type=_positive_int,
        metavar="N",
        help="retire and replace each worker after N tasks (default: never)",
    )
    demo.add_argument(
        "--chaos",
        type=_fraction,
        nargs="?",
        const=0.1,
        default=0.0,
        metavar="FRACTION",
        help=(
            "make this fraction of the tasks kill their worker with SIGKILL, "
            "to show replacement and the errors reported (bare --chaos: 0.1)"
        ),
    )
    demo.set_defaults(run=_run_demo)

    map_ = commands.add_parser(
        "map",
        help="call MODULE:FUNCTION on each JSON line of the input",
        description=(
            "Read JSON values, one per line, from FILE or stdin; call "
            "FUNCTION on each in a pool of worker processes; write one JSON "
            'line per value to stdout: {"input": ..., "output": ...} or '
            '{"input": ..., "error": {"type": ..., "message": ...}}. '
            "Blank lines are skipped; a line that is not JSON has no value, "
            "so it gets no stdout line but a message on stderr with its line "
            "number. Without --keep-going, map stops at the first failure (a "
            "failed item or a line that is not JSON) and exits with status 1."
        ),
        epilog=(
            "The module is imported from the current directory or sys.path, "
            "in this process (to check it) and in every worker. What the "
            "function prints goes to stderr, so stdout holds only results. "
            "Exit status: 0 success (with --keep-going: even if items "
            "failed); 1 an item failed, the pool broke, or stdout was closed "
            "early; 2 bad usage; 130 interrupted. "
            "Example: seq 10 | triopool map math:factorial"
        ),
    )
    map_.add_argument(
        "target",
        metavar="MODULE:FUNCTION",
        help="the function to call, e.g. mypackage.tasks:resize",
    )
    map_.add_argument(
        "file",
        nargs="?",
        default="-",
        metavar="FILE",
        help="input file, one JSON value per line (default or '-': stdin)",
    )
    map_.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="worker processes (default: the number of usable CPUs)",
    )
    map_.add_argument(
        "--chunksize",
        type=_positive_int,
        default=1,
        metavar="N",
        help="items sent to a worker at a time (default: %(default)s)",
    )
    map_.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help=(
            "hard time limit per item, from when the worker gets it (a chunk "
            "of N items gets N times as long); on expiry the worker is killed "
            "and the chunk's items fail with TimeLimitExceeded"
        ),
    )
    map_.add_argument(
        "--max-tasks-per-child",
        type=_positive_int,
        metavar="N",
        help="retire and replace each worker after N chunks (default: never)",
    )
    map_.add_argument(
        "--unordered",
        action="store_true",
        help="write results as they complete instead of in input order",
    )
    map_.add_argument(
        "--keep-going",
        action="store_true",
        help=(
            "process every line even if some fail, and exit with status 0; "
            "failed items still get an error line (a line that is not JSON: "
            "a message on stderr)"
        ),
    )
    map_.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress line on stderr (default: when stderr is a terminal)",
    )
    map_.set_defaults(run=_run_map)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``triopool`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except UsageError as exc:
        print(f"{_PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{_PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (``| head``): stop quietly, and keep
        # the interpreter from complaining when it flushes stdout at exit.
        # Status 1: not every result was delivered.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1


def _only_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside nested single-exception groups, or the group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _trio_run(fn: Callable[[], Any]) -> Any:
    """``trio.run(fn)``, with an error from one task raised as itself."""
    try:
        return trio.run(fn)
    except BaseExceptionGroup as group:
        exc = _only_error(group)
        if exc is group:
            raise
        raise exc from None


# Progress line


class _Progress:
    """A status line on stderr, redrawn in place on a terminal.

    On a terminal the line is rewritten every 0.1 s; elsewhere (a log file,
    CI) a new line is written every 2 s, so logs stay readable. On a
    terminal, other output must not land on the status line: write it inside
    :meth:`hidden`, or through :meth:`message`.
    """

    def __init__(self, stream: IO[str], *, enabled: bool) -> None:
        self._stream = stream
        self.enabled = enabled
        self._tty = _isatty(stream)
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


class _LogToProgress(logging.Handler):
    """The pool's log records, written as :meth:`_Progress.message` lines.

    The command configures no logging, so without this the records would go
    to ``logging.lastResort`` (warnings and errors, bare messages, on stderr),
    right onto the status line. This writes the same lines, the right way.
    """

    def __init__(self, progress: _Progress) -> None:
        super().__init__(logging.WARNING)
        self._progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._progress.message(self.format(record))
        except Exception:  # pragma: no cover - as logging.Handler does
            self.handleError(record)


@contextlib.contextmanager
def _pool_log_through(progress: _Progress) -> Iterator[None]:
    """Route the ``"triopool"`` logger's records through ``progress``, unless
    the program has configured logging itself."""
    logger = logging.getLogger("triopool")
    if logger.hasHandlers():
        yield
        return
    handler = _LogToProgress(progress)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


class _OutputRelay:
    """Workers' stdout and stderr, relayed line by line around the status line.

    Workers write straight to the fds they inherit. While the progress line
    is on a terminal, this process's fd 2 is swapped for a pipe before the
    pool starts, so the workers inherit the pipe; the progress line itself
    writes to a copy of the terminal. :meth:`relay` reads the pipe and
    writes each line with :meth:`_Progress.message`. :meth:`restore` puts the
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

    async def relay(self, progress: _Progress) -> None:
        """Copy the pipe to the terminal, a line at a time, until EOF."""
        partial = b""
        self._relaying = True
        async with trio.lowlevel.FdStream(self._read_fd) as pipe:
            while True:
                data = await pipe.receive_some(_READ_SIZE)
                if not data:
                    break
                *whole, partial = (partial + data).split(b"\n")
                if len(partial) >= _READ_SIZE:  # a very long line: let it out
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


def _isatty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _pool_status(pool: Pool) -> str:
    stats = pool.statistics()
    return (
        f"workers alive {stats.workers_alive}/{stats.workers}"
        f"  recycled {stats.workers_recycled}  lost {stats.workers_lost}"
    )


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:.1f}/s" if seconds > 0 else "-"


# demo


def _run_demo(args: argparse.Namespace) -> int:
    workers: int = args.workers or _usable_cpus()
    tasks: int = args.tasks
    ranges = [_demo.task_range(index) for index in range(tasks)]
    doomed: set[int] = set()
    if args.chaos > 0:
        count = max(1, round(tasks * args.chaos))
        doomed = set(random.Random(2026).sample(range(tasks), min(count, tasks)))
    progress = _Progress(sys.stderr, enabled=True)
    first, last = ranges[0][0], ranges[-1][1]
    print(
        f"{_PROG} demo: counting the primes between {first:,} and {last:,} "
        f"in {tasks} tasks of {_demo.SPAN:,} numbers",
        file=sys.stderr,
    )

    # Sequential: the same function, called in this process.
    expected: list[int] = []
    start = time.perf_counter()
    cpu_start = time.process_time()
    for index, (low, high) in enumerate(ranges):
        expected.append(_demo.count_primes(low, high))
        elapsed = time.perf_counter() - start
        progress.draw(
            f"sequential  {index + 1}/{tasks}  {_rate(index + 1, elapsed)}",
            force=index + 1 == tasks,
        )
    sequential_time = time.perf_counter() - start
    sequential_cpu = time.process_time() - cpu_start
    progress.done(
        f"sequential  {tasks}/{tasks} tasks in {sequential_time:.2f} s"
        f"  ({_rate(tasks, sequential_time)})"
    )

    children_cpu = _children_cpu_time()
    with _pool_log_through(progress):
        results, pool_time, stats = _trio_run(
            lambda: _demo_pool(
                ranges, doomed, workers, args.max_tasks_per_child, progress
            )
        )
    broken = next((r for r in results if isinstance(r, BrokenPoolError)), None)
    if broken is not None:
        # Every task failed the same way: one message, not one per task.
        print(f"{_PROG} demo: error: the pool broke: {broken}", file=sys.stderr)
        return 1

    matched = sum(
        1
        for index, result in enumerate(results)
        if index not in doomed and result == expected[index]
    )
    wrong = [
        index
        for index, result in enumerate(results)
        if index not in doomed and result != expected[index]
    ]
    killed = [
        index for index in sorted(doomed) if isinstance(results[index], TriopoolError)
    ]
    speedup = sequential_time / pool_time if pool_time > 0 else math.inf
    out = sys.stdout
    print(
        f"sequential: {tasks} tasks in {sequential_time:6.2f} s"
        f"  ({_rate(tasks, sequential_time)}), 1 process",
        file=out,
    )
    print(
        f"pool:       {tasks} tasks in {pool_time:6.2f} s"
        f"  ({_rate(tasks, pool_time)}), {workers} workers"
        " (worker start-up included)",
        file=out,
    )
    # Workers are reaped by now, so their CPU time is in RUSAGE_CHILDREN.
    workers_cpu = _children_cpu_time() - children_cpu
    print(f"speed-up:   {speedup:.2f}x with {workers} workers", file=out)
    print(
        f"cpu:        sequential {_cpus(sequential_cpu, sequential_time)}, "
        f"pool workers {_cpus(workers_cpu, pool_time)} on average",
        file=out,
    )
    busy = _busy_machine_note(workers)
    if busy:
        print(busy, file=out)
    print(
        f"results:    {matched} of {tasks - len(doomed)} match the sequential run"
        f" ({sum(expected):,} primes)",
        file=out,
    )
    if doomed:
        print(
            f"chaos:      {len(killed)} of {len(doomed)} tasks killed their worker"
            " on purpose and failed with:",
            file=out,
        )
        for index in killed[:3]:
            error = results[index]
            print(
                f"              task {index}: {type(error).__name__}: {error}", file=out
            )
        if len(killed) > 3:
            print(f"              ... and {len(killed) - 3} more", file=out)
    print(
        f"workers:    started {stats.workers_started}, recycled"
        f" {stats.workers_recycled}, lost {stats.workers_lost}, start failures"
        f" {stats.start_failures}",
        file=out,
    )
    print(
        f"tasks:      completed {stats.tasks_completed}, failed {stats.tasks_failed}",
        file=out,
    )
    for index in wrong:
        print(
            f"{_PROG} demo: task {index}: expected {expected[index]}, "
            f"got {results[index]!r}",
            file=sys.stderr,
        )
    return 1 if wrong or len(killed) != len(doomed) else 0


def _children_cpu_time() -> float:
    """CPU seconds used by this process's reaped children."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpus(cpu_seconds: float, wall_seconds: float) -> str:
    if wall_seconds <= 0:
        return "-"
    return f"{cpu_seconds / wall_seconds:.2f} CPUs busy"


def _busy_machine_note(workers: int) -> str:
    """A note when other programs compete for the CPUs the demo measures."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return ""
    cpus = _usable_cpus()
    if load <= cpus:
        return ""
    return (
        f"note:       the machine is busy (load average {load:.1f} on {cpus} "
        "CPUs): other programs took CPU time from both runs, so the speed-up "
        "is lower than on an idle machine"
    )


async def _demo_pool(
    ranges: list[tuple[int, int]],
    doomed: set[int],
    workers: int,
    max_tasks_per_child: int | None,
    progress: _Progress,
) -> tuple[list[int | BaseException | None], float, Any]:
    tasks = len(ranges)
    results: list[int | BaseException | None] = [None] * tasks
    done = 0
    start = trio.current_time()
    # At most this many calls wait at once: memory stays bounded for any --tasks.
    limiter = trio.CapacityLimiter(2 * workers)

    async def run_one(pool: Pool, index: int) -> None:
        nonlocal done
        low, high = ranges[index]
        try:
            results[index] = await pool.run_sync(
                _demo.count_primes_or_die, low, high, index in doomed
            )
        except TriopoolError as exc:
            results[index] = exc
        finally:
            limiter.release_on_behalf_of(index)
        done += 1

    async with open_pool(workers, max_tasks_per_child=max_tasks_per_child) as pool:

        def render() -> str:
            elapsed = trio.current_time() - start
            return f"pool  {done}/{tasks}  {_rate(done, elapsed)}  {_pool_status(pool)}"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(progress.run, render)
            async with trio.open_nursery() as calls:
                for index in range(tasks):
                    await limiter.acquire_on_behalf_of(index)
                    calls.start_soon(run_one, pool, index)
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
        progress.done(
            f"pool  {tasks}/{tasks} tasks in {elapsed:.2f} s  ({_rate(tasks, elapsed)})"
            f"  {_pool_status(pool)}"
        )
    # After the block: retirements still under way at the end are counted.
    return results, elapsed, pool.statistics()


# map


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
    """Non-blank input lines with their line numbers, read in a thread."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lines: deque[tuple[int, bytes]] = deque()
        self._partial = b""
        self._lineno = 0
        self.eof = False

    async def next_chunk(self, size: int) -> list[tuple[int, bytes]]:
        """Up to ``size`` lines; fewer only at the end of the input."""
        while len(self._lines) < size and not self.eof:
            await self._fill()
        count = min(size, len(self._lines))
        return [self._lines.popleft() for _ in range(count)]

    async def _fill(self) -> None:
        read = getattr(self._stream, "read1", self._stream.read)
        # Abandon on cancel: a read from a terminal may block for ever.
        data: bytes = await trio.to_thread.run_sync(
            read, _READ_SIZE, abandon_on_cancel=True
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
            if piece.strip():
                self._lines.append((self._lineno, piece))


def _input_value(line: bytes) -> Any:
    """The input as it appears in an error line the parent writes itself."""
    try:
        return _cli_worker.parse_line(line)
    except ValueError:
        return line.decode("utf-8", "replace")


class _MapRun:
    """One ``triopool map``: dispatch chunks, write outcomes, count them."""

    def __init__(
        self,
        args: argparse.Namespace,
        fn: Callable[[Any], Any],
        reader: _LineReader,
        input_name: str,
        out: IO[bytes],
        progress: _Progress,
    ) -> None:
        self.fn = fn
        self.progress = progress
        self.reader = reader
        self.input_name = input_name
        self.out = out
        self.ordered = not args.unordered
        self.keep_going: bool = args.keep_going
        self.chunksize: int = args.chunksize
        self.timeout: float | None = args.timeout
        self.items_read = 0
        self.done = 0
        self.failed = 0
        self.stopped = False
        # The pool broke: raised once, after the run, instead of once per
        # chunk in flight (each of which fails with it).
        self.broken: BrokenPoolError | None = None
        # Results go to the terminal the status line is on: erase it first.
        self._hide_progress = progress.on_terminal and _isatty(out)
        # Ordered mode: finished chunks waiting for the ones before them.
        self._finished: dict[
            int, tuple[list[tuple[int, bytes]], list[tuple[int, str]]]
        ] = {}
        self._next_to_write = 0
        self._work: trio.Nursery | None = None

    async def run(self, pool: Pool, in_flight: int) -> None:
        start = trio.current_time()
        progress = self.progress

        def render() -> str:
            total = f"{self.items_read}" + ("" if self.reader.eof else "+")
            elapsed = trio.current_time() - start
            return (
                f"map  {self.done}/{total}  failed {self.failed}"
                f"  {_rate(self.done, elapsed)}  {_pool_status(pool)}"
            )

        # Each chunk holds a token from reading until it is written, so at
        # most `in_flight` chunks are in memory, even in order.
        tokens = trio.Semaphore(in_flight)
        async with trio.open_nursery() as nursery:
            if progress.enabled:
                nursery.start_soon(progress.run, render)
            async with trio.open_nursery() as work:
                self._work = work
                index = 0
                while not self.stopped:
                    await tokens.acquire()
                    chunk = await self.reader.next_chunk(self.chunksize)
                    if not chunk:
                        break
                    self.items_read += len(chunk)
                    work.start_soon(self._run_chunk, pool, tokens, index, chunk)
                    index += 1
            nursery.cancel_scope.cancel()
        progress.done(render())
        if self.broken is not None:
            raise self.broken

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
            outcomes = await pool.run_sync(
                _cli_worker.call_lines, self.fn, lines, time_limit=time_limit
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
            type_name = _cli_worker.error_type_name(exc)
            outcomes = [
                (
                    _cli_worker.FAILED,
                    _cli_worker.error_record(_input_value(line), type_name, str(exc)),
                )
                for line in lines
            ]
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
                self.progress.message(
                    f"{_PROG} map: {self.input_name}:{lineno}: {text}"
                )
            else:
                out.write(text.encode() + b"\n")
            if kind != _cli_worker.OK:
                self.failed += 1
                if not self.keep_going:
                    self._stop()
                    break
        out.flush()


_NO_HIDING = contextlib.nullcontext()


def _run_map(args: argparse.Namespace) -> int:
    fn = _load_target(args.target)
    stream, input_name, close = _open_input(args.file)
    workers: int = args.workers or _usable_cpus()
    enabled = _isatty(sys.stderr) if args.progress is None else args.progress
    relay: _OutputRelay | None = None
    terminal: IO[str] = sys.stderr
    if enabled and _isatty(sys.stderr):
        relay = _OutputRelay()
        terminal = relay.terminal()
    progress = _Progress(terminal, enabled=enabled)
    run = _MapRun(
        args, fn, _LineReader(stream), input_name, sys.stdout.buffer, progress
    )

    async def go() -> None:
        async with trio.open_nursery() as nursery:
            if relay is not None:
                nursery.start_soon(relay.relay, progress)
            try:
                async with open_pool(
                    workers,
                    max_tasks_per_child=args.max_tasks_per_child,
                    initializer=_cli_worker.stdout_to_stderr,
                ) as pool:
                    await run.run(pool, 2 * workers)
            finally:
                # Every worker has exited: the relay reads to EOF and ends.
                if relay is not None:
                    relay.restore()

    try:
        with _pool_log_through(progress):
            _trio_run(go)
    except BrokenPoolError as exc:
        print(f"{_PROG} map: error: the pool broke: {exc}", file=sys.stderr)
        return 1
    finally:
        if relay is not None:
            relay.restore()
            terminal.close()
        if close:
            stream.close()
    if run.failed and not args.keep_going:
        return 1
    return 0

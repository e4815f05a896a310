"""The words of the ``triopool`` command: its argument parser and usage errors.

This module knows what each command accepts, not what it does: the commands
live in :mod:`.demo` and :mod:`.map`, and :func:`triopool._cli.main` joins the
two. Options follow the conventions of ``xargs`` and GNU ``parallel`` where
they have one (``-j/--jobs``, one argument per input line, ``--keep-going``).
"""

from __future__ import annotations

import argparse
import math

from .. import _demo

PROG = "triopool"

#: ``--chunksize`` when not given: sized from measured item times.
AUTO = "auto"


class UsageError(Exception):
    """A problem with the command line itself: reported, exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _chunksize(text: str) -> int | str:
    if text == AUTO:
        return AUTO
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or 'auto')") from None


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


def _add_jobs(parser: argparse.ArgumentParser) -> None:
    # -j/--jobs as in xargs -P and parallel -j; --workers as in open_pool().
    parser.add_argument(
        "-j",
        "--jobs",
        "--workers",
        dest="workers",
        type=_positive_int,
        metavar="N",
        help="worker processes (default: the number of usable CPUs)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``triopool`` command."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
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
        help="count primes sequentially, then in a pool, and show why Trio",
        description=(
            "Run a CPU-bound job (counting the primes in consecutive ranges of "
            "numbers) once sequentially in this process and once through a "
            "pool of worker processes, with a live progress line on stderr. "
            "Meanwhile a heartbeat task in the same Trio program ticks, and "
            "its lateness is measured; after the job, one long task is "
            "cancelled with trio.move_on_after and its worker replaced. Then "
            "print the speed-up, the heartbeat's lateness, the cancellation "
            "and the pool's statistics. The pool's results are checked "
            "against the sequential ones."
        ),
    )
    _add_jobs(demo)
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

    map_ = commands.add_parser(
        "map",
        help="call MODULE:FUNCTION on each line of the input",
        description=(
            "Read lines from FILE or stdin and call FUNCTION on each in a "
            "pool of worker processes: like xargs -P or GNU parallel, each "
            "line is one argument, passed as a str (without its line ending); "
            "with --json, each line is a JSON value, passed decoded. Write one "
            'JSON line per item to stdout: {"input": ..., "output": ...} or '
            '{"input": ..., "error": {"type": ..., "message": ...}}. '
            "Empty lines are skipped (with --json, blank ones); a line that "
            "cannot be decoded gets no stdout line but a message on stderr "
            "with its line number. Without --keep-going, map stops at the "
            "first failure and exits with status 1."
        ),
        epilog=(
            "The module is imported from the current directory or sys.path, "
            "in this process (to check it) and in every worker. What the "
            "function prints goes to stderr, so stdout holds only results. "
            "Exit status: 0 success; 1 an item failed (with --keep-going too: "
            "the count is reported on stderr), the pool broke, or stdout was "
            "closed early; 2 bad usage; 130 interrupted. "
            "Examples: ls *.txt | triopool map mytasks:wordcount; "
            "seq 10 | triopool map --json math:factorial"
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
        help="input file, one item per line (default or '-': stdin)",
    )
    _add_jobs(map_)
    map_.add_argument(
        "--json",
        action="store_true",
        help="decode each line as JSON and pass the value (default: pass the line as a str)",
    )
    map_.add_argument(
        "--chunksize",
        type=_chunksize,
        default=AUTO,
        metavar="N|auto",
        help=(
            "items sent to a worker at a time; 'auto' (the default) starts at "
            "1 and sizes chunks from measured item times"
        ),
    )
    map_.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help=(
            "hard time limit per item, from when the worker gets it; on "
            "expiry the worker is killed and the item fails with "
            "TimeLimitExceeded (with --chunksize auto, items are then sent "
            "one at a time; a chunk of N items gets N times as long)"
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
            "process every line even if some fail (each failure gets an "
            "error line); the exit status is still 1 if any failed, and "
            "stderr says how many"
        ),
    )
    map_.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress line on stderr (default: when stderr is a terminal)",
    )
    return parser

"""The ``triopool`` command line: ``triopool demo`` and ``triopool map``.

One module per concept: :mod:`.parser` (the arguments), :mod:`.terminal` (the
progress line and everything kept off it), :mod:`.demo` and :mod:`.map` (the
commands). Built on the public API. The code that workers run lives in
``triopool._demo`` and ``triopool._cli_worker``, outside this package, because
importing this package imports trio, and workers never do.

Exit statuses: 0 success; 1 a task or an item failed (``map``, with or
without ``--keep-going``, or a ``demo`` result that does not match), the pool
broke, or stdout was closed before every result was written (``| head``); 2
bad usage (arguments, a missing module or function, an unreadable file); 130
Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import trio

from .demo import run as run_demo
from .map import run as run_map
from .parser import PROG, UsageError, build_parser

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable, Sequence

_COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "demo": run_demo,
    "map": run_map,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``triopool`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    command = _COMMANDS[args.command]
    try:
        return _trio_run(command, args)
    except UsageError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG} {args.command}: interrupted", file=sys.stderr)
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


def _trio_run(
    command: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    """``trio.run(command, args)``, with an error from one task raised as itself."""
    try:
        return trio.run(command, args)
    except BaseExceptionGroup as group:
        exc = _only_error(group)
        if exc is group:
            raise
        raise exc from None

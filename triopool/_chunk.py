"""The worker side of a chunked ``map``: one task that runs ``fn`` over a batch.

:meth:`triopool.Pool.map` and :meth:`triopool.Pool.imap` with ``chunksize > 1``
send a chunk of items as a single task, ``run_chunk(fn, items)``, so a chunk
costs one round trip instead of one per item.

With ``chunksize="auto"`` the task is ``run_timed_chunk(fn, items)``, which
also returns how long the calls took in the worker: the parent sizes the
next chunks from it (see ``_chunksize``).

With ``return_exceptions=True`` the task is ``run_chunk_catching(fn,
items)``: an item that raises does not end the chunk; its exception is sent
in its place, described as the worker loop describes a task's exception
(pickled if it pickles, and always its traceback as text), so the parent
rebuilds it exactly as ``run_sync`` would have raised it.

Invariants: the results come back in the order of the items, one per item;
without catching, the first item that raises ends the chunk, and its
exception leaves as itself (the worker loop sends it, with its traceback,
exactly as for ``run_sync``). A ``BaseException`` that is not an
``Exception`` always ends the chunk (and the worker, as for any task).

This module imports only the standard library and ``_messages`` (itself
standard library only): the worker imports it.
"""

from __future__ import annotations

import time

from ._messages import RemoteException

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import TypeVar

    ItemT = TypeVar("ItemT")
    ResultT = TypeVar("ResultT")


def run_chunk(fn: Callable[[ItemT], ResultT], items: Sequence[ItemT]) -> list[ResultT]:
    """Return ``[fn(item) for item in items]``; the first exception propagates."""
    return [fn(item) for item in items]


def run_timed_chunk(
    fn: Callable[[ItemT], ResultT], items: Sequence[ItemT]
) -> tuple[list[ResultT], float]:
    """Return ``run_chunk(fn, items)`` and the seconds it took, in the worker."""
    start = time.perf_counter()
    results = [fn(item) for item in items]
    return results, time.perf_counter() - start


def run_chunk_catching(
    fn: Callable[[ItemT], ResultT], items: Sequence[ItemT]
) -> tuple[list[ResultT | None], dict[int, tuple[bytes | None, str, str, str]], float]:
    """Call ``fn`` on every item, whatever some raise.

    Returns the results in item order (``None`` where an item raised), the
    failures as ``{index: RemoteException wire fields}``, and the seconds
    the calls took, in the worker.
    """
    start = time.perf_counter()
    results: list[ResultT | None] = []
    failures: dict[int, tuple[bytes | None, str, str, str]] = {}
    append = results.append
    for index, item in enumerate(items):
        try:
            append(fn(item))
        except Exception as exc:
            append(None)
            failures[index] = RemoteException.of(exc).wire()
    return results, failures, time.perf_counter() - start

"""The worker side of a chunked ``map``: one task that runs ``fn`` over a batch.

:meth:`triopool.Pool.map` and :meth:`triopool.Pool.imap` with ``chunksize > 1``
send a chunk of items as a single task, ``run_chunk(fn, items)``, so a chunk
costs one round trip instead of one per item.

With ``chunksize="auto"`` the task is ``run_timed_chunk(fn, items)``, which
also returns how long the calls took in the worker: the parent sizes the
next chunks from it (see ``_chunksize``).

Invariants: the results come back in the order of the items, one per item;
the first item that raises ends the chunk, and its exception leaves as itself
(the worker loop sends it, with its traceback, exactly as for ``run_sync``).

This module imports only the standard library: the worker imports it.
"""

from __future__ import annotations

import time

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

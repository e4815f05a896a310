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

With ``return_exceptions=True`` or ``retries``, where a worker's death
mid-chunk does not end the call, the task is ``run_chunk_reporting(fn,
items, catching)``: the items' outcomes go to the pool as PART
frames as they are done, so that when the worker dies the pool knows which
items finished (it keeps their results), which one was running (it gets the
error, or runs again) and which never started (they run elsewhere).
Outcomes are sent at least every :data:`REPORT_EVERY` seconds of work (an
item that takes longer is sent as soon as it is done, an exception at
once), quick items several to a frame: a death can cost the items finished
within that last moment, which run again, but never a write per quick item
here nor a frame per item in the pool.

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

from ._messages import RemoteException, error_part_frame, values_part_frame

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import TypeVar

    from ._messages import Pieces

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


#: A reporting chunk sends its items' values at least this often, in seconds
#: of work: at most this much finished work runs again after a death, and
#: quick items share a frame.
REPORT_EVERY = 0.001

#: How a running task sends a frame to the pool: set by the worker loop
#: (``_child``) before it runs tasks, through :func:`set_part_sender`;
#: ``None`` outside a worker.
send_part: Callable[[Pieces], None] | None = None


def set_part_sender(
    send: Callable[[Pieces], None] | None,
) -> Callable[[Pieces], None] | None:
    """Make ``send`` the way reporting chunks send their PART frames (the
    worker loop does, once; a test may, around a call); return the one
    before it, to put back."""
    global send_part
    previous, send_part = send_part, send
    return previous


def run_chunk_reporting(
    fn: Callable[[ItemT], object],
    items: Sequence[ItemT],
    catching: bool,
    report_every: float = REPORT_EVERY,
) -> float:
    """Call ``fn`` on the items in order, and send their outcomes to the
    pool as PART frames, in order, as they are done (see the module
    docstring for how often; ``report_every=0``: each item as soon as it is
    done); return the seconds the calls took, in the worker.

    An item that raises an ``Exception`` sends it as its part at once;
    then, unless ``catching``, the chunk ends there (its remaining items
    never run: the pool fails the call, or runs them again). A
    ``BaseException`` that is not an ``Exception`` ends the chunk and the
    worker, with no part for it (the values before it are sent first).
    """
    send = send_part
    if send is None:
        raise RuntimeError("run_chunk_reporting runs only in a triopool worker")
    clock = time.perf_counter
    start = sent_at = clock()
    done: list[object] = []  # values not sent yet
    try:
        for item in items:
            try:
                done.append(fn(item))
            except Exception as exc:
                if done:
                    send(values_part_frame(done))
                    done = []
                send(error_part_frame(exc))
                sent_at = clock()
                if not catching:
                    break
                continue
            now = clock()
            if now - sent_at >= report_every:
                send(values_part_frame(done))
                done = []
                sent_at = now
    finally:
        if done:
            send(values_part_frame(done))
    return clock() - start

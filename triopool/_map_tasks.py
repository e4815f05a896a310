"""A map's chunk as the pool's work: what a map needs of a pool, which task
a chunk runs as, and what that task's outcome means.

The call (:mod:`._map_call`) decides when a chunk starts and where its
results go; this module knows, for one chunk, the function that runs in the
worker (one item, a plain chunk, a timed chunk for ``chunksize="auto"``, or
a chunk that catches each item's exception for ``return_exceptions=True``),
how to turn that function's return value into the chunk's results, and how
``return_exceptions=True`` runs a chunk that failed as a whole again, one
task per item, so that only the item at fault gets the error.

Invariants:

- Errors in :data:`CALL_ERRORS` say that the pool cannot run anything more:
  they end the call even with ``return_exceptions=True``, and are never
  given to an item as its result.
- The functions here take the pool, the function and the items as
  arguments and touch no state of the call, except that they tell the
  chunk planner (when there is one) how long a chunk ran or that it failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
import trio

from ._chunk import run_chunk, run_chunk_catching, run_timed_chunk
from ._errors import BrokenPoolError
from ._messages import RemoteException

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import TypeVarTuple, Unpack

    from ._chunksize import ChunkPlanner
    from ._config import PoolDefault, RetryOn

    Ts = TypeVarTuple("Ts")

ItemT = TypeVar("ItemT")
T = TypeVar("T")


class Counts(Protocol):
    """What a map needs of a pool's statistics: how many workers it has."""

    @property
    def workers(self) -> int: ...


class Runner(Protocol):
    """What a map needs of a pool: it runs one call, and says how many
    workers it has (which sizes the chunks and the items in flight). A local
    :class:`~triopool.Pool` and a cluster backend's pool both are one; the
    map's modules import neither."""

    def run_sync(
        self,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        retries: int | PoolDefault = ...,
        retry_on: RetryOn | PoolDefault = ...,
    ) -> Awaitable[T]: ...

    def statistics(self) -> Counts: ...


class Streamer(Protocol):
    """What streaming dispatch needs of a pool (a local Pool has it): submit
    a task without a task of ours waiting for it; ``on_end`` gets a function
    that returns its result or raises its error, or ``None`` if it was
    cancelled before it ran; the returned ``cancel()`` says whether the task
    is over (``True``) or ``on_end`` is still to come. ``parts``: the task
    reports each item of a chunk, into this list (see ``_chunk_parts``)."""

    def __call__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        on_end: Callable[[Callable[[], Any] | None], None],
        *,
        retries: int | PoolDefault = ...,
        retry_on: RetryOn | PoolDefault = ...,
        parts: list[Any] | None = ...,
    ) -> Callable[[], bool]: ...


#: Errors that end a call even with ``return_exceptions=True``: they say
#: that the pool cannot run anything more, not that an item failed.
CALL_ERRORS = (BrokenPoolError, trio.ClosedResourceError)

# What a streamed chunk's task returns (see Streamed.kind).
SINGLE = 0  # fn(item)
PLAIN = 1  # run_chunk
TIMED = 2  # run_timed_chunk
CATCHING = 3  # run_chunk_catching


@attrs.define(eq=False)
class Streamed:
    """A chunk submitted without a task: its items, and how to give it up."""

    start: int
    items: list[Any]
    kind: int
    cancel: Callable[[], bool] | None = None
    ended: bool = False
    # A chunk that reports each item (see _chunk_parts): its PART frames,
    # how many runs its first item failed already, and whether it reports
    # each item at once (to tell which one fails); ``suspected``: runs that
    # failed before it that no item could be blamed for (the item it blames
    # is charged with them).
    parts: list[Any] | None = None
    runs: int = 0
    strict: bool = False
    suspected: int = 0


def streamed_task(
    fn: Callable[..., Any],
    items: list[Any],
    *,
    return_exceptions: bool,
    timed: bool,
) -> tuple[Callable[..., Any], tuple[Any, ...], int]:
    """The task a streamed chunk runs as: its function, its arguments and
    its kind (which :func:`streamed_values` reads its result by)."""
    if return_exceptions:
        return run_chunk_catching, (fn, items), CATCHING
    if timed:
        return run_timed_chunk, (fn, items), TIMED
    if len(items) == 1:
        return fn, (items[0],), SINGLE
    return run_chunk, (fn, items), PLAIN


def streamed_values(
    kind: int, result: Any, count: int, planner: ChunkPlanner | None
) -> list[Any]:
    """The results of a streamed chunk of ``count`` items whose task of
    ``kind`` returned ``result``; tells ``planner`` how long it ran."""
    if kind == SINGLE:
        return [result]
    if kind == PLAIN:
        values: list[Any] = result
        return values
    if kind == TIMED:
        values, seconds = result
        assert planner is not None
        planner.observe_run(count, seconds)
        return values
    values, failures, seconds = result
    if planner is not None:
        planner.observe_run(count, seconds)
    return rebuild_failures(values, failures)


def rebuild_failures(values: list[Any], failures: dict[int, Any]) -> list[Any]:
    """Put each item's exception, as sent by ``run_chunk_catching``, in its
    place among the chunk's results."""
    for index, wire in failures.items():
        values[index] = RemoteException.from_wire(wire).rebuild()
    return values


async def outcomes(
    pool: Runner,
    fn: Callable[[ItemT], Any],
    items: list[ItemT],
    planner: ChunkPlanner | None,
) -> list[Any]:
    """``return_exceptions=True``: each item's result or exception.

    A chunk runs as one task that catches each item's exception in the
    worker. If the chunk fails as a whole (its worker died, it hit the
    time limit, something of it could not be pickled), its items run
    again one task each, so that only the item at fault gets the error;
    the items of that chunk that had finished run twice.
    """
    if len(items) > 1 or planner is not None:
        try:
            values, failures, seconds = await pool.run_sync(
                run_chunk_catching, fn, items
            )
        except CALL_ERRORS:
            raise
        except Exception as exc:
            if planner is not None:
                planner.observe_failure()
            if len(items) == 1:
                return [exc]
            return await outcomes_one_by_one(pool, fn, items)
        if planner is not None:
            planner.observe_run(len(items), seconds)
        return rebuild_failures(values, failures)
    try:
        return [await pool.run_sync(fn, items[0])]
    except CALL_ERRORS:
        raise
    except Exception as exc:
        return [exc]


async def outcomes_one_by_one(
    pool: Runner, fn: Callable[[ItemT], Any], items: list[ItemT]
) -> list[Any]:
    """Each item's result or exception, a task each; raises the first of
    :data:`CALL_ERRORS`, after cancelling the other items."""
    values: list[Any] = [None] * len(items)
    call_error: list[Exception] = []

    async def run_one(index: int) -> None:
        try:
            values[index] = await pool.run_sync(fn, items[index])
        except CALL_ERRORS as exc:
            call_error.append(exc)
            nursery.cancel_scope.cancel()
        except Exception as exc:
            values[index] = exc

    async with trio.open_nursery() as nursery:
        for index in range(len(items)):
            nursery.start_soon(run_one, index)
    if call_error:
        raise call_error[0]
    return values


async def chunk_values(
    pool: Runner,
    fn: Callable[[ItemT], Any],
    items: list[ItemT],
    *,
    return_exceptions: bool,
    planner: ChunkPlanner | None,
    retries: int | PoolDefault,
    retry_on: RetryOn | PoolDefault,
) -> list[Any]:
    """A chunk's results as one task awaiting ``pool.run_sync`` (a pool
    without streaming, such as a cluster's): its values in item order, or
    with ``return_exceptions`` the outcomes of :func:`outcomes`; the first
    exception otherwise."""
    if return_exceptions:
        return await outcomes(pool, fn, items, planner)
    if planner is not None:
        values, seconds = await pool.run_sync(
            run_timed_chunk, fn, items, retries=retries, retry_on=retry_on
        )
        planner.observe_run(len(items), seconds)
        return values
    if len(items) == 1:
        return [await pool.run_sync(fn, items[0], retries=retries, retry_on=retry_on)]
    return await pool.run_sync(run_chunk, fn, items, retries=retries, retry_on=retry_on)

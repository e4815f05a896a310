"""Many tasks from one iterable: the entry points of ``Pool.map`` and ``Pool.imap``.

:func:`imap` and :func:`map_list` check their arguments at once (each bad
one gets an error naming it), then size the call from the pool's workers
(a fixed ``chunksize``, or a :class:`ChunkPlanner` for ``"auto"``) and run a
:class:`~._map_call.MapCall` for the block: :mod:`._map_call` is the call
itself (producer, chunks, consumer, and its invariants), :mod:`._map_tasks`
what a chunk runs as on the pool. All three need only the small protocols of
:mod:`._map_tasks` (:class:`Runner`, :class:`Streamer`) and import no pool.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncIterable, Iterable
from typing import TYPE_CHECKING, Literal, TypeVar

import trio

from . import _serialize
from ._chunksize import (
    MAX_AUTO_CHUNK,
    ChunkPlanner,
    default_fixed_max_in_flight,
    default_max_in_flight,
)
from ._config import POOL_DEFAULT, PoolDefault, check_retries, retry_classes
from ._errors import SerializationError
from ._map_call import MapCall
from ._progress import check_progress, reporter_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractAsyncContextManager
    from typing import TypeAlias

    from ._config import RetryOn
    from ._map_tasks import Runner
    from ._map_tasks import Streamer as Streamer  # Pool._submit_nowait's type
    from ._progress import MapProgress

    #: What ``progress`` may be: None/False (none), True (a line on stderr
    #: when it is a terminal), or a callable that takes snapshots.
    ProgressArg: TypeAlias = bool | Callable[[MapProgress], object] | None

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

#: What ``chunksize`` may be: a number of items, or "auto".
Chunksize = int | Literal["auto"]


def check_arguments(
    fn: object,
    iterable: object,
    *,
    ordered: object = True,
    chunksize: object,
    max_in_flight: object = None,
    retries: object = POOL_DEFAULT,
    retry_on: object = POOL_DEFAULT,
    return_exceptions: object = False,
    progress: object = None,
    where: str,
) -> None:
    """Raise TypeError/ValueError naming the first bad argument of ``where``."""
    if not callable(fn):
        raise TypeError(f"{where}() needs a callable, got {fn!r}")
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"{where}() needs a regular function, got the async function {fn!r}"
        )
    if not isinstance(iterable, Iterable | AsyncIterable):
        raise TypeError(
            f"iterable must be an iterable or an async iterable, got {iterable!r}"
        )
    if not isinstance(ordered, bool):
        raise TypeError(f"ordered must be a bool, got {ordered!r}")
    if not isinstance(return_exceptions, bool):
        raise TypeError(f"return_exceptions must be a bool, got {return_exceptions!r}")
    check_progress(progress)
    if chunksize != "auto":
        if isinstance(chunksize, str):
            raise ValueError(
                f"chunksize must be 'auto' or an int >= 1, got {chunksize!r}"
            )
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"chunksize must be 'auto' or an int, got {chunksize!r}")
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize!r}")
    if max_in_flight is not None:
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise TypeError(f"max_in_flight must be an int, got {max_in_flight!r}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight!r}")
    if retries is not POOL_DEFAULT:
        check_retries("retries", retries)
    if retry_on is not POOL_DEFAULT:
        retry_classes(retry_on)


def _check_picklable(fn: object) -> None:
    # Every task of the call carries fn: fail once, at the start, with a
    # message naming fn rather than the chunk runner. The same fallback as
    # run_sync's: what cloudpickle can send (lambdas, closures) passes.
    try:
        _serialize.dumps_with_fallback(fn)
    except Exception as exc:
        raise SerializationError(
            f"could not pickle the function {fn!r}: {type(exc).__name__}: {exc}"
            f"{_serialize.cloudpickle_hint(exc)}"
        ) from exc


@contextlib.asynccontextmanager
async def _running(
    call: MapCall[ItemT, ResultT], source: Iterable[ItemT] | AsyncIterable[ItemT]
) -> AsyncIterator[None]:
    """Run the producer of ``call`` for the block; cancel it when the block ends."""
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.produce, source)
            try:
                yield
            except BaseException as exc:
                # Raised as itself below, after the work is cancelled and
                # finished, rather than wrapped in the nursery's group.
                body_error = exc
            finally:
                nursery.cancel_scope.cancel()
    finally:
        call.close()
        call.report_end()
    if body_error is not None:
        raise body_error


def _new_call(
    pool: Runner,
    fn: Callable[[ItemT], ResultT],
    *,
    ordered: bool,
    chunksize: Chunksize,
    max_in_flight: int | None,
    retries: int | PoolDefault,
    retry_on: RetryOn | PoolDefault,
    return_exceptions: bool,
    progress: ProgressArg,
) -> MapCall[ItemT, ResultT]:
    if retry_on is not POOL_DEFAULT:
        retry_on = retry_classes(retry_on)  # once, not per chunk
    # At least one, so the defaults leave room for a chunk even if an engine
    # reported no worker slots when the pool opened.
    workers = max(1, pool.statistics().workers)
    # A local pool streams chunks (see Pool._submit_nowait); others, such as
    # a cluster backend's, get a task per chunk.
    submit: Streamer | None = getattr(pool, "_submit_nowait", None)
    item_retries = None
    if submit is not None:
        item_retries = _item_retries(pool, retries, retry_on, return_exceptions)
    if chunksize != "auto":
        if max_in_flight is None:
            max_in_flight = default_fixed_max_in_flight(workers, chunksize)
        return MapCall(
            pool,
            fn,
            ordered,
            chunksize,
            max_in_flight,
            retries=retries,
            retry_on=retry_on,
            return_exceptions=return_exceptions,
            reporter=reporter_for(progress),
            submit=submit,
            item_retries=item_retries,
        )
    resize = None
    if max_in_flight is None:
        max_in_flight = default_max_in_flight(workers)
        if submit is None:
            # A cluster's capacity follows its engine (see _cluster): so do
            # the default window and the chunks at once.
            resize = functools.partial(_follow_workers, pool)
    # Room for two of the largest chunks per worker within max_in_flight, so
    # that waiting for room for a whole chunk never starves a worker.
    largest = max(1, min(MAX_AUTO_CHUNK, max_in_flight // (2 * workers)))
    planner = ChunkPlanner(workers=workers, max_size=largest)
    return MapCall(
        pool,
        fn,
        ordered,
        planner.max_size,
        max_in_flight,
        planner=planner,
        max_chunks=2 * workers,
        resize=resize,
        retries=retries,
        retry_on=retry_on,
        return_exceptions=return_exceptions,
        reporter=reporter_for(progress),
        submit=submit,
        item_retries=item_retries,
    )


def _item_retries(
    pool: Runner,
    retries: int | PoolDefault,
    retry_on: RetryOn | PoolDefault,
    return_exceptions: bool,
) -> tuple[int, tuple[type[BaseException], ...]] | None:
    """The retries and retry classes of each item, when a worker's death in
    the middle of a chunk does not end the call (``return_exceptions=True``,
    or retries): its chunks then report each item (see ``_chunk_parts``).
    ``None``: the first failure ends the call, and chunks answer once."""
    defaults: tuple[int, tuple[type[BaseException], ...]] = getattr(
        pool, "_retry_defaults", (0, ())
    )
    count = defaults[0] if retries is POOL_DEFAULT else retries
    if not count and not return_exceptions:
        return None
    classes = defaults[1] if retry_on is POOL_DEFAULT else retry_on
    assert isinstance(classes, tuple)
    return count, classes


@contextlib.asynccontextmanager
async def _open_imap(
    pool: Runner,
    fn: Callable[[ItemT], ResultT],
    iterable: Iterable[ItemT] | AsyncIterable[ItemT],
    *,
    ordered: bool,
    chunksize: Chunksize,
    max_in_flight: int | None,
    retries: int | PoolDefault,
    retry_on: RetryOn | PoolDefault,
    return_exceptions: bool,
    progress: ProgressArg,
) -> AsyncIterator[AsyncIterator[ResultT]]:
    call = _new_call(
        pool,
        fn,
        ordered=ordered,
        chunksize=chunksize,
        max_in_flight=max_in_flight,
        retries=retries,
        retry_on=retry_on,
        return_exceptions=return_exceptions,
        progress=progress,
    )
    async with _running(call, iterable):
        yield call


def imap(
    pool: Runner,
    fn: Callable[[ItemT], ResultT],
    iterable: Iterable[ItemT] | AsyncIterable[ItemT],
    *,
    ordered: bool,
    chunksize: Chunksize,
    max_in_flight: int | None,
    retries: int | PoolDefault = POOL_DEFAULT,
    retry_on: RetryOn | PoolDefault = POOL_DEFAULT,
    return_exceptions: bool = False,
    progress: ProgressArg = None,
) -> AbstractAsyncContextManager[AsyncIterator[ResultT]]:
    """Check the arguments now; see :meth:`triopool.Pool.imap`."""
    check_arguments(
        fn,
        iterable,
        ordered=ordered,
        chunksize=chunksize,
        max_in_flight=max_in_flight,
        retries=retries,
        retry_on=retry_on,
        return_exceptions=return_exceptions,
        progress=progress,
        where="imap",
    )
    _check_picklable(fn)
    return _open_imap(
        pool,
        fn,
        iterable,
        ordered=ordered,
        chunksize=chunksize,
        max_in_flight=max_in_flight,
        retries=retries,
        retry_on=retry_on,
        return_exceptions=return_exceptions,
        progress=progress,
    )


async def map_list(
    pool: Runner,
    fn: Callable[[ItemT], ResultT],
    iterable: Iterable[ItemT] | AsyncIterable[ItemT],
    *,
    chunksize: Chunksize,
    retries: int | PoolDefault = POOL_DEFAULT,
    retry_on: RetryOn | PoolDefault = POOL_DEFAULT,
    return_exceptions: bool = False,
    progress: ProgressArg = None,
) -> list[ResultT]:
    """See :meth:`triopool.Pool.map`."""
    check_arguments(
        fn,
        iterable,
        chunksize=chunksize,
        retries=retries,
        retry_on=retry_on,
        return_exceptions=return_exceptions,
        progress=progress,
        where="map",
    )
    _check_picklable(fn)
    # Taken in completion order and put in place here: a slow item does not
    # hold back the pulling of the items after it.
    call = _new_call(
        pool,
        fn,
        ordered=False,
        chunksize=chunksize,
        max_in_flight=None,
        retries=retries,
        retry_on=retry_on,
        return_exceptions=return_exceptions,
        progress=progress,
    )
    by_start: dict[int, list[ResultT]] = {}
    async with _running(call, iterable):
        while True:
            try:
                ready = await call.ready_values()
            except StopAsyncIteration:
                break
            by_start.update(ready)
    results: list[ResultT] = []
    while by_start:
        results += by_start.pop(len(results))
    return results


def _follow_workers(pool: Runner, planner: ChunkPlanner) -> tuple[int, int] | None:
    """With ``chunksize="auto"`` and the default window: the new window and
    chunks at once, ``(max_in_flight, max_chunks)``, if the pool's worker
    count changed since ``planner`` last heard of it; else None."""
    workers = max(1, pool.statistics().workers)
    if workers == planner.workers:
        return None
    planner.workers = workers
    return default_max_in_flight(workers), 2 * workers

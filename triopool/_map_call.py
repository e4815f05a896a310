"""One ``map``/``imap`` call: its producer, its chunks and its consumer.

One call is a :class:`MapCall`. Inside the ``async with`` that runs it, a
*producer* task pulls items from the input (a sync or an async iterable),
groups them into chunks and hands each chunk to the pool
(:mod:`._map_tasks` knows what a chunk runs as and what its outcome
means). A local pool *streams*: the chunk becomes a job of the pool's
queue at once (``Pool._submit_nowait``), with no task of ours waiting for
it; the pool writes jobs ahead into busy workers' pipes as it does for
``run_sync``, and
the job's end calls :meth:`MapCall._streamed_ended`, which stores the
results. Other runners (a cluster backend's pool) get one task per chunk in
the producer's *work* nursery, which awaits ``run_sync``. With ``chunksize="auto"`` a :class:`ChunkPlanner` sizes
each chunk from the worker times of the chunks before it and from how fast
the input comes. The consumer takes results one at a time, in input order
or in completion order. No async generator is involved: the consumer's
``async for`` runs in the caller's task, outside any nursery of ours.

Invariants:

- Back-pressure: ``pulled - received <= max_in_flight`` at all times, where
  ``pulled`` counts items taken from the input and ``received`` counts results
  the consumer has taken. A chunk is started only when there is room for a
  whole chunk, so chunks stay full while the consumer keeps up.
- With ``chunksize="auto"``, also at most ``2 * workers`` chunks run at once:
  enough for each worker to find the next chunk waiting, few enough that a
  chunk is planned with fresh observations.
- The first error (from a task, or from the input itself) is kept and the
  work nursery is cancelled (queued tasks never run; running ones follow the
  pool's ``kill_on_cancel``). Once that nursery has ended, the consumer's next
  take raises the error, as itself: when the caller sees it, no task of the
  call runs any more. Later errors, results not yet taken and errors the
  consumer never asked for are dropped.
- Streamed chunks are given up the way a cancelled ``run_sync`` gives its
  task up (queued: never runs; running: killed, or waited for with
  ``kill_on_cancel=False``; written ahead: dropped by the worker, or run):
  the producer ends only once every streamed chunk has ended or was given
  up, so the rules below hold for them as for chunk tasks.
- With ``return_exceptions=True`` or retries, streamed chunks of several
  items report each item (see ``_chunk_parts``). One whose run failed is
  split: its items done are handed on, and its items from the one at fault
  (or the one after it) on are streamed again as a chunk of their own,
  which its count in ``_chunks_running`` stands for. Nothing is streamed
  again once the call is ending.
- Leaving the ``async with`` cancels whatever still runs and waits for it:
  no task of the call outlives the block. After it, a take raises
  :class:`trio.ClosedResourceError`.

Why not :func:`trio.as_safe_channel`: it is the same structure (a background
task owned by an ``async with``), but a failure in the generator reaches the
consumer as ``Cancelled`` in the ``async for`` and leaves through the
``async with``, while the API promises the error out of the ``async for``
itself; and handing each result through a channel costs a task switch per
item, which would cap chunked throughput.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs
import trio

from . import _chunk_parts, _map_input
from ._chunk import REPORT_EVERY, run_chunk_reporting
from ._config import POOL_DEFAULT, PoolDefault
from ._map_tasks import (
    CALL_ERRORS,
    CATCHING,
    Streamed,
    chunk_values,
    outcomes_one_by_one,
    streamed_task,
    streamed_values,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from typing import Self

    from ._chunksize import ChunkPlanner
    from ._config import RetryOn
    from ._map_tasks import Runner, Streamer
    from ._progress import Reporter

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

_NEVER = math.inf
# The producer submits chunks without a schedule point while there is room,
# for at most this long (seconds): a queue filled in one go keeps workers
# fed ahead, while a slow input still lets other tasks run.
_FEED_SLICE = 0.001
# Once the window is full, the producer waits for room for at least this
# share of it before it pulls again, rather than one chunk per result.
_REFILL_SHARE = 4


@attrs.define(eq=False)
class _Chunk(Generic[ResultT]):
    """The results of one chunk, and how many of them the consumer took."""

    start: int  # input index of the first item
    values: list[ResultT]
    taken: int = 0


@attrs.define(eq=False)
class MapCall(Generic[ItemT, ResultT]):
    """The state of one ``map``/``imap`` call, shared by its tasks.

    It is also the async iterator over the results that ``imap`` hands out.
    """

    _pool: Runner
    _fn: Callable[[ItemT], ResultT]
    _ordered: bool
    _chunksize: int  # with a planner: the largest chunk it may plan
    _max_in_flight: int
    # chunksize="auto": plans each chunk; None: every chunk has _chunksize.
    _planner: ChunkPlanner | None = attrs.field(default=None, alias="planner")
    # Chunks running at once.
    _max_chunks: int | float = attrs.field(default=math.inf, alias="max_chunks")
    # Asked before each planned chunk: a new (max_in_flight, max_chunks) if
    # the pool's workers changed (see _map._follow_workers).
    _resize: Callable[[ChunkPlanner], tuple[int, int] | None] | None = attrs.field(
        default=None, alias="resize"
    )
    # Each chunk's run_sync options: retries apply to a chunk as a whole.
    _retries: int | PoolDefault = attrs.field(default=POOL_DEFAULT, alias="retries")
    _retry_on: RetryOn | PoolDefault = attrs.field(
        default=POOL_DEFAULT, alias="retry_on"
    )
    # Failing items yield their exception in their place.
    _return_exceptions: bool = attrs.field(default=False, alias="return_exceptions")
    # progress=: counts outcomes, hands out snapshots.
    _reporter: Reporter | None = attrs.field(default=None, alias="reporter")
    # The pool's streaming seam, if it has one: chunks are then submitted
    # from the producer, without a task each (see _stream_chunk).
    _submit: Streamer | None = attrs.field(default=None, alias="submit")
    _streamed: set[Streamed] = attrs.field(factory=set)
    # Streamed chunks report each item, and their items run again on their
    # own (see _chunk_parts): these retries and retry classes per item.
    # None: the first failure ends the call, and a chunk answers once.
    _item_retries: tuple[int, tuple[type[BaseException], ...]] | None = attrs.field(
        default=None, alias="item_retries"
    )
    _stream_changed: trio.lowlevel.ParkingLot = attrs.field(
        factory=trio.lowlevel.ParkingLot
    )
    _work: trio.Nursery | None = None
    _total: int | None = None  # the input's length, when it has one
    _pulled: int = 0
    _received: int = 0
    _chunks_running: int = 0
    _exhausted: bool = False
    _error: BaseException | None = None
    _finished: bool = False  # the consumer got StopAsyncIteration or the error
    _closed: bool = False  # the async with has exited
    # Finished chunks not yet fully taken: by start index (ordered) or in
    # completion order (unordered); the one being taken is _head.
    _by_start: dict[int, _Chunk[ResultT]] = attrs.field(factory=dict)
    _done: deque[_Chunk[ResultT]] = attrs.field(factory=deque)
    _head: _Chunk[ResultT] | None = None
    _next_start: int = 0
    _results_changed: trio.lowlevel.ParkingLot = attrs.field(
        factory=trio.lowlevel.ParkingLot
    )
    _room_made: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    # While the producer waits for room: the count of received results that
    # makes room for its next chunk (an int compare per result, not a call).
    _resume_at: int | float = math.inf
    _work_scope: trio.CancelScope | None = None
    _work_done: bool = False  # the producer and every chunk task have ended

    # Consumer side

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ResultT:
        """The next result; StopAsyncIteration at the end, or the first error."""
        await trio.lowlevel.checkpoint_if_cancelled()
        chunk = self._head
        if chunk is None or self._error is not None:
            chunk = await self._next_chunk()
        # A schedule point happened when this chunk was opened; taking the rest
        # of it needs only the cancellation check above, which keeps a chunk's
        # worth of results cheap to iterate.
        index = chunk.taken
        chunk.taken = index + 1
        if index + 1 == len(chunk.values):
            self._head = None
        self._received += 1
        if self._received >= self._resume_at:
            self._room_made.unpark_all()
        return chunk.values[index]

    async def next_values(self) -> tuple[int, list[ResultT]]:
        """The next results that finished together, with the first's input index.

        Raises StopAsyncIteration at the end, or the call's first error.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        chunk = self._head
        if chunk is None or self._error is not None:
            chunk = await self._next_chunk()
        self._head = None
        first = chunk.taken
        self._count_received(len(chunk.values) - first)
        return chunk.start + first, chunk.values[first:] if first else chunk.values

    async def ready_values(self) -> list[tuple[int, list[ResultT]]]:
        """Every chunk of results finished by now, after one schedule point,
        waiting for the first if none is: :meth:`next_values`, for a
        consumer that takes them all at once (``map``), without a schedule
        point per chunk.

        Raises StopAsyncIteration at the end, or the call's first error.
        """
        ready = [await self.next_values()]
        while self._error is None:
            chunk = self._ready_chunk()
            if chunk is None:
                break
            self._next_start = chunk.start + len(chunk.values)
            self._count_received(len(chunk.values))
            ready.append((chunk.start, chunk.values))
        return ready

    def _ready_chunk(self) -> _Chunk[ResultT] | None:
        """The next finished chunk to take from, taken out, if there is one."""
        if self._ordered:
            return self._by_start.pop(self._next_start, None)
        if self._done:
            return self._done.popleft()
        return None

    async def _next_chunk(self) -> _Chunk[ResultT]:
        """Wait for the next chunk to take from, make it the head, return it."""
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the imap() block has exited")
            if self._finished:
                raise StopAsyncIteration
            if self._error is not None and self._work_done:
                # Raised only once the rest of the call is cancelled and gone,
                # so the caller sees no task of the call still running.
                error, self._error = self._error, None
                self._finished = True
                raise error
            if self._error is not None:
                await self._results_changed.park()
                continue
            chunk = self._head
            if chunk is None:
                chunk = self._ready_chunk()
            if chunk is not None:
                self._head = chunk
                self._next_start = chunk.start + len(chunk.values)
                await trio.lowlevel.cancel_shielded_checkpoint()
                return chunk
            if self._exhausted and not self._chunks_running:
                self._finished = True
                raise StopAsyncIteration
            await self._results_changed.park()

    def _count_received(self, count: int) -> None:
        self._received += count
        if self._received >= self._resume_at:
            self._room_made.unpark_all()

    # Producer side

    async def produce(self, source: Iterable[ItemT] | AsyncIterable[ItemT]) -> None:
        """Feed the input to the pool, chunk by chunk, until it ends or fails."""
        try:
            async with trio.open_nursery() as work:
                self._work_scope = work.cancel_scope
                self._work = work
                try:
                    try:
                        await self._feed(work, source)
                    except Exception as exc:
                        # The input itself failed: that is the call's error too.
                        self._fail(exc)
                    while self._streamed:
                        await self._stream_changed.park()
                finally:
                    await self._settle_streamed()
        finally:
            self._work_done = True
            self._results_changed.unpark_all()

    async def _feed(
        self, work: trio.Nursery, source: Iterable[ItemT] | AsyncIterable[ItemT]
    ) -> None:
        size = min(self._chunksize, self._max_in_flight)
        if self._planner is not None or self._reporter is not None:
            # A known length lets the last chunks shrink (see _chunksize), and
            # progress show a total.
            self._total = _map_input.known_length(source)
            if self._reporter is not None:
                self._reporter.total = self._total
        if isinstance(source, AsyncIterable):
            async_items = aiter(source)
            try:
                await self._feed_chunks(work, size, None, async_items)
            finally:
                await _map_input.close(async_items)
        else:
            await self._feed_chunks(work, size, iter(source), None)

    async def _feed_chunks(
        self,
        work: trio.Nursery,
        size: int,
        sync_items: Iterator[ItemT] | None,
        async_items: AsyncIterator[ItemT] | None,
    ) -> None:
        start = 0
        planner = self._planner
        # Refill a full window by at least this many items at a time.
        refill = max(size, self._max_in_flight // _REFILL_SHARE)
        slice_ends = time.perf_counter() + _FEED_SLICE
        while True:
            if planner is not None:
                size = await self._room_for_a_planned_chunk(planner)
                pull_started = time.perf_counter()
            else:
                if self._pulled - self._received + size > self._max_in_flight:
                    self._resume_at = self._pulled + refill - self._max_in_flight
                    while self._pulled - self._received + size > self._max_in_flight:
                        await self._room_made.park()
                    slice_ends = time.perf_counter() + _FEED_SLICE
                self._resume_at = _NEVER
            if sync_items is not None:
                items = list(itertools.islice(sync_items, size))
                self._pulled += len(items)
            else:
                assert async_items is not None
                items = await _map_input.take(async_items, size)
                self._pulled += len(items)
            if planner is not None:
                planner.observe_input(len(items), time.perf_counter() - pull_started)
            if items:
                self._chunks_running += 1
                if self._submit is not None:
                    self._stream_chunk(self._submit, start, items)
                else:
                    work.start_soon(self._run_chunk, start, items)
                start += len(items)
            if len(items) < size:
                break
            if time.perf_counter() >= slice_ends:
                await trio.lowlevel.checkpoint()
                slice_ends = time.perf_counter() + _FEED_SLICE
        self._exhausted = True
        self._results_changed.unpark_all()

    async def _room_for_a_planned_chunk(self, planner: ChunkPlanner) -> int:
        """Wait until the next chunk may start; return its size, planned then."""
        while True:
            if self._resize is not None and (window := self._resize(planner)):
                self._max_in_flight, self._max_chunks = window
            if self._chunks_running < self._max_chunks:
                remaining = None
                if self._total is not None:
                    remaining = max(self._total - self._pulled, 1)
                size = planner.next_size(remaining)
                if self._pulled - self._received + size <= self._max_in_flight:
                    self._resume_at = _NEVER
                    return size
                self._resume_at = self._pulled + size - self._max_in_flight
            else:
                # Woken when a chunk ends (see _chunk_ended).
                self._resume_at = _NEVER
            await self._room_made.park()

    async def _run_chunk(self, start: int, items: list[ItemT]) -> None:
        await self._deliver(
            start,
            chunk_values(
                self._pool,
                self._fn,
                items,
                return_exceptions=self._return_exceptions,
                planner=self._planner,
                retries=self._retries,
                retry_on=self._retry_on,
            ),
        )

    async def _deliver(self, start: int, values: Awaitable[list[Any]]) -> None:
        """A chunk run as a task of ours: await its ``values``, then hand them
        to the consumer (or fail the call); either way the chunk has ended."""
        try:
            got = await values
        except Exception as exc:
            self._chunk_ended()
            self._chunk_failed(exc)
            return
        except BaseException:
            self._chunk_ended()
            raise
        self._chunk_ended()
        self._chunk_done(start, got)

    def _chunk_done(self, start: int, values: list[Any]) -> None:
        """A chunk's results are in: count them, and hand them to the consumer."""
        if self._reporter is not None:
            failed = 0
            if self._return_exceptions:
                failed = sum(isinstance(value, Exception) for value in values)
            try:
                self._reporter.add(len(values), failed)
            except Exception as exc:
                self._fail(exc)
                return
        chunk = _Chunk(start, values)
        if self._ordered:
            self._by_start[start] = chunk
        else:
            self._done.append(chunk)
        self._results_changed.unpark_all()

    # Streaming dispatch: a chunk is a job whose end calls back, not a task.

    def _stream_chunk(
        self,
        submit: Streamer,
        start: int,
        items: list[ItemT],
        runs: int = 0,
        *,
        strict: bool = False,
        suspected: int = 0,
    ) -> None:
        """Submit a chunk; :meth:`_streamed_ended` takes its outcome.
        ``runs``: the failed runs of its first item so far (the rest of a
        reporting chunk, run again); ``strict``: it reports each item at
        once, to tell which one fails; ``suspected``: see ``Streamed``."""
        retries = self._retries
        if self._item_retries is not None and (len(items) > 1 or runs):
            # Each item is reported, and retried here, not by the pool.
            task: Callable[..., Any] = run_chunk_reporting
            every = 0.0 if strict else REPORT_EVERY
            args: tuple[Any, ...] = (self._fn, items, self._return_exceptions, every)
            kind = _chunk_parts.REPORTING
            entry = Streamed(
                start,
                items,
                kind,
                parts=[],
                runs=runs,
                strict=strict,
                suspected=suspected,
            )
            retries = 0
        else:
            task, args, kind = streamed_task(
                self._fn,
                items,
                return_exceptions=self._return_exceptions,
                timed=self._planner is not None,
            )
            entry = Streamed(start, items, kind)
        self._streamed.add(entry)
        # Only a reporting chunk takes parts: a pool that cannot hear them
        # (see Streamer) is never asked to.
        parts = {} if entry.parts is None else {"parts": entry.parts}
        try:
            cancel = submit(
                task,
                args,
                functools.partial(self._streamed_ended, entry),
                retries=retries,
                retry_on=self._retry_on,
                **parts,
            )
        except Exception as exc:
            # Not submitted (an item does not pickle, the pool is closing).
            self._streamed.discard(entry)
            if (
                kind == CATCHING
                or (kind == _chunk_parts.REPORTING and self._return_exceptions)
            ) and not isinstance(exc, CALL_ERRORS):
                self._rerun_one_by_one(start, items)
            else:
                self._chunk_ended()
                self._chunk_failed(exc)
            return
        if not entry.ended:
            entry.cancel = cancel

    def _streamed_ended(
        self, entry: Streamed, outcome: Callable[[], Any] | None
    ) -> None:
        """A streamed chunk ended (called by the pool, in its own task: it
        must not raise)."""
        if entry.ended:
            return
        entry.ended = True
        self._streamed.discard(entry)
        self._stream_changed.unpark_all()
        try:
            self._take_streamed(entry, outcome)
        except BaseException as exc:  # pragma: no cover - a bug of ours
            self._fail(exc)

    def _take_streamed(
        self, entry: Streamed, outcome: Callable[[], Any] | None
    ) -> None:
        planner = self._planner
        if outcome is None:  # cancelled before it ran: the call is ending
            self._chunk_ended()
            return
        kind = entry.kind
        if kind == _chunk_parts.REPORTING:
            self._take_reported(entry, outcome)
            return
        items = entry.items
        try:
            result = outcome()
        except Exception as exc:
            if kind == CATCHING and not isinstance(exc, CALL_ERRORS):
                # The chunk failed as a whole: see _map_tasks.outcomes.
                if planner is not None:
                    planner.observe_failure()
                if len(items) > 1:
                    self._rerun_one_by_one(entry.start, items)
                    return
                self._chunk_ended()
                self._chunk_done(entry.start, [exc])
                return
            self._chunk_ended()
            self._chunk_failed(exc)
            return
        values = streamed_values(kind, result, len(items), planner)
        self._chunk_ended()
        self._chunk_done(entry.start, values)

    def _take_reported(self, entry: Streamed, outcome: Callable[[], Any]) -> None:
        """A reporting chunk ended (see ``_chunk_parts``): its items done
        keep their outcomes; the item at fault gets its error or runs again;
        the items after it, which never started, run again."""
        items = entry.items
        planner = self._planner
        assert entry.parts is not None
        try:
            reading = _chunk_parts.read(
                entry.parts, outcome, len(items), catching=self._return_exceptions
            )
        except Exception as exc:
            self._chunk_ended()
            self._chunk_failed(exc)
            return
        entry.parts = None
        error = reading.error
        if error is None:
            if planner is not None and reading.seconds is not None:
                planner.observe_run(len(items), reading.seconds)
            self._chunk_ended()
            self._chunk_done(entry.start, reading.values)
            return
        if planner is not None:
            planner.observe_failure()
        if isinstance(error, CALL_ERRORS):
            self._chunk_ended()
            self._chunk_failed(error)
            return
        if reading.whole:
            # No item can be blamed: as a chunk that failed as a whole.
            if self._return_exceptions and len(items) > 1:
                self._rerun_one_by_one(entry.start, items)
                return
            self._chunk_ended()
            if self._return_exceptions:
                self._chunk_done(entry.start, [error])
            else:
                self._chunk_failed(error)
            return
        assert self._item_retries is not None
        retries, retry_on = self._item_retries
        rest = _chunk_parts.rest_after(
            reading,
            len(items),
            entry,
            retries=retries,
            retry_on=retry_on,
            catching=self._return_exceptions,
        )
        if rest is None:
            self._chunk_ended()
            self._chunk_failed(error)
            return
        self._stream_rest(entry.start, items, rest)

    def _stream_rest(
        self, start: int, items: list[ItemT], rest: _chunk_parts.Rest
    ) -> None:
        """Part of a reporting chunk is done: hand its values to the
        consumer, and submit its items from ``rest.index`` on as a chunk of
        their own, which the chunk's count in ``_chunks_running`` stands
        for."""
        values = rest.values
        remaining = items[rest.index :]
        ending = self._error is not None or (
            self._work_scope is not None and self._work_scope.cancel_called
        )
        if not remaining or ending or self._submit is None:
            self._chunk_ended()
        if values:
            self._chunk_done(start, values)
        if remaining and not ending and self._submit is not None:
            self._stream_chunk(
                self._submit,
                start + rest.index,
                remaining,
                rest.runs,
                strict=rest.strict,
                suspected=rest.suspected,
            )

    def _rerun_one_by_one(self, start: int, items: list[ItemT]) -> None:
        """Run a failed chunk's items again, a task each (``_chunks_running``
        still counts the chunk)."""
        assert self._work is not None
        self._work.start_soon(self._run_one_by_one, start, items)

    async def _run_one_by_one(self, start: int, items: list[ItemT]) -> None:
        await self._deliver(start, outcomes_one_by_one(self._pool, self._fn, items))

    def _chunk_ended(self) -> None:
        """One chunk fewer runs; wake the producer if it waited for that
        (with "auto", at most ``max_chunks`` run at once)."""
        if self._chunks_running >= self._max_chunks:
            self._room_made.unpark_all()
        self._chunks_running -= 1

    def _chunk_failed(self, error: BaseException) -> None:
        self._fail(error)
        if self._reporter is not None:
            self._reporter.failed += 1

    async def _settle_streamed(self) -> None:
        """Give up the streamed chunks still out, as a cancelled ``run_sync``
        would, and wait for those that run on (``kill_on_cancel=False``, or
        written ahead and not yet dropped) to end."""
        for entry in list(self._streamed):
            if entry.cancel is not None and entry.cancel():
                entry.ended = True
                self._streamed.discard(entry)
                self._chunk_ended()
        if self._streamed:
            with trio.CancelScope(shield=True):
                while self._streamed:
                    await self._stream_changed.park()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._finished:
            self._error = error
            assert self._work_scope is not None
            self._work_scope.cancel()
            self._results_changed.unpark_all()

    def report_end(self) -> None:
        """The final progress snapshot, once the call's tasks have ended."""
        if self._reporter is not None:
            reporter, self._reporter = self._reporter, None
            reporter.finish()

    def close(self) -> None:
        self._closed = True
        self._by_start.clear()
        self._done.clear()
        self._head = None
        self._error = None
        self._results_changed.unpark_all()

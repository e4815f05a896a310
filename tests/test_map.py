"""Contract tests for ``Pool.map`` and ``Pool.imap``, with real worker processes.

Every test runs inside ``trio.fail_after``; none asserts timings beyond a
generous "returns within" bound. Delays in the worker functions only make one
item finish after another.
"""

from __future__ import annotations

import functools
import gc
import itertools
import threading
import traceback
import warnings
from typing import TYPE_CHECKING, Any, Literal

import pytest
import trio

import triopool
from tests import mapfuncs, workerfuncs

if TYPE_CHECKING:
    import pathlib
    from collections.abc import AsyncIterator, Iterator

TIMEOUT = 60  # generous: the machine is shared and busy


@pytest.fixture
async def pool() -> AsyncIterator[triopool.Pool]:
    async with triopool.open_pool(2) as pool:
        yield pool


async def assert_healthy(pool: triopool.Pool) -> None:
    """Nothing of an earlier call is left in the pool, and it still works."""
    stats = pool.statistics()
    assert stats.tasks_waiting == 0
    assert stats.tasks_running == 0
    assert await pool.map(mapfuncs.square, range(5)) == [0, 1, 4, 9, 16]


class CountingIterable:
    """Counts how many items were taken from it (endless unless ``stop``)."""

    def __init__(self, stop: int | None = None) -> None:
        self.pulled = 0
        self.stop = stop

    def __iter__(self) -> Iterator[int]:
        while self.stop is None or self.pulled < self.stop:
            self.pulled += 1
            yield self.pulled - 1


async def arange(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await trio.lowlevel.checkpoint()
        yield i


# Order and completeness


@pytest.mark.parametrize("chunksize", [1, 3])
async def test_map_returns_results_in_input_order(
    pool: triopool.Pool, chunksize: int
) -> None:
    # Earlier items sleep longer, so they finish after later ones.
    delays = [0.3, 0.2, 0.1, 0.0, 0.0, 0.0]
    with trio.fail_after(TIMEOUT):
        results = await pool.map(mapfuncs.sleep_for, delays, chunksize=chunksize)
    assert results == delays


async def test_imap_ordered_yields_in_input_order(pool: triopool.Pool) -> None:
    delays = [0.3, 0.2, 0.1, 0.0, 0.0, 0.0]
    with trio.fail_after(TIMEOUT):
        async with pool.imap(mapfuncs.sleep_for, delays) as results:
            received = [value async for value in results]
    assert received == delays


async def test_imap_unordered_yields_every_result_once(pool: triopool.Pool) -> None:
    with trio.fail_after(TIMEOUT):
        async with pool.imap(mapfuncs.square, range(50), ordered=False) as results:
            received = [value async for value in results]
    assert sorted(received) == [i * i for i in range(50)]


async def test_imap_unordered_yields_in_completion_order(pool: triopool.Pool) -> None:
    # One worker is stuck on the first item while the other does the rest.
    delays = [30.0, 0.0, 0.0, 0.0]
    received = []
    with trio.fail_after(TIMEOUT):
        async with pool.imap(mapfuncs.sleep_for, delays, ordered=False) as results:
            async for value in results:
                received.append(value)
                if len(received) == 3:
                    break
    assert received == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("ordered", [True, False])
async def test_empty_input(pool: triopool.Pool, ordered: bool) -> None:
    with trio.fail_after(TIMEOUT):
        assert await pool.map(mapfuncs.square, []) == []
        assert await pool.map(mapfuncs.square, arange(0), chunksize=4) == []
        async with pool.imap(mapfuncs.square, [], ordered=ordered) as results:
            assert [value async for value in results] == []
    assert pool.statistics().tasks_submitted == 0


@pytest.mark.parametrize("ordered", [True, False])
async def test_async_input(pool: triopool.Pool, ordered: bool) -> None:
    with trio.fail_after(TIMEOUT):
        assert await pool.map(mapfuncs.square, arange(20), chunksize=3) == [
            i * i for i in range(20)
        ]
        async with pool.imap(
            mapfuncs.square, arange(20), ordered=ordered, chunksize=4
        ) as results:
            received = [value async for value in results]
    assert sorted(received) == [i * i for i in range(20)]
    if ordered:
        assert received == [i * i for i in range(20)]


async def test_async_iterable_that_is_not_a_generator(pool: triopool.Pool) -> None:
    class Countdown:
        def __init__(self, start: int) -> None:
            self.left = start

        def __aiter__(self) -> Countdown:
            return self

        async def __anext__(self) -> int:
            if not self.left:
                raise StopAsyncIteration
            self.left -= 1
            return self.left

    with trio.fail_after(TIMEOUT):
        assert await pool.map(mapfuncs.square, Countdown(5)) == [16, 9, 4, 1, 0]


# Back-pressure


@pytest.mark.parametrize(
    ("max_in_flight", "chunksize"),
    [(3, 1), (8, 4), (5, 2), (2, 4), (3, "auto"), (50, "auto")],
)
async def test_unbounded_input_is_pulled_lazily(
    pool: triopool.Pool, max_in_flight: int, chunksize: int | Literal["auto"]
) -> None:
    source = CountingIterable()
    received = 0
    with trio.fail_after(TIMEOUT):
        async with pool.imap(
            mapfuncs.square,
            source,
            chunksize=chunksize,
            max_in_flight=max_in_flight,
        ) as results:
            async for value in results:
                assert value == received * received
                received += 1
                assert source.pulled <= received + max_in_flight
                if received % 7 == 0:
                    # A slow consumer: the producer must wait for it.
                    await trio.sleep(0.05)
                    assert source.pulled <= received + max_in_flight
                if received == 40:
                    break
    assert source.pulled <= 40 + max_in_flight
    await assert_healthy(pool)


@pytest.mark.parametrize(("chunksize", "bound"), [(3, 512), (40, 1280)])
async def test_default_max_in_flight_with_an_int_chunksize(
    pool: triopool.Pool, chunksize: int, bound: int
) -> None:
    # The documented default: workers * max(16 * chunksize, 256) items.
    source = CountingIterable()
    with trio.fail_after(TIMEOUT):
        async with pool.imap(mapfuncs.square, source, chunksize=chunksize) as results:
            async for _value in results:
                await trio.sleep(0.2)  # let the producer fill up
                break
    # The window, ahead of the one result received, and not less than one
    # chunk more.
    assert chunksize < source.pulled <= 1 + bound


@pytest.mark.parametrize(("chunksize", "bound"), [(1, 512), (16, 512), (100, 3200)])
async def test_default_max_in_flight_bounds_an_endless_input_with_a_slow_consumer(
    pool: triopool.Pool, chunksize: int, bound: int
) -> None:
    source = CountingIterable()
    received = 0
    ahead = []
    with trio.fail_after(TIMEOUT):
        async with pool.imap(mapfuncs.square, source, chunksize=chunksize) as results:
            async for value in results:
                assert value == received * received
                received += 1
                ahead.append(source.pulled - received)
                if received % 100 == 0:
                    await trio.sleep(0.05)  # a slow consumer
                    ahead.append(source.pulled - received)
                if received == 1000:
                    break
        await assert_healthy(pool)
    assert max(ahead) <= bound
    assert max(ahead) >= chunksize  # the window was used


async def test_map_of_a_large_input_holds_a_bounded_window(
    pool: triopool.Pool,
) -> None:
    # map takes its results internally, so the window is measured against
    # what the workers have finished: a result is taken only after its chunk
    # completed, so pulled - completed <= pulled - taken <= max_in_flight.
    chunksize = 16
    bound = 2 * 16 * chunksize  # the default max_in_flight with 2 workers
    count = 4 * bound
    windows: list[int] = []

    def source() -> Iterator[int]:
        for i in range(count):
            completed = pool.statistics().tasks_completed * chunksize
            windows.append(i + 1 - completed)
            yield i

    with trio.fail_after(TIMEOUT):
        results = await pool.map(mapfuncs.square, source(), chunksize=chunksize)
    assert results == [i * i for i in range(count)]
    assert pool.statistics().tasks_submitted == -(-count // chunksize)
    assert len(windows) == count
    assert max(windows) <= bound
    # The window was used, not just one chunk at a time.
    assert max(windows) > chunksize


# Chunking


@pytest.mark.parametrize("chunksize", [1, 2, 4, 5, 7, 20, 25])
@pytest.mark.parametrize("ordered", [True, False])
async def test_chunks_of_sizes_that_do_and_do_not_divide_the_input(
    pool: triopool.Pool, chunksize: int, ordered: bool
) -> None:
    with trio.fail_after(TIMEOUT):
        async with pool.imap(
            mapfuncs.square_with_pid, range(20), ordered=ordered, chunksize=chunksize
        ) as results:
            received = [value async for value in results]
    squares = [square for square, _pid in received]
    if ordered:
        assert squares == [i * i for i in range(20)]
    else:
        assert sorted(squares) == [i * i for i in range(20)]
    # One task per chunk: the last chunk holds the remainder.
    assert pool.statistics().tasks_submitted == -(-20 // chunksize)


@pytest.mark.parametrize("chunksize", [3, 8])
async def test_map_with_chunks(pool: triopool.Pool, chunksize: int) -> None:
    with trio.fail_after(TIMEOUT):
        assert await pool.map(mapfuncs.square, range(20), chunksize=chunksize) == [
            i * i for i in range(20)
        ]
    assert pool.statistics().tasks_submitted == -(-20 // chunksize)


async def test_chunks_import_nothing_heavy_in_the_worker() -> None:
    # The chunk runner is stdlib-only: running a chunk loads nothing more in
    # the worker than that module (and the user's), trio least of all.
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            before = set(await pool.run_sync(workerfuncs.loaded_modules))
            await pool.map(mapfuncs.square, range(8), chunksize=4)
            after = set(await pool.run_sync(workerfuncs.loaded_modules))
    assert after - before <= {"triopool._chunk", "tests.mapfuncs"}
    assert "triopool._chunk" in after


async def test_chunks_run_as_one_task_in_one_worker(pool: triopool.Pool) -> None:
    with trio.fail_after(TIMEOUT):
        results = await pool.map(mapfuncs.square_with_pid, range(12), chunksize=4)
    for first in range(0, 12, 4):
        pids = {pid for _square, pid in results[first : first + 4]}
        assert len(pids) == 1


# chunksize="auto" (the default): chunk sizes are seen through
# tasks_submitted (one task per chunk) and the pids that ran the items.


async def wait_until_every_worker_is_up(pool: triopool.Pool) -> None:
    # The pool offers no event for it; its statistics are cheap to poll.
    while pool.statistics().workers_idle < pool.statistics().workers:  # noqa: ASYNC110
        await trio.sleep(0.01)


async def test_auto_spreads_a_short_input_over_every_worker(
    pool: triopool.Pool,
) -> None:
    with trio.fail_after(TIMEOUT):
        await wait_until_every_worker_is_up(pool)
        pids = await pool.map(mapfuncs.sleep_with_pid, [0.3, 0.3, 0.3])
    assert pool.statistics().tasks_submitted == 3  # one item per chunk
    assert len(set(pids)) == 2


async def test_auto_chunks_grow_on_a_long_input(pool: triopool.Pool) -> None:
    with trio.fail_after(TIMEOUT):
        results = await pool.map(mapfuncs.square, range(20_000))
    assert results == [i * i for i in range(20_000)]
    # Quick items: chunks of hundreds or thousands of items, not 20,000 tasks.
    assert 4 < pool.statistics().tasks_submitted <= 500


@pytest.mark.parametrize("ordered", [True, False])
async def test_auto_on_an_unbounded_input(pool: triopool.Pool, ordered: bool) -> None:
    received: list[int] = []
    with trio.fail_after(TIMEOUT):
        async with pool.imap(
            mapfuncs.square, itertools.count(), ordered=ordered
        ) as results:
            async for value in results:
                received.append(value)
                if len(received) == 20_000:
                    break
        await assert_healthy(pool)
    if ordered:
        assert received == [i * i for i in range(20_000)]
    else:
        assert len(set(received)) == 20_000
    assert pool.statistics().tasks_submitted <= 500


@pytest.mark.parametrize("ordered", [True, False])
async def test_auto_on_an_async_input(pool: triopool.Pool, ordered: bool) -> None:
    with trio.fail_after(TIMEOUT):
        assert await pool.map(mapfuncs.square, arange(3000)) == [
            i * i for i in range(3000)
        ]
        async with pool.imap(mapfuncs.square, arange(3000), ordered=ordered) as results:
            received = [value async for value in results]
    if ordered:
        assert received == [i * i for i in range(3000)]
    else:
        assert sorted(received) == [i * i for i in range(3000)]
    assert pool.statistics().tasks_submitted <= 2 * 3000 // 10


async def test_auto_does_not_batch_a_slow_input(pool: triopool.Pool) -> None:
    # An item every 50 ms: waiting for a second item would hold back the
    # first one's result, so every chunk holds one item.
    async def trickle() -> AsyncIterator[int]:
        for i in range(10):
            await trio.sleep(0.05)
            yield i

    with trio.fail_after(TIMEOUT):
        assert await pool.map(mapfuncs.square, trickle()) == [i * i for i in range(10)]
    assert pool.statistics().tasks_submitted == 10


def slow_items_per_worker(delays: list[float], pids: list[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for delay, pid in zip(delays, pids, strict=True):
        if delay > 0.01:
            counts[pid] = counts.get(pid, 0) + 1
    return counts


@pytest.mark.parametrize("known_length", [True, False])
async def test_auto_shares_slow_items_at_the_end(
    pool: triopool.Pool, known_length: bool
) -> None:
    # 5% of the items are 100 times slower than the rest (sleeps: no CPU).
    # If one chunk held most of the slow items, one worker would run them
    # while the other idled: each must run a fair share.
    if known_length:
        # The hard case: all bunched at the end, which only a known length
        # lets the planner see coming.
        delays = [0.0002] * 1900 + [0.02] * 100
    else:
        delays = [0.02 if i % 20 == 19 else 0.0002 for i in range(2000)]
    items: list[float] | Iterator[float] = delays if known_length else iter(delays)
    with trio.fail_after(TIMEOUT):
        await wait_until_every_worker_is_up(pool)
        pids = await pool.map(mapfuncs.sleep_with_pid, items)
    counts = slow_items_per_worker(delays, pids)
    assert sum(counts.values()) == 100
    assert len(counts) == 2
    # 50 each at best; a worker left with a long chunk of slow items at the
    # end (no tail splitting) ran about 35 of them in trials.
    assert min(counts.values()) >= 40, counts


async def test_auto_default_max_in_flight_bounds_an_endless_input(
    pool: triopool.Pool,
) -> None:
    # The documented bound with chunksize="auto": 8192 items per worker.
    bound = 8192 * 2
    source = CountingIterable()
    received = 0
    ahead = []
    with trio.fail_after(TIMEOUT):
        async with pool.imap(mapfuncs.square, source) as results:
            async for value in results:
                assert value == received * received
                received += 1
                ahead.append(source.pulled - received)
                if received % 2000 == 0:
                    # A slow consumer: the producer fills the window, no more.
                    await trio.sleep(0.05)
                    ahead.append(source.pulled - received)
                if received == 40_000:
                    break
    assert max(ahead) <= bound
    # The window is used (it fills up in trials): chunks grew large.
    assert max(ahead) > bound // 4


# Errors


@pytest.mark.parametrize("chunksize", [1, 3])
async def test_map_raises_the_first_error_as_itself(
    pool: triopool.Pool, chunksize: int
) -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(ValueError, match="-2") as info:
        await pool.map(mapfuncs.fail_on_negative, [0, 1, -2, 3], chunksize=chunksize)
    assert info.value.args == (-2,)
    # The worker's frames are in the printed traceback, as for run_sync.
    text = "".join(traceback.format_exception(info.value))
    assert "mapfuncs.py" in text
    assert "fail_on_negative" in text
    await assert_healthy(pool)


async def test_a_failing_chunk_reports_its_first_failing_item(
    pool: triopool.Pool,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with pool.imap(
            mapfuncs.fail_on_negative, [0, 1, 2, -3, 4, -5], chunksize=6
        ) as results:
            with pytest.raises(ValueError, match="-3") as info:
                async for _value in results:
                    pass
    assert info.value.args == (-3,)
    assert "fail_on_negative" in "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize("ordered", [True, False])
async def test_imap_error_leaves_the_async_for_and_cancels_the_rest(
    tmp_path: pathlib.Path, ordered: bool
) -> None:
    # Item 0 fails once item 1 is running a 30 s sleep; items 2 and 3 (more
    # sleeps) are queued or running. None of the sleeps may complete.
    marker = str(tmp_path / "sleeping")
    jobs = [("fail", marker)] + [("sleep", marker)] * 3
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            async with pool.imap(
                mapfuncs.fail_when_started, jobs, ordered=ordered, max_in_flight=4
            ) as results:
                with pytest.raises(ValueError, match="fail") as info:
                    async for _value in results:
                        pass
                assert info.value.args == ("fail",)
                # The rest was cancelled before the error reached the consumer.
                stats = pool.statistics()
                assert stats.tasks_running == 0
                assert stats.tasks_waiting == 0
                assert stats.tasks_failed == 1
                assert stats.tasks_cancelled == 3
                assert stats.tasks_completed == 0
                # Iteration is over; the error is raised once.
                with pytest.raises(StopAsyncIteration):
                    await results.__anext__()
            await assert_healthy(pool)
    # Running sleeps were killed (counted once their slots reaped them).
    assert pool.statistics().workers_lost >= 1


async def test_error_cancels_running_tasks_per_kill_on_cancel_false() -> None:
    # With kill_on_cancel=False the running task finishes; the worker lives.
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2, kill_on_cancel=False) as pool:
            with pytest.raises(ValueError, match="-1"):
                await pool.map(mapfuncs.sleep_or_fail, [-1.0] + [0.5] * 6)
            # The running sleeps finished before map raised.
            stats = pool.statistics()
            assert stats.workers_lost == 0
            assert stats.tasks_running == 0
            assert stats.tasks_waiting == 0
            await assert_healthy(pool)


async def test_error_from_the_input_is_raised_as_itself(pool: triopool.Pool) -> None:
    def broken_input() -> Iterator[int]:
        yield 1
        yield 2
        raise KeyError("input failed")

    with trio.fail_after(TIMEOUT), pytest.raises(KeyError, match="input failed"):
        await pool.map(mapfuncs.square, broken_input())
    await assert_healthy(pool)


@pytest.mark.parametrize("chunksize", [1, 3])
async def test_error_from_an_async_input_is_raised_as_itself(
    pool: triopool.Pool, chunksize: int
) -> None:
    async def broken_input() -> AsyncIterator[int]:
        for i in range(4):
            await trio.lowlevel.checkpoint()
            yield i
        raise KeyError("async input failed")

    with trio.fail_after(TIMEOUT):
        with pytest.raises(KeyError, match="async input failed"):
            await pool.map(mapfuncs.square, broken_input(), chunksize=chunksize)
        received: list[int] = []

        async def consume() -> None:
            async with pool.imap(
                mapfuncs.square, broken_input(), chunksize=chunksize
            ) as results:
                async for value in results:
                    received.append(value)

        with pytest.raises(KeyError, match="async input failed"):
            await consume()
    assert received == [i * i for i in range(len(received))]
    await assert_healthy(pool)


async def test_error_is_not_wrapped_in_an_exception_group(pool: triopool.Pool) -> None:
    with trio.fail_after(TIMEOUT):
        try:
            await pool.map(mapfuncs.fail_on_negative, [-1])
        except BaseException as exc:
            error: BaseException = exc
    assert type(error) is ValueError


async def test_worker_crash_mid_map(pool: triopool.Pool) -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(triopool.BrokenWorkerError) as info:
            await pool.map(mapfuncs.die_on_negative, [1, 2, -1, 3, 4, 5])
        assert info.value.exitcode == 7
        async with pool.imap(
            mapfuncs.die_on_negative, [1, -1, 2], chunksize=2
        ) as results:
            with pytest.raises(triopool.BrokenWorkerError):
                async for _value in results:
                    pass
        await assert_healthy(pool)
    assert pool.statistics().workers_lost >= 2


async def test_time_limit_during_map() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2, time_limit=1.0) as pool:
            with pytest.raises(triopool.TimeLimitExceeded):
                await pool.map(mapfuncs.sleep_for, [0.0, 0.0, 30.0, 0.0])
            # With chunks the limit applies to the chunk as a whole.
            with pytest.raises(triopool.TimeLimitExceeded):
                await pool.map(mapfuncs.sleep_for, [0.4] * 8, chunksize=4)
            await assert_healthy(pool)


# Ending early


async def test_early_break_cancels_the_rest(pool: triopool.Pool) -> None:
    delays = [0.0, 0.0, 30.0, 30.0, 30.0, 30.0]
    with trio.fail_after(TIMEOUT):
        async with pool.imap(mapfuncs.sleep_for, delays, max_in_flight=6) as results:
            async for value in results:
                assert value == 0.0
                break
        stats = pool.statistics()
        assert stats.tasks_running == 0
        assert stats.tasks_waiting == 0
        await assert_healthy(pool)


@pytest.mark.parametrize("while_waiting", [True, False])
async def test_consumer_cancellation_cancels_the_rest(
    pool: triopool.Pool, while_waiting: bool
) -> None:
    delays = [0.0, 30.0, 30.0, 30.0]
    received: list[float] = []
    with trio.fail_after(TIMEOUT):
        with trio.CancelScope() as scope:
            async with pool.imap(mapfuncs.sleep_for, delays) as results:
                async for value in results:
                    received.append(value)
                    if while_waiting:
                        # Cancelled while waiting for the next (30 s) result.
                        scope.deadline = trio.current_time() + 0.2
                    else:
                        scope.cancel()  # the next take raises Cancelled
        assert scope.cancelled_caught
        assert received == [0.0]
        stats = pool.statistics()
        assert stats.tasks_running == 0
        assert stats.tasks_waiting == 0
        await assert_healthy(pool)


async def test_map_cancelled_by_its_caller(pool: triopool.Pool) -> None:
    with trio.fail_after(TIMEOUT):
        with trio.move_on_after(0.5):
            await pool.map(mapfuncs.sleep_for, [30.0] * 5)
            pytest.fail("map returned")  # pragma: no cover
        await assert_healthy(pool)


async def test_exception_in_the_block_leaves_as_itself(pool: triopool.Pool) -> None:
    class Stop(Exception):
        pass

    async def consume() -> None:
        async with pool.imap(mapfuncs.sleep_for, [0.0, 30.0, 30.0]) as results:
            async for _value in results:
                raise Stop

    with trio.fail_after(TIMEOUT), pytest.raises(Stop):
        await consume()
    await assert_healthy(pool)


class InputLog:
    """An endless async generator input that records its own cleanup."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def items(self) -> AsyncIterator[float]:
        # No await between items: the generator is always suspended at a
        # yield when the call ends (a cancellation that lands on an await of
        # the generator itself runs its finally there, cancelled, as any
        # Trio code would).
        try:
            yield 0.0
            while True:
                yield 30.0
        finally:
            # An await in the cleanup: it runs only if the generator is
            # closed by an aclose() inside a run, not by the garbage collector.
            await trio.sleep(0.01)
            self.events.append("input closed")


@pytest.mark.parametrize("how", ["break", "error", "cancel"])
async def test_async_generator_input_is_closed_within_the_block(
    pool: triopool.Pool, how: str
) -> None:
    log = InputLog()
    items = log.items()

    class Stop(Exception):
        pass

    with trio.fail_after(TIMEOUT), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with trio.CancelScope() as scope:
            try:
                async with pool.imap(
                    mapfuncs.sleep_for, items, max_in_flight=3
                ) as results:
                    async for _value in results:
                        if how == "break":
                            break
                        if how == "error":
                            raise Stop
                        scope.cancel()
                        await trio.lowlevel.checkpoint()
            except Stop:
                pass
            finally:
                log.events.append("block exited")
        assert log.events == ["input closed", "block exited"]
        del items
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert scope.cancelled_caught == (how == "cancel")
    await assert_healthy(pool)


async def test_results_after_the_block_raise_closed(pool: triopool.Pool) -> None:
    with trio.fail_after(TIMEOUT):
        async with pool.imap(mapfuncs.square, range(3)) as results:
            pass
        with pytest.raises(trio.ClosedResourceError):
            await results.__anext__()


async def test_concurrent_calls_share_the_pool(pool: triopool.Pool) -> None:
    outputs: dict[int, list[int]] = {}

    async def one(k: int) -> None:
        outputs[k] = await pool.map(
            functools.partial(mapfuncs.add_to, k), range(30), chunksize=k
        )

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for k in (1, 2, 5):
                nursery.start_soon(one, k)
    assert outputs == {k: [k + i for i in range(30)] for k in (1, 2, 5)}


# Arguments and closed pools


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"chunksize": 0}, ValueError, "chunksize must be >= 1, got 0"),
        (
            {"chunksize": "Auto"},
            ValueError,
            "chunksize must be 'auto' or an int >= 1, got 'Auto'",
        ),
        (
            {"chunksize": None},
            TypeError,
            "chunksize must be 'auto' or an int, got None",
        ),
        ({"chunksize": 1.5}, TypeError, "chunksize must be .auto. or an int, got 1.5"),
        (
            {"chunksize": True},
            TypeError,
            "chunksize must be .auto. or an int, got True",
        ),
        ({"max_in_flight": 0}, ValueError, "max_in_flight must be >= 1, got 0"),
        ({"max_in_flight": "2"}, TypeError, "max_in_flight must be an int"),
        ({"ordered": 1}, TypeError, "ordered must be a bool, got 1"),
    ],
)
async def test_imap_rejects_bad_options(
    pool: triopool.Pool, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        pool.imap(mapfuncs.square, range(3), **options)


async def test_bad_arguments(pool: triopool.Pool) -> None:
    async def coroutine_function(x: int) -> int:
        return x  # pragma: no cover

    with pytest.raises(ValueError, match="chunksize must be >= 1, got -1"):
        await pool.map(mapfuncs.square, range(3), chunksize=-1)
    with pytest.raises(TypeError, match="async function"):
        await pool.map(coroutine_function, range(3))
    with pytest.raises(TypeError, match="async function"):
        pool.imap(coroutine_function, range(3))
    with pytest.raises(TypeError, match="iterable must be an iterable"):
        await pool.map(mapfuncs.square, 5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="needs a callable"):
        await pool.map(5, range(3))  # type: ignore[call-overload]
    # Not even cloudpickle can send a lock (lambdas are fine with it: see
    # test_serialization.py).
    lock: Any = threading.Lock()
    unpicklable = functools.partial(mapfuncs.add_to, lock)
    with pytest.raises(triopool.SerializationError, match="could not pickle"):
        await pool.map(unpicklable, range(3))
    with pytest.raises(triopool.SerializationError, match="could not pickle"):
        pool.imap(unpicklable, range(3))
    assert pool.statistics().tasks_submitted == 0


async def test_map_and_imap_after_the_pool_closed() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            pass
    with pytest.raises(trio.ClosedResourceError):
        await pool.map(mapfuncs.square, range(3))
    with pytest.raises(trio.ClosedResourceError):
        pool.imap(mapfuncs.square, range(3))

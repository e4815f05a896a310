"""Streaming dispatch of ``Pool.map``/``imap``: chunks are jobs of the pool's
queue, submitted without a Trio task each, and their ends call back.

The semantics of API.md must not change: these tests check that cancellation,
early exit and errors leave no task of the call running, whichever state its
jobs were in (queued, written ahead to a busy worker, running).
"""

from __future__ import annotations

import pytest
import trio

import triopool
from tests import mapfuncs

TIMEOUT = 60  # generous: the machine is shared and busy


class SpawnCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


async def assert_healthy(pool: triopool.Pool) -> None:
    stats = pool.statistics()
    assert stats.tasks_waiting == 0
    assert stats.tasks_running == 0
    assert await pool.map(mapfuncs.square, range(5)) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("chunksize", [1, 4])
async def test_chunks_need_no_task_each(chunksize: int) -> None:
    counter = SpawnCounter()
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            trio.lowlevel.add_instrument(counter)
            try:
                results = await pool.map(
                    mapfuncs.square, range(400), chunksize=chunksize
                )
            finally:
                trio.lowlevel.remove_instrument(counter)
            assert results == [i * i for i in range(400)]
            assert pool.statistics().tasks_submitted == 400 // chunksize
    # The call's own tasks (a producer and a nursery's worth), not one per
    # chunk: 100 or 400 chunks ran.
    assert counter.spawned < 20


@pytest.mark.parametrize("kill_on_cancel", [True, False])
async def test_break_with_jobs_queued_written_ahead_and_running(
    kill_on_cancel: bool,
) -> None:
    # Quick items get jobs written ahead to busy workers; the slow ones keep
    # them running when the consumer leaves.
    delays = [0.0] * 30 + [0.5] * 4 + [0.0] * 60
    received = 0
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2, kill_on_cancel=kill_on_cancel) as pool:
            async with pool.imap(
                mapfuncs.sleep_for, delays, chunksize=1, max_in_flight=40
            ) as results:
                async for _value in results:
                    received += 1
                    if received == 31:
                        break
            stats = pool.statistics()
            await assert_healthy(pool)
    assert received == 31
    assert (
        stats.tasks_submitted
        == stats.tasks_completed + stats.tasks_cancelled + stats.tasks_failed
    )
    # What ran to the end or was cancelled; nothing more was submitted than
    # the window allowed.
    assert stats.tasks_submitted <= 31 + 40 + 1


async def test_an_error_cancels_the_streamed_rest() -> None:
    items = [1, 2, 3, -1, *range(4, 200)]
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            with pytest.raises(ValueError, match=r"^-1$") as info:
                await pool.map(mapfuncs.fail_on_negative, items, chunksize=1)
            assert info.value.args == (-1,)
            stats = pool.statistics()
            assert stats.tasks_running == 0
            assert stats.tasks_waiting == 0
            await assert_healthy(pool)


async def test_cancelled_caller_with_streamed_jobs_running() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2, kill_on_cancel=False) as pool:
            scope = trio.CancelScope()

            async def run_map() -> None:
                with scope:
                    await pool.map(mapfuncs.sleep_for, [0.6] * 8, chunksize=1)

            async with pool.events() as events, trio.open_nursery() as nursery:
                nursery.start_soon(run_map)
                # Cancelled once both workers run one (however slowly they
                # started), so that two jobs are running when it comes.
                started = 0
                async for event in events:
                    if isinstance(event, triopool.TaskEvent):
                        started += event.kind == "started"
                        if started == 2:
                            break
                scope.cancel()
            assert scope.cancelled_caught
            # The running jobs ran to their end, shielded, like run_sync's.
            stats = pool.statistics()
            assert stats.tasks_running == 0
            assert stats.tasks_waiting == 0
            assert stats.tasks_completed >= 2
            assert stats.workers_lost == 0
            await assert_healthy(pool)

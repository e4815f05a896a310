"""``return_exceptions=True`` on ``Pool.map`` and ``Pool.imap``, with real workers.

A failing item yields its exception in its place and the call goes on,
whether the item raised, killed its worker, ran past the time limit, or
returned something that cannot be pickled; with chunks, only the item at
fault gets the error.
"""

from __future__ import annotations

import traceback
from typing import Any, Literal

import pytest
import trio

import triopool
from tests import mapfuncs

TIMEOUT = 90  # generous: the machine is shared and busy

Chunksize = int | Literal["auto"]


async def assert_healthy(pool: triopool.Pool) -> None:
    stats = pool.statistics()
    assert stats.tasks_waiting == 0
    assert stats.tasks_running == 0
    assert await pool.map(mapfuncs.square, range(5)) == [0, 1, 4, 9, 16]


def shape(values: list[Any]) -> list[Any]:
    """Values as they compare: an exception becomes (type, args)."""
    return [
        (type(value), value.args) if isinstance(value, BaseException) else value
        for value in values
    ]


@pytest.mark.parametrize("chunksize", [1, 3, 6, "auto"])
async def test_task_errors_take_their_items_place(chunksize: Chunksize) -> None:
    items = [1, -2, 3, -4, 5, 6]
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            values = await pool.map(
                mapfuncs.fail_on_negative,
                items,
                chunksize=chunksize,
                return_exceptions=True,
            )
            assert shape(values) == [
                1,
                (ValueError, (-2,)),
                3,
                (ValueError, (-4,)),
                5,
                6,
            ]
            # The worker's traceback comes along, as for run_sync.
            error = values[1]
            assert isinstance(error, ValueError)
            text = "".join(traceback.format_exception(error))
            assert "fail_on_negative" in text
            assert isinstance(error.__cause__, triopool.RemoteTraceback)
            async with pool.imap(
                mapfuncs.fail_on_negative,
                items,
                chunksize=chunksize,
                return_exceptions=True,
            ) as results:
                streamed = [value async for value in results]
            assert shape(streamed) == shape(values)
            if chunksize == 6:
                # The failures ran as items of one chunk, not a task each.
                assert pool.statistics().tasks_submitted == 2
            await assert_healthy(pool)


@pytest.mark.parametrize("chunksize", [3, 6])
async def test_a_worker_death_mid_chunk_costs_only_its_item(chunksize: int) -> None:
    items = [1, 2, -1, 3, 4, 5]
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            values = await pool.map(
                mapfuncs.die_on_negative,
                items,
                chunksize=chunksize,
                return_exceptions=True,
            )
            assert [v for i, v in enumerate(values) if i != 2] == [1, 2, 3, 4, 5]
            error = values[2]
            assert isinstance(error, triopool.BrokenWorkerError)
            assert error.exitcode == 7
            # Only the chunk's run killed a worker: the item at fault is not
            # run again on its own.
            assert pool.statistics().workers_lost == 1
            await assert_healthy(pool)


async def test_a_worker_death_with_auto_chunks_unordered() -> None:
    items = [*range(40), -1, *range(40, 80)]
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            async with pool.imap(
                mapfuncs.die_on_negative,
                items,
                ordered=False,
                return_exceptions=True,
            ) as results:
                values = [value async for value in results]
            errors = [v for v in values if isinstance(v, BaseException)]
            assert len(errors) == 1
            assert isinstance(errors[0], triopool.BrokenWorkerError)
            assert sorted(v for v in values if not isinstance(v, BaseException)) == [
                *range(80)
            ]
            await assert_healthy(pool)


async def test_time_limits_with_chunks() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2, time_limit=1.0) as pool:
            # The limit counts per task: the chunk of four hits it; then the
            # slow item runs again first in a task of its own (with the item
            # after it), and hits it again alone.
            values = await pool.map(
                mapfuncs.sleep_for,
                [0.0, 0.0, 30.0, 0.0],
                chunksize=4,
                return_exceptions=True,
            )
            assert values[:2] == [0.0, 0.0]
            assert values[3] == 0.0
            assert isinstance(values[2], triopool.TimeLimitExceeded)
            assert values[2].time_limit == 1.0
            # A chunk too long only as a whole: every item gets its result.
            values = await pool.map(
                mapfuncs.sleep_for, [0.4] * 4, chunksize=4, return_exceptions=True
            )
            assert values == [0.4] * 4
            await assert_healthy(pool)


async def test_an_unpicklable_result_fails_only_its_item() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            values = await pool.map(
                mapfuncs.unpicklable_on_negative,
                [1, -1, 2],
                chunksize=3,
                return_exceptions=True,
            )
            assert values[0] == 1
            assert values[2] == 2
            assert isinstance(values[1], triopool.SerializationError)
            await assert_healthy(pool)


async def test_an_error_of_the_input_still_ends_the_call() -> None:
    def items() -> Any:
        yield 1
        raise KeyError("input")

    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(KeyError):
                await pool.map(mapfuncs.square, items(), return_exceptions=True)
            await assert_healthy(pool)


async def test_return_exceptions_must_be_a_bool() -> None:
    async with triopool.open_pool(1) as pool:
        with pytest.raises(TypeError, match="return_exceptions must be a bool"):
            await pool.map(mapfuncs.square, [1], return_exceptions=1)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="return_exceptions must be a bool"):
            pool.imap(mapfuncs.square, [1], return_exceptions="yes")  # type: ignore[call-overload]


async def test_many_failing_auto_chunks_in_a_row_do_not_stall_the_producer() -> None:
    # With "auto", chunks start at one item, and at most 2 * workers run at
    # once: each failed one must make room for the next.
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            values = await pool.map(
                mapfuncs.die_on_negative, [-1] * 7, return_exceptions=True
            )
            assert [type(value) for value in values] == [triopool.BrokenWorkerError] * 7
            values = await pool.map(
                mapfuncs.fail_on_negative, [-1] * 30, return_exceptions=True
            )
            assert [type(value) for value in values] == [ValueError] * 30
            await assert_healthy(pool)

"""A worker's death in the middle of a chunk costs only the item it was
running, with real workers: the items it finished keep their results and
never run again, the items after it run elsewhere (``return_exceptions``
and ``retries``; see ``_chunk_parts``). Every item's runs are counted in
marker files, whatever process runs it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio

import triopool
from tests import mapfuncs
from triopool import _hooks, _protocol
from triopool._stats import identity_problems

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("start_method")

TIMEOUT = 90  # generous: the machine is shared and busy


def plan(folder: Path, actions: dict[int, str], count: int) -> list[Any]:
    """``count`` items for mapfuncs.counted: OK but for ``actions``."""
    return [(str(folder), i, actions.get(i, mapfuncs.OK)) for i in range(count)]


async def assert_healthy(pool: triopool.Pool) -> None:
    stats = pool.statistics()
    assert identity_problems(stats) == []
    assert (stats.tasks_waiting, stats.tasks_running) == (0, 0)
    assert await pool.map(mapfuncs.square, range(5)) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("ordered", [True, False])
async def test_a_death_mid_chunk_runs_no_finished_item_again(
    tmp_path: Path, ordered: bool
) -> None:
    items = plan(tmp_path, {3: mapfuncs.DIE}, 8)
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            async with pool.imap(
                mapfuncs.counted,
                items,
                chunksize=8,
                ordered=ordered,
                return_exceptions=True,
            ) as results:
                values = [value async for value in results]
            errors = [value for value in values if isinstance(value, BaseException)]
            assert len(errors) == 1
            error = errors[0]
            assert isinstance(error, triopool.BrokenWorkerError)
            assert error.exitcode == 7
            assert error.runs == 1
            if ordered:
                assert values[:3] == [0, 1, 2]
                assert values[3] is error
                assert values[4:] == [4, 5, 6, 7]
            else:
                assert sorted(v for v in values if isinstance(v, int)) == [
                    0, 1, 2, 4, 5, 6, 7,
                ]  # fmt: skip
            # Each item ran once: the finished ones were not run again, nor
            # was the one at fault.
            assert mapfuncs.runs(str(tmp_path), 8) == [1] * 8
            stats = pool.statistics()
            assert stats.workers_lost == 1
            # The chunk, then the rest of it (items 4 to 7) as a chunk.
            assert stats.tasks_submitted == 2
            await assert_healthy(pool)


async def test_a_death_after_the_last_item_costs_no_item(tmp_path: Path) -> None:
    # The chunk's last item dies: there is no rest to run.
    items = plan(tmp_path, {5: mapfuncs.DIE}, 6)
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            values = await pool.map(
                mapfuncs.counted, items, chunksize=6, return_exceptions=True
            )
            assert values[:5] == [0, 1, 2, 3, 4]
            assert isinstance(values[5], triopool.BrokenWorkerError)
            assert mapfuncs.runs(str(tmp_path), 6) == [1] * 6
            assert pool.statistics().tasks_submitted == 1
            await assert_healthy(pool)


async def test_a_time_limit_mid_chunk_blames_only_a_slow_item(tmp_path: Path) -> None:
    items = plan(tmp_path, {2: mapfuncs.HANG}, 6)
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2, time_limit=1.0) as pool:
            values = await pool.map(
                mapfuncs.counted, items, chunksize=6, return_exceptions=True
            )
            assert values[:2] == [0, 1]
            assert isinstance(values[2], triopool.TimeLimitExceeded)
            assert values[2].time_limit == 1.0
            assert values[3:] == [3, 4, 5]
            # The finished items ran once. The slow one ran twice: the limit
            # counts per chunk, so it ran again first in a chunk of its own,
            # and only there was it slow all by itself.
            assert mapfuncs.runs(str(tmp_path), 6) == [1, 1, 2, 1, 1, 1]
            await assert_healthy(pool)


async def test_retries_run_only_the_item_at_fault_again(tmp_path: Path) -> None:
    items = plan(tmp_path, {3: mapfuncs.DIE_ONCE}, 8)
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            values = await pool.map(mapfuncs.counted, items, chunksize=8, retries=1)
            assert values == list(range(8))
            assert mapfuncs.runs(str(tmp_path), 8) == [1, 1, 1, 2, 1, 1, 1, 1]
            assert pool.statistics().workers_lost == 1
            await assert_healthy(pool)


async def test_an_item_that_keeps_dying_fails_after_its_retries(
    tmp_path: Path,
) -> None:
    items = plan(tmp_path, {3: mapfuncs.DIE}, 8)
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            values = await pool.map(
                mapfuncs.counted,
                items,
                chunksize=8,
                retries=1,
                return_exceptions=True,
            )
            error = values[3]
            assert isinstance(error, triopool.BrokenWorkerError)
            assert error.runs == 2
            assert "2 runs tried" in str(error)
            assert values[:3] == [0, 1, 2]
            assert values[4:] == [4, 5, 6, 7]
            assert mapfuncs.runs(str(tmp_path), 8) == [1, 1, 1, 2, 1, 1, 1, 1]
            assert pool.statistics().workers_lost == 2
            # Without return_exceptions, the last failure ends the call.
            again = tmp_path / "again"
            again.mkdir()
            with pytest.raises(triopool.BrokenWorkerError) as info:
                await pool.map(
                    mapfuncs.counted,
                    plan(again, {1: mapfuncs.DIE}, 4),
                    chunksize=4,
                    retries=1,
                )
            assert info.value.runs == 2
            assert mapfuncs.runs(str(again), 4)[:2] == [1, 2]
            await assert_healthy(pool)


async def test_an_item_error_without_return_exceptions_ends_the_call(
    tmp_path: Path,
) -> None:
    # retries (for deaths) makes chunks report their items; an item's own
    # exception still ends the call, and the items after it never run.
    items = plan(tmp_path, {2: mapfuncs.RAISE}, 6)
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(ValueError, match=r"^2$"):
                await pool.map(mapfuncs.counted, items, chunksize=6, retries=2)
            assert mapfuncs.runs(str(tmp_path), 6) == [1, 1, 1, 0, 0, 0]
            await assert_healthy(pool)


async def test_an_item_error_named_in_retry_on_runs_that_item_again(
    tmp_path: Path,
) -> None:
    items = plan(tmp_path, {2: mapfuncs.RAISE}, 6)
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(ValueError, match=r"^2\b") as info:
                await pool.map(
                    mapfuncs.counted,
                    items,
                    chunksize=6,
                    retries=1,
                    retry_on=(ValueError,),
                )
            assert info.value.args == (2,)
            assert "triopool: 2 runs tried" in info.value.__notes__
            assert mapfuncs.runs(str(tmp_path), 6) == [1, 1, 2, 0, 0, 0]
            await assert_healthy(pool)


async def test_only_maps_that_outlive_a_death_report_items(tmp_path: Path) -> None:
    parts: list[int] = []

    def trace(event: _hooks.Trace) -> None:
        if event.kind == "received" and event.frame_kind == _protocol.PART:
            parts.append(event.worker_pid)

    with trio.fail_after(TIMEOUT), _hooks.installed(trace=trace):
        async with triopool.open_pool(2) as pool:
            assert await pool.map(mapfuncs.square, range(40), chunksize=10) == [
                x * x for x in range(40)
            ]
            assert parts == []  # a plain map: one answer per chunk
            values = await pool.map(
                mapfuncs.square, range(40), chunksize=10, return_exceptions=True
            )
            assert values == [x * x for x in range(40)]
            assert len(parts) == 40
            await pool.map(mapfuncs.square, range(40), chunksize=10, retries=1)
            assert len(parts) == 80
            await assert_healthy(pool)

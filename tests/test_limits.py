"""Limits, against real worker processes: hard and soft time limits, memory
and task-count recycling, and crash loops at start.

Every test bounds its run with ``trio.fail_after`` and is checked for leaked
fds and processes by the autouse fixture in ``conftest.py``. Durations only
bound behaviour, generously; none is asserted as a timing.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
import trio

import triopool
from tests import limitfuncs, workerfuncs

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

MiB = 1024 * 1024


async def run_all(
    pool: triopool.Pool, calls: list[Callable[[], Awaitable[Any]]]
) -> list[Any]:
    """Run ``calls`` concurrently, each submitted once the one before it is
    queued or running, so the pool sees them in list order. Returns each
    one's value or the exception it raised, in order."""
    results: list[Any] = [None] * len(calls)

    async def one(i: int, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            results[i] = await call()
        except Exception as exc:
            results[i] = exc

    async with trio.open_nursery() as nursery:
        for i, call in enumerate(calls):
            submitted = pool.statistics().tasks_submitted
            nursery.start_soon(one, i, call)
            # start_soon runs the task at the next scheduling round; wait
            # for it to reach the pool before starting the next one.
            while pool.statistics().tasks_submitted == submitted:
                await trio.lowlevel.checkpoint()
    return results


def call(pool: triopool.Pool, fn: Any, *args: Any, **options: Any) -> Any:
    """``pool.run_sync(fn, *args, **options)``, to be awaited later."""
    return functools.partial(pool.run_sync, fn, *args, **options)


# 1. Hard time limit


async def test_pool_time_limit_kills_and_replaces_the_worker() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1, time_limit=0.5) as pool:
            first = await pool.run_sync(workerfuncs.getpid)
            with pytest.raises(triopool.TimeLimitExceeded) as info:
                await pool.run_sync(workerfuncs.sleep, 60)
            assert info.value.time_limit == 0.5
            assert "0.5 s" in str(info.value)
            # The pool goes on with a new worker.
            second = await pool.run_sync(workerfuncs.getpid)
            assert second != first
            stats = pool.statistics()
            assert stats.workers_lost == 1
            assert stats.tasks_failed == 1
            assert stats.tasks_completed == 2


async def test_run_sync_time_limit_overrides_the_pool_default() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1, time_limit=0.3) as pool:
            # None lifts the pool's limit for this call.
            assert await pool.run_sync(workerfuncs.sleep, 1.0, time_limit=None) == 1.0
            with pytest.raises(triopool.TimeLimitExceeded) as info:
                await pool.run_sync(workerfuncs.sleep, 60, time_limit=0.6)
            assert info.value.time_limit == 0.6
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.TimeLimitExceeded):
                await pool.run_sync(workerfuncs.sleep, 60, time_limit=0.5)


async def test_time_limit_counts_from_when_the_worker_gets_the_task() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1) as pool:
            # The second task waits about 3 s in the queue behind the first,
            # then runs for 0.1 s: it is well within a 2 s limit counted from
            # its start, and far beyond one counted from its submission.
            first, second = await run_all(
                pool,
                [
                    call(pool, workerfuncs.sleep, 3.0),
                    call(pool, workerfuncs.sleep, 0.1, time_limit=2.0),
                ],
            )
            assert first == 3.0
            assert second == 0.1
            assert pool.statistics().workers_lost == 0


async def test_time_limit_with_a_busy_pool_fails_only_its_task() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(2) as pool:
            outcomes = await run_all(
                pool,
                [
                    call(pool, workerfuncs.sleep, 1.0),
                    call(pool, workerfuncs.sleep, 60, time_limit=0.3),
                    call(pool, workerfuncs.add, 1, 2),
                ],
            )
            assert outcomes[0] == 1.0
            assert isinstance(outcomes[1], triopool.TimeLimitExceeded)
            assert outcomes[2] == 3


# 2. Soft time limit


async def test_soft_limit_interrupts_a_pure_python_loop() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1, soft_time_limit=0.3) as pool:
            pid = await pool.run_sync(workerfuncs.getpid)
            assert await pool.run_sync(workerfuncs.busy_loop, 60) == "cleaned up"
            # The worker survived and the limit is re-armed for each task.
            assert await pool.run_sync(workerfuncs.busy_loop, 60) == "cleaned up"
            assert await pool.run_sync(workerfuncs.getpid) == pid
            # A task within its limit is not disturbed.
            assert await pool.run_sync(workerfuncs.busy_loop, 0.01) == "finished"
            assert pool.statistics().workers_lost == 0


async def test_soft_limit_interrupts_time_sleep() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1) as pool:
            result = await pool.run_sync(
                limitfuncs.sleep_through_soft_limit, 60, soft_time_limit=0.3
            )
            assert result == "cleaned up"
            result = await pool.run_sync(limitfuncs.sleep_through_soft_limit, 0.01)
            assert result == "finished"


async def test_soft_limit_escaping_reaches_the_caller_and_the_worker_lives() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1) as pool:
            pid = await pool.run_sync(workerfuncs.getpid)
            with pytest.raises(triopool.SoftTimeLimitExceeded, match=r"0\.3 s"):
                await pool.run_sync(workerfuncs.sleep, 60, soft_time_limit=0.3)
            assert await pool.run_sync(workerfuncs.getpid) == pid
            # A later task without a soft limit is not hit by a stale timer.
            assert await pool.run_sync(workerfuncs.sleep, 0.6) == 0.6
            stats = pool.statistics()
            assert stats.workers_lost == 0
            assert stats.tasks_failed == 1


async def test_hard_limit_stops_a_task_that_ignores_its_soft_limit() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1, soft_time_limit=0.2, time_limit=0.8) as pool:
            with pytest.raises(triopool.TimeLimitExceeded):
                await pool.run_sync(limitfuncs.ignore_soft_limit, 60)
        # Counted once the worker is reaped, which the caller does not wait for.
        assert pool.statistics().workers_lost == 1


# Soft < hard


@pytest.mark.parametrize(
    ("soft", "hard"), [(1.0, 1.0), (2.0, 1.0), (5, 0.5)], ids=["equal", "above", "int"]
)
async def test_open_pool_rejects_a_soft_limit_not_below_the_hard_one(
    soft: float, hard: float
) -> None:
    with pytest.raises(ValueError, match="soft_time_limit must be < time_limit"):
        triopool.open_pool(1, soft_time_limit=soft, time_limit=hard)


async def test_run_sync_rejects_a_soft_limit_not_below_the_hard_one() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1, soft_time_limit=1.0, time_limit=2.0) as pool:
            with pytest.raises(ValueError, match=r"of run_sync\(\)"):
                await pool.run_sync(
                    workerfuncs.add, 1, 2, soft_time_limit=2.0, time_limit=1.0
                )
            # Merged with the pool's defaults: a call's hard limit below the
            # pool's soft limit is a contradiction too.
            with pytest.raises(ValueError, match=r"time_limit=0\.5"):
                await pool.run_sync(workerfuncs.add, 1, 2, time_limit=0.5)
            with pytest.raises(ValueError, match="soft_time_limit=3"):
                await pool.run_sync(workerfuncs.add, 1, 2, soft_time_limit=3)
            # Nothing was submitted, and lifting either limit is fine.
            assert pool.statistics().tasks_submitted == 0
            assert await pool.run_sync(workerfuncs.add, 1, 2, time_limit=None) == 3
            assert (
                await pool.run_sync(
                    workerfuncs.add, 1, 2, soft_time_limit=None, time_limit=0.5
                )
                == 3
            )


@pytest.mark.parametrize("name", ["time_limit", "soft_time_limit"])
@pytest.mark.parametrize("value", [0, -1.0, float("nan")])
async def test_limits_must_be_positive(name: str, value: float) -> None:
    options: dict[str, Any] = {name: value}
    with pytest.raises(ValueError, match=name):
        triopool.open_pool(1, **options)


# 3. Memory recycling


async def test_worker_over_its_memory_limit_delivers_then_retires() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1, max_memory_per_child=100 * MiB) as pool:
            small = await pool.run_sync(limitfuncs.resident_bytes)
            assert small < 100 * MiB
            # The result of the task that went over the limit is delivered.
            big_pid = await pool.run_sync(workerfuncs.allocate, 200)
            assert isinstance(big_pid, int)
            after = await pool.run_sync(workerfuncs.getpid)
            assert after != big_pid
        stats = pool.statistics()
        assert stats.workers_recycled == 1
        assert stats.workers_lost == 0
        assert stats.tasks_completed == 3


async def test_memory_limit_looks_at_current_not_peak_memory() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1, max_memory_per_child=100 * MiB) as pool:
            first = await pool.run_sync(limitfuncs.allocate_and_free, 200)
            second = await pool.run_sync(limitfuncs.allocate_and_free, 200)
            assert first == second
            assert pool.statistics().workers_recycled == 0


async def test_no_task_goes_to_a_worker_retiring_for_memory() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1, max_memory_per_child=100 * MiB) as pool:
            outcomes = await run_all(
                pool,
                [
                    call(pool, workerfuncs.allocate, 200),
                    call(pool, workerfuncs.getpid),
                    call(pool, workerfuncs.getpid),
                ],
            )
            assert all(isinstance(pid, int) for pid in outcomes), outcomes
            retired = outcomes[0]
            assert retired not in outcomes[1:]
        # Counted once the retired worker is reaped, which may come after
        # the new one answered: by the block's end, it has.
        assert pool.statistics().workers_recycled == 1


# 4. Retirement is clean


async def test_max_tasks_per_child_retires_cleanly_under_load() -> None:
    with trio.fail_after(60):
        async with triopool.open_pool(2, max_tasks_per_child=2) as pool:
            outcomes = await run_all(
                pool, [call(pool, workerfuncs.echo_with_pid, i) for i in range(20)]
            )
        for i, outcome in enumerate(outcomes):
            assert not isinstance(outcome, BaseException), outcome
            assert outcome[0] == i
        ran = Counter(pid for _, pid in outcomes)
        # No worker ran more than its quota: no task reached a worker that
        # had been told to retire.
        assert max(ran.values()) <= 2
        stats = pool.statistics()
        assert stats.tasks_completed == 20
        assert stats.tasks_failed == 0
        assert stats.workers_lost == 0
        # Every worker that ran its quota retired. One ran fewer only if the
        # queue ran dry first, at the end: at most one per slot (under load
        # the last two tasks can go to two fresh workers).
        assert stats.workers_recycled == sum(1 for n in ran.values() if n == 2)
        assert sum(1 for n in ran.values() if n < 2) <= 2


async def test_count_of_tasks_is_per_worker() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1, max_tasks_per_child=3) as pool:
            calls = [await pool.run_sync(workerfuncs.count_calls) for _ in range(7)]
        # Each worker's own counter runs 1, 2, 3 and the next worker starts
        # from scratch.
        assert [count for _, count in calls] == [1, 2, 3, 1, 2, 3, 1]
        assert len({pid for pid, _ in calls}) == 3
        # The third worker was stopped with the pool, not recycled.
        assert pool.statistics().workers_recycled == 2


# 8. Crash loops


@pytest.mark.parametrize(
    ("initializer", "message"),
    [
        (workerfuncs.initializer_fails, "initializer raised"),
        (workerfuncs.initializer_exits, "exit code 3"),
    ],
    ids=["initializer-raises", "worker-exits"],
)
async def test_crash_loop_breaks_the_pool_and_fails_every_queued_task(
    initializer: Any, message: str
) -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(
            2, initializer=initializer, max_start_failures=3
        ) as pool:
            outcomes = await run_all(
                pool, [call(pool, workerfuncs.add, i, i) for i in range(6)]
            )
            for outcome in outcomes:
                assert isinstance(outcome, triopool.BrokenPoolError), outcome
                assert isinstance(outcome.__cause__, triopool.WorkerStartError)
                assert message in str(outcome.__cause__)
            # Each caller got its own instance.
            assert len({id(outcome) for outcome in outcomes}) == 6
            # Later calls fail at once, with the same cause.
            with pytest.raises(triopool.BrokenPoolError) as info:
                await pool.run_sync(workerfuncs.add, 1, 2)
            assert isinstance(info.value.__cause__, triopool.WorkerStartError)
            stats = pool.statistics()
            assert stats.start_failures >= 3
            assert stats.tasks_failed == 6
            assert stats.tasks_completed == 0


async def test_start_timeouts_count_as_start_failures() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(
            1,
            initializer=workerfuncs.initializer_sleeps,
            initargs=(60,),
            start_timeout=0.5,
            max_start_failures=2,
        ) as pool:
            with pytest.raises(triopool.BrokenPoolError) as info:
                await pool.run_sync(workerfuncs.add, 1, 2)
            assert "did not report up within 0.5 s" in str(info.value.__cause__)
            assert pool.statistics().start_failures == 2


async def test_a_successful_start_resets_the_failure_count(tmp_path: Path) -> None:
    counter = tmp_path / "starts"
    with trio.fail_after(60):
        # Every other start fails and every worker retires after one task,
        # so failures keep coming but never two in a row.
        async with triopool.open_pool(
            1,
            initializer=limitfuncs.initializer_fails_every_other_start,
            initargs=(str(counter),),
            max_tasks_per_child=1,
            max_start_failures=2,
        ) as pool:
            results = [await pool.run_sync(workerfuncs.add, i, 1) for i in range(4)]
            assert results == [1, 2, 3, 4]
            stats = pool.statistics()
            assert stats.start_failures >= 4
            assert stats.workers_recycled >= 3
    assert int(counter.read_text()) >= 8

"""Retries, against real worker processes (see "Recovery" in the docs).

Each task records its runs in a folder of its own (``retryfuncs.run``): a
marker file per run, claimed with O_EXCL, holding the pid that ran it, and an
``flock`` held for the run, which the kernel drops when the run's process
exits however it exits, so a run that finds it taken proves two runs at once.
Every test bounds its run with ``trio.fail_after`` and is checked for leaked
fds and processes by the autouse fixture in ``conftest.py``.
"""

from __future__ import annotations

import functools
import logging
import traceback
from typing import TYPE_CHECKING, Any

import pytest
import trio

import triopool
from tests import retryfuncs, workerfuncs
from triopool._stats import identity_problems

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("start_method")


def folder(tmp_path: Path, name: str = "task") -> str:
    path = tmp_path / name
    path.mkdir()
    return str(path)


def retried_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "retried"]


async def test_a_task_that_crashes_its_worker_once_succeeds_with_one_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triopool")
    task = folder(tmp_path)
    with trio.fail_after(60):
        async with triopool.open_pool(2, retries=1) as pool:
            assert await pool.run_sync(retryfuncs.run, task, "co") == 2
    # After the block: a lost worker is counted once it is reaped.
    stats = pool.statistics()
    first, second = retryfuncs.runs(task)
    assert first != second  # the worker it crashed is gone
    assert (stats.tasks_retried, stats.workers_lost) == (1, 1)
    assert (stats.tasks_completed, stats.tasks_failed) == (1, 0)
    assert identity_problems(stats) == []
    [record] = retried_records(caplog)
    assert record.levelno == logging.INFO
    assert record.worker_pid == first  # type: ignore[attr-defined]
    assert record.reason == "BrokenWorkerError"  # type: ignore[attr-defined]
    assert record.runs == 1  # type: ignore[attr-defined]
    # The worker's death is logged as such, saying its task runs again.
    [lost] = [r for r in caplog.records if getattr(r, "event", None) == "lost"]
    assert (lost.worker_pid, lost.task) == (first, "retried")  # type: ignore[attr-defined]


async def workers_up(pool: triopool.Pool, count: int) -> None:
    """Return once ``count`` workers of ``pool`` are up (idle or busy).

    Polled: a worker goes idle after its "up" event, with no event of its own.
    """
    stats = pool.statistics()
    while stats.workers_idle + stats.workers_busy < count:
        await trio.sleep(0.05)
        stats = pool.statistics()


async def test_a_task_that_always_crashes_fails_after_retries_plus_one_deaths(
    tmp_path: Path,
) -> None:
    poison = folder(tmp_path)
    served_meanwhile = 0
    wrong: list[tuple[int, int]] = []
    poisoned = trio.Event()

    submitted = False

    async def other_work(pool: triopool.Pool) -> None:
        nonlocal served_meanwhile
        i = 0
        while not poisoned.is_set():
            answer = await pool.run_sync(workerfuncs.add, i, 1)
            if answer != i + 1:
                wrong.append((i, answer))
            if submitted and not poisoned.is_set():
                served_meanwhile += 1  # while the poison was run and re-run
            i += 1

    with trio.fail_after(90):
        async with triopool.open_pool(2) as pool, trio.open_nursery() as nursery:
            # Both workers up first: then one can serve the others while
            # the poison runs, however slowly workers start on this machine.
            await workers_up(pool, 2)
            nursery.start_soon(other_work, pool)
            submitted = True
            with pytest.raises(triopool.BrokenWorkerError) as info:
                await pool.run_sync(retryfuncs.run, poison, "c", retries=2)
            poisoned.set()
    stats = pool.statistics()
    # Exactly retries + 1 runs, each on a worker of its own, each its death.
    assert len(set(retryfuncs.runs(poison))) == 3
    assert info.value.runs == 3
    assert str(info.value).endswith("(3 runs tried)")
    assert info.value.exitcode == 3
    # The pool served the others all along.
    assert served_meanwhile > 0
    assert wrong == []
    assert (stats.tasks_retried, stats.workers_lost, stats.tasks_failed) == (2, 3, 1)
    assert stats.tasks_completed == stats.tasks_submitted - 1
    assert identity_problems(stats) == []


async def test_retried_runs_never_overlap(tmp_path: Path) -> None:
    crashing = [folder(tmp_path, f"crash{i}") for i in range(4)]
    hanging = folder(tmp_path, "hang")
    results: dict[str, int] = {}

    async def one(task: str, plan: str, **options: Any) -> None:
        results[task] = await pool.run_sync(retryfuncs.run, task, plan, **options)

    with trio.fail_after(120):
        async with triopool.open_pool(2, retries=2) as pool:
            async with trio.open_nursery() as nursery:
                for task in crashing:
                    nursery.start_soon(one, task, "cco")
                # Killed for its time limit while it holds its lock: its next
                # run must wait until it has exited.
                nursery.start_soon(
                    functools.partial(
                        one,
                        hanging,
                        "ho",
                        time_limit=2.0,
                        retry_on=(triopool.TimeLimitExceeded,),
                    )
                )
            stats = pool.statistics()
    assert results == {**dict.fromkeys(crashing, 3), hanging: 2}
    for task in [*crashing, hanging]:
        assert retryfuncs.overlaps(task) == []
    assert stats.tasks_retried == 4 * 2 + 1
    assert identity_problems(stats) == []


async def test_retry_on_time_limit(tmp_path: Path) -> None:
    task = folder(tmp_path)
    with trio.fail_after(60):
        async with triopool.open_pool(
            2, retries=1, retry_on=triopool.TimeLimitExceeded, time_limit=2.0
        ) as pool:
            assert await pool.run_sync(retryfuncs.run, task, "ho") == 2
            # Not named: a death is not retried under this retry_on.
            crashed = folder(tmp_path, "crashed")
            with pytest.raises(triopool.BrokenWorkerError) as info:
                await pool.run_sync(retryfuncs.run, crashed, "co")
            # Named, out of retries: the last limit error counts the runs.
            timed_out = folder(tmp_path, "timed_out")
            with pytest.raises(triopool.TimeLimitExceeded) as late:
                await pool.run_sync(retryfuncs.run, timed_out, "h")
    # Counted once its worker is reaped: after the block, for the last one.
    stats = pool.statistics()
    assert info.value.runs == 1
    assert len(retryfuncs.runs(crashed)) == 1
    assert (late.value.runs, late.value.time_limit) == (2, 2.0)
    assert str(late.value).endswith("(2 runs tried)")
    assert (stats.tasks_retried, stats.workers_lost) == (2, 4)
    assert identity_problems(stats) == []


async def test_retry_on_a_task_exception(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triopool")
    task = folder(tmp_path)
    with trio.fail_after(60):
        async with triopool.open_pool(2, retries=2, retry_on=(KeyError,)) as pool:
            assert await pool.run_sync(retryfuncs.run, task, "ko") == 2
            always = folder(tmp_path, "always")
            with pytest.raises(KeyError) as info:
                await pool.run_sync(retryfuncs.run, always, "k")
            stats = pool.statistics()
    # The task's own exception, as itself: its args, and a note on the runs.
    assert info.value.args == (3,)
    assert info.value.__notes__ == ["triopool: 3 runs tried"]
    assert "retryfuncs.py" in "".join(traceback.format_exception(info.value))
    assert (stats.tasks_retried, stats.workers_lost) == (3, 0)
    assert {r.reason for r in retried_records(caplog)} == {"KeyError"}  # type: ignore[attr-defined]
    assert identity_problems(stats) == []


async def test_a_task_exception_not_named_is_not_retried(tmp_path: Path) -> None:
    task = folder(tmp_path)
    with trio.fail_after(60):
        async with triopool.open_pool(
            2, retries=3, retry_on=(triopool.BrokenWorkerError, KeyError)
        ) as pool:
            with pytest.raises(ValueError, match=r"^1$") as info:
                await pool.run_sync(retryfuncs.run, task, "vo")
            stats = pool.statistics()
    assert info.value.args == (1,)
    assert not hasattr(info.value, "__notes__")
    assert len(retryfuncs.runs(task)) == 1
    assert stats.tasks_retried == 0
    # The default retry_on names no task exception at all.
    other = folder(tmp_path, "other")
    with trio.fail_after(60):
        async with triopool.open_pool(1, retries=3) as pool:
            with pytest.raises(KeyError):
                await pool.run_sync(retryfuncs.run, other, "ko")
    assert len(retryfuncs.runs(other)) == 1


async def test_cancelled_while_waiting_for_a_retry(tmp_path: Path) -> None:
    task = folder(tmp_path)
    starts = folder(tmp_path, "starts")
    with trio.fail_after(60):
        async with triopool.open_pool(
            1,
            retries=5,
            initializer=retryfuncs.slow_restarts,
            initargs=(starts, 2.0),
            start_timeout=30.0,
        ) as pool:
            with trio.CancelScope() as scope:

                async def cancel_once_retried() -> None:
                    # Polling: the test must not add an event to the pool.
                    while pool.statistics().tasks_retried < 1:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                    # Its only worker died; the next one takes 2 s to start.
                    assert pool.statistics().tasks_waiting == 1
                    scope.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_once_retried)
                    await pool.run_sync(retryfuncs.run, task, "c")
            assert scope.cancelled_caught
            stats = pool.statistics()
            assert (stats.tasks_cancelled, stats.tasks_waiting) == (1, 0)
            # The pool goes on, and the cancelled retry never runs.
            assert await pool.run_sync(workerfuncs.add, 1, 2) == 3
            final = pool.statistics()
    assert len(retryfuncs.runs(task)) == 1
    assert final.tasks_retried == 1
    assert identity_problems(final) == []


async def test_map_and_imap_with_retries(tmp_path: Path) -> None:
    root = str(tmp_path)
    items = [("a", "co"), ("b", "o"), ("c", "cco"), ("d", "o")]
    run_item = functools.partial(retryfuncs.item, root)
    with trio.fail_after(90):
        async with triopool.open_pool(2) as pool:
            results = await pool.map(run_item, items, chunksize=1, retries=2)
            assert results == [2, 1, 3, 1]
            again = [(f"{name}2", plan) for name, plan in items]
            async with pool.imap(run_item, again, chunksize=1, retries=2) as values:
                assert [value async for value in values] == [2, 1, 3, 1]
            # The pool's default (no retry) still holds for a call without.
            with pytest.raises(triopool.BrokenWorkerError):
                await pool.map(run_item, [("e", "co")], chunksize=1)
            stats = pool.statistics()
    assert stats.tasks_retried == 6
    assert identity_problems(stats) == []


async def test_per_call_options_override_the_pool_default(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with triopool.open_pool(2, retries=2) as pool:
            assert await pool.run_sync(retryfuncs.run, folder(tmp_path, "a"), "co") == 2
            once = folder(tmp_path, "once")
            with pytest.raises(triopool.BrokenWorkerError) as info:
                await pool.run_sync(retryfuncs.run, once, "co", retries=0)
            assert info.value.runs == 1
            named = folder(tmp_path, "named")
            value = await pool.run_sync(
                retryfuncs.run, named, "ko", retry_on=(KeyError,)
            )
            assert value == 2
            with pytest.raises(ValueError, match=r"^retries must be >= 0"):
                await pool.run_sync(workerfuncs.add, 1, 2, retries=-1)
            not_classes: Any = "KeyError"
            with pytest.raises(TypeError, match=r"^retry_on must be a tuple"):
                await pool.run_sync(workerfuncs.add, 1, 2, retry_on=not_classes)
            with pytest.raises(ValueError, match=r"^retry_on cannot name SystemExit"):
                await pool.map(workerfuncs.identity, [1], retry_on=(SystemExit,))
            with pytest.raises(TypeError, match=r"^retries must be an int"):
                pool.imap(workerfuncs.identity, [1], retries=1.5)  # type: ignore[call-overload]
            stats = pool.statistics()
    assert len(retryfuncs.runs(once)) == 1
    assert stats.tasks_retried == 2


@pytest.fixture
def default_options_restored() -> Iterator[None]:
    yield
    triopool.configure_default_pool()


@pytest.mark.usefixtures("default_options_restored")
async def test_the_default_pool_takes_retries_too(tmp_path: Path) -> None:
    triopool.configure_default_pool(workers=1, retries=1)
    with trio.fail_after(60):
        assert await triopool.run_sync(retryfuncs.run, folder(tmp_path), "co") == 2
        once = folder(tmp_path, "once")
        with pytest.raises(triopool.BrokenWorkerError):
            await triopool.run_sync(retryfuncs.run, once, "co", retries=0)
    assert len(retryfuncs.runs(once)) == 1


async def test_a_time_limit_retry_with_tasks_written_ahead(tmp_path: Path) -> None:
    # One worker: the quick tasks queued behind the hanging one are written
    # ahead to it; its kill puts them back, and the retry waits for its exit.
    task = folder(tmp_path)
    results: list[int] = []

    async def add(i: int) -> None:
        results.append(await pool.run_sync(workerfuncs.add, i, 1))

    with trio.fail_after(60):
        async with triopool.open_pool(
            1, retries=1, retry_on=triopool.TimeLimitExceeded
        ) as pool:
            assert await pool.run_sync(workerfuncs.add, 0, 1) == 1  # a short one
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(
                        pool.run_sync, retryfuncs.run, task, "ho", time_limit=2.0
                    )
                )
                while pool.statistics().tasks_running < 1:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                for i in range(1, 6):
                    nursery.start_soon(add, i)
    stats = pool.statistics()
    assert sorted(results) == [2, 3, 4, 5, 6]
    assert len(retryfuncs.runs(task)) == 2
    assert retryfuncs.overlaps(task) == []
    assert (stats.tasks_retried, stats.tasks_completed, stats.tasks_failed) == (1, 7, 0)
    assert identity_problems(stats) == []

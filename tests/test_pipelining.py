"""Pipelining: while callers queue up, a busy worker gets small jobs written
ahead of time (see ``Pool._send_ahead``). These tests put a job *ahead*
behind a running one on a pool of one worker and check every guarantee of
API.md for it: cancelled, it never runs and its caller returns promptly
without harm to the worker; if the worker dies or is killed for the running
job, it runs on the replacement; results stay right under recycling.

The pool sends ahead only behind jobs that took under 2 ms; the tests lift
that bound so that a slow machine cannot keep them from pipelining.
"""

from __future__ import annotations

import collections
import signal
import time
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

import triopool
from tests import hostile_tasks, workerfuncs
from triopool import _pool, _worker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("start_method")


class Spy:
    """Counts the jobs written ahead and the workers' SKIPPED verdicts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ahead = 0
        self.skipped = 0
        self.sent_ahead = trio.Event()
        monkeypatch.setattr(_pool, "_AHEAD_AFTER", 3600.0)
        write_whole = _worker.Worker.write_whole
        skipped = _pool.Pool._skipped

        def spy_write(worker: _worker.Worker, data: bytes) -> bool:
            written = write_whole(worker, data)
            if written and data[0] == 2:  # a TASK frame, not a SKIP
                self.ahead += 1
                self.sent_ahead.set()
            return written

        def spy_skipped(pool: _pool.Pool, link: Any, frame: Any) -> bool:
            self.skipped += 1
            return skipped(pool, link, frame)

        monkeypatch.setattr(_worker.Worker, "write_whole", spy_write)
        monkeypatch.setattr(_pool.Pool, "_skipped", spy_skipped)


async def job_ahead_of(
    pool: triopool.Pool,
    nursery: trio.Nursery,
    spy: Spy,
    running: Callable[[], Awaitable[Any]],
    ahead: Callable[[], Awaitable[Any]],
) -> tuple[dict[str, Any], trio.CancelScope, trio.CancelScope]:
    """Start ``running`` on the pool's one (idle, warm) worker with ``ahead``
    written behind it. Returns the outcomes (filled in as they come, values
    or exceptions, under "running" and "ahead") and each call's cancel scope.
    """
    outcomes: dict[str, Any] = {}
    scopes = {name: trio.CancelScope() for name in ("running", "ahead")}
    done = {name: trio.Event() for name in ("first", "running", "ahead")}

    async def call(name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        with scopes.get(name, trio.CancelScope()):
            try:
                outcomes[name] = await fn()
            except (Exception, trio.Cancelled) as exc:
                outcomes[name] = exc
                if isinstance(exc, trio.Cancelled):
                    outcomes[name + " returned at"] = trio.current_time()
                    done[name].set()
                    raise
        done[name].set()

    # The first call takes the idle worker for a while; the other two queue
    # behind it. When it answers, the worker's task sends "running" and, with
    # a caller still queued, writes "ahead" behind it.
    nursery.start_soon(call, "first", lambda: pool.run_sync(workerfuncs.sleep, 1.0))
    await trio.testing.wait_all_tasks_blocked()
    nursery.start_soon(call, "running", running)
    await trio.testing.wait_all_tasks_blocked()
    nursery.start_soon(call, "ahead", ahead)
    await spy.sent_ahead.wait()
    outcomes["events"] = done
    return outcomes, scopes["running"], scopes["ahead"]


@pytest.mark.parametrize("kill_on_cancel", [True, False])
async def test_a_cancelled_job_ahead_never_runs_and_returns_promptly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kill_on_cancel: bool
) -> None:
    spy = Spy(monkeypatch)
    marker = tmp_path / "ran"
    with trio.fail_after(30):
        async with triopool.open_pool(1) as pool:
            await pool.run_sync(workerfuncs.add, 0, 0)
            async with trio.open_nursery() as nursery:
                outcomes, _, ahead_scope = await job_ahead_of(
                    pool,
                    nursery,
                    spy,
                    lambda: pool.run_sync(workerfuncs.sleep, 5.0),
                    lambda: pool.run_sync(
                        workerfuncs.touch, str(marker), kill_on_cancel=kill_on_cancel
                    ),
                )
                cancelled_at = trio.current_time()
                ahead_scope.cancel()
                await outcomes["events"]["ahead"].wait()
                # The worker, 5 s into nothing, dropped it at once (SIGURG).
                assert outcomes["ahead returned at"] - cancelled_at < 2.5
                assert not outcomes["events"]["running"].is_set()
            assert isinstance(outcomes["ahead"], trio.Cancelled)
            assert outcomes["running"] == 5.0
            assert outcomes["first"] == 1.0
            stats = pool.statistics()
    assert not marker.exists()
    assert spy.ahead == 1
    assert spy.skipped == 1
    assert stats.workers_started == 1
    assert stats.workers_lost == 0
    assert stats.tasks_cancelled == 1
    assert stats.tasks_completed == 3


async def test_a_job_ahead_of_a_task_blocked_in_a_system_call_is_dropped_promptly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # SIGURG interrupts the system call (here waitpid, through subprocess):
    # the worker drops the job at once, and the call goes on where it was.
    spy = Spy(monkeypatch)
    marker = tmp_path / "ran"
    with trio.fail_after(30):
        async with triopool.open_pool(1) as pool:
            await pool.run_sync(workerfuncs.add, 0, 0)
            async with trio.open_nursery() as nursery:
                outcomes, _, ahead_scope = await job_ahead_of(
                    pool,
                    nursery,
                    spy,
                    lambda: pool.run_sync(hostile_tasks.block_in_waitpid, 5.0),
                    lambda: pool.run_sync(workerfuncs.touch, str(marker)),
                )
                # Let the running task get into its system call first.
                await trio.sleep(1.0)
                cancelled_at = trio.current_time()
                ahead_scope.cancel()
                await outcomes["events"]["ahead"].wait()
                assert outcomes["ahead returned at"] - cancelled_at < 2.5
                assert not outcomes["events"]["running"].is_set()
            assert isinstance(outcomes["ahead"], trio.Cancelled)
            # The interrupted waitpid went on: sleep's own exit status.
            assert outcomes["running"] == 0
            stats = pool.statistics()
    assert not marker.exists()
    assert spy.skipped == 1
    assert stats.workers_lost == 0


async def test_a_worker_deaf_to_sigurg_drops_the_job_before_its_next_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spy = Spy(monkeypatch)
    marker = tmp_path / "ran"
    with trio.fail_after(30):
        async with triopool.open_pool(1) as pool:
            await pool.run_sync(workerfuncs.add, 0, 0)
            async with trio.open_nursery() as nursery:
                outcomes, _, ahead_scope = await job_ahead_of(
                    pool,
                    nursery,
                    spy,
                    lambda: pool.run_sync(workerfuncs.sleep_deaf_to_skips, 1.0),
                    lambda: pool.run_sync(workerfuncs.touch, str(marker)),
                )
                ahead_scope.cancel()
            assert isinstance(outcomes["ahead"], trio.Cancelled)
            assert outcomes["running"] == 1.0
            # The worker serves on.
            assert await pool.run_sync(workerfuncs.add, 2, 3) == 5
            stats = pool.statistics()
    assert not marker.exists()
    assert spy.skipped == 1
    assert stats.workers_started == 1
    assert stats.tasks_cancelled == 1


@pytest.mark.parametrize("how", ["crash", "time limit", "cancelled"])
async def test_a_job_ahead_of_a_lost_worker_runs_on_its_replacement(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    spy = Spy(monkeypatch)
    running: Callable[[], Awaitable[Any]]
    if how == "crash":
        running = lambda: pool.run_sync(workerfuncs.sleep_then_die, 0.5)  # noqa: E731
    elif how == "time limit":
        running = lambda: pool.run_sync(  # noqa: E731
            workerfuncs.sleep, 30.0, time_limit=0.5
        )
    else:
        running = lambda: pool.run_sync(workerfuncs.sleep, 30.0)  # noqa: E731
    with trio.fail_after(30):
        async with triopool.open_pool(1) as pool:
            first_pid = await pool.run_sync(workerfuncs.getpid)
            async with trio.open_nursery() as nursery:
                outcomes, running_scope, _ = await job_ahead_of(
                    pool,
                    nursery,
                    spy,
                    running,
                    lambda: pool.run_sync(workerfuncs.echo_with_pid, "ahead"),
                )
                if how == "cancelled":
                    running_scope.cancel()
            stats = pool.statistics()
    expected = {
        "crash": triopool.BrokenWorkerError,
        "time limit": triopool.TimeLimitExceeded,
        "cancelled": trio.Cancelled,
    }[how]
    assert isinstance(outcomes["running"], expected)
    value, pid = outcomes["ahead"]
    assert value == "ahead"
    assert pid != first_pid  # it ran once, on the replacement
    assert spy.ahead >= 1
    assert stats.workers_lost == 1
    assert stats.workers_started == 2
    assert stats.tasks_completed == 3  # getpid, first, ahead


async def test_results_stay_right_when_many_callers_pipeline_under_recycling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = Spy(monkeypatch)
    results: dict[tuple[int, int], Any] = {}

    async def caller(i: int) -> None:
        for j in range(25):
            results[i, j] = await pool.run_sync(workerfuncs.echo_with_pid, (i, j))

    with trio.fail_after(60):
        async with (
            triopool.open_pool(2, max_tasks_per_child=7) as pool,
            trio.open_nursery() as nursery,
        ):
            for i in range(16):
                nursery.start_soon(caller, i)
    # Taken once every worker is gone: one that ran its 7th task may still be
    # retiring when the last result is in.
    stats = pool.statistics()
    assert {key: value for key, (value, _) in results.items()} == {
        (i, j): (i, j) for i in range(16) for j in range(25)
    }
    assert spy.ahead > 0
    assert stats.tasks_completed == 400
    assert stats.workers_lost == 0
    # No worker ran more than 7 tasks, and each that ran 7 was recycled.
    per_worker = collections.Counter(pid for _, pid in results.values())
    assert max(per_worker.values()) == 7
    assert sum(count == 7 for count in per_worker.values()) == stats.workers_recycled
    assert stats.workers_started == (
        stats.workers_alive
        + stats.workers_recycled
        + stats.workers_lost
        + stats.start_failures
        + stats.workers_stopped
    )


async def test_sigurg_between_tasks_and_after_skips_is_harmless() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1) as pool:
            pid = await pool.run_sync(workerfuncs.getpid)
            for _ in range(3):
                await trio.to_thread.run_sync(_signal, pid)
                assert await pool.run_sync(workerfuncs.add, 1, 1) == 2
            assert pool.statistics().workers_started == 1


def _signal(pid: int) -> None:
    import os

    os.kill(pid, signal.SIGURG)
    time.sleep(0.05)

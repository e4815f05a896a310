"""Fault injection: every stage of a worker's life fails on demand, and the
pool turns each failure into its documented outcome, keeps working and leaks
nothing (the autouse ``no_leaks`` fixture checks fds and processes).

Every test with a real pool runs once per start method (``start_method``
fixture): a forked worker reads the faults from the environment the fork
server inherited when the pool started it, and the parent stages are the
same code for both.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

import triopool
from tests import workerfuncs as wf
from tests.conftest import logged
from tests.storm import check_counters
from triopool import _faults, _hooks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

TIMEOUT = 60
# Long enough that a normal start makes it even on a loaded machine, so that
# only the injected stall counts as a start failure.
START_TIMEOUT = 3.0


def assert_counters_add_up(stats: triopool.PoolStatistics) -> None:
    problems = check_counters(stats, settled=False)
    assert not problems, problems


@pytest.fixture
def inject(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set the faults for the workers started next and for the parent."""
    with contextlib.ExitStack() as stack:

        def set_faults(spec: str) -> None:
            monkeypatch.setenv(_faults.ENV, spec)
            parent = _faults.parse(spec, _faults.PARENT_STAGES)
            stack.enter_context(_hooks.installed(faults=parent if parent else None))

        yield set_faults


# Per test rather than per module: the fault plan's own tests need no pool.
each_start_method = pytest.mark.usefixtures("start_method")

# How a worker that runs a fault's action ends, as the pool reports it.
KILLED = ("kill", -signal.SIGKILL, "signal SIGKILL")


def exit_action(code: int) -> tuple[str, int, str]:
    return (f"exit:{code}", code, f"exit code {code}")


# The fault plan itself.


def test_parse_reads_stages_actions_and_modifiers() -> None:
    plan = _faults.parse("before_up=sleep:1.5@once:/tmp/x, mid_result=exit:3@task:2")
    (sleep,) = plan.by_stage["before_up"]
    assert (sleep.action, sleep.argument, sleep.once_path) == ("sleep", 1.5, "/tmp/x")
    (exit_,) = plan.by_stage["mid_result"]
    assert (exit_.action, exit_.argument, exit_.task) == ("exit", 3.0, 2)
    assert not _faults.parse("before_up=kill", _faults.PARENT_STAGES)


@pytest.mark.parametrize(
    "spec",
    [
        "before_upp=kill",  # a typo must not silently disable a fault
        "before_up=explode",
        "before_up=sleep",
        "before_send=exit:1",
        "after_up=kill@twice",
    ],
)
def test_parse_rejects_malformed_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="TRIOPOOL_FAULTS"):
        _faults.parse(spec)


def test_once_fires_in_one_place_only(tmp_path: Path) -> None:
    plan = _faults.parse(f"after_up=kill@once:{tmp_path / 'once'}")
    assert plan.due("after_up") is not None
    assert plan.due("after_up") is None


def test_task_modifier_picks_the_nth_task() -> None:
    plan = _faults.parse("after_receive=kill@task:2")
    assert plan.due("after_receive", 1) is None
    assert plan.due("after_receive", 2) is not None


@each_start_method
async def test_faults_are_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_faults.ENV, raising=False)
    assert _faults.from_environment(_faults.WORKER_STAGES) is None
    assert _hooks.current().faults is None
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            modules = await pool.run_sync(wf.loaded_modules)
    # Without the variable a worker never even imports the fault module.
    assert "triopool._faults" not in modules
    assert "triopool._child" in modules


# Worker stages.


@each_start_method
@pytest.mark.parametrize(("action", "exitcode", "described"), [exit_action(3), KILLED])
async def test_death_before_up_is_a_start_failure_and_breaks_the_pool(
    inject: Callable[[str], None], action: str, exitcode: int, described: str
) -> None:
    inject(f"before_up={action}")
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, max_start_failures=2) as pool:
            with pytest.raises(triopool.BrokenPoolError) as info:
                await pool.run_sync(wf.add, 1, 2)
    assert isinstance(info.value.__cause__, triopool.WorkerStartError)
    assert f"exited ({described}) before reporting up" in str(info.value.__cause__)
    stats = pool.statistics()
    assert stats.start_failures == stats.workers_started == 2
    assert stats.tasks_failed == 1
    assert_counters_add_up(stats)


@each_start_method
async def test_hang_before_up_times_out_once_then_the_pool_works(
    inject: Callable[[str], None], tmp_path: Path
) -> None:
    inject(f"before_up=sleep:60@once:{tmp_path / 'once'}")
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, start_timeout=START_TIMEOUT) as pool:
            assert await pool.run_sync(wf.add, 1, 2) == 3
    stats = pool.statistics()
    assert stats.start_failures == 1
    assert stats.workers_started == 2
    assert stats.workers_lost == 0
    assert_counters_add_up(stats)


@each_start_method
@pytest.mark.parametrize("action", ["exit:4", "kill"])
async def test_death_after_up_loses_no_task(
    inject: Callable[[str], None], tmp_path: Path, action: str
) -> None:
    # The task is submitted at once, so it may be handed to the worker before
    # or after its death: either way it never started and must run elsewhere.
    inject(f"after_up={action}@once:{tmp_path / 'once'}")
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            nonce, _ = await pool.run_sync(wf.echo_with_pid, "n1")
    assert nonce == "n1"
    stats = pool.statistics()
    assert stats.workers_lost == 1
    assert (stats.tasks_completed, stats.tasks_failed) == (1, 0)
    assert_counters_add_up(stats)


async def cancel_once_running(pool: triopool.Pool) -> trio.CancelScope:
    """Run one task and cancel it once a slot has taken it; return its scope."""
    scope = trio.CancelScope()

    async def call() -> None:
        with scope:
            await pool.run_sync(wf.add, 1, 2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        # Polling: the pool offers no event for "a slot took the task".
        while pool.statistics().tasks_running == 0:  # noqa: ASYNC110
            await trio.sleep(0.01)
        await trio.sleep(0.1)
        scope.cancel()
    return scope


@each_start_method
@pytest.mark.parametrize(("action", "exitcode", "described"), [exit_action(4), KILLED])
async def test_death_with_the_task_unread_in_its_pipe_reruns_it(
    inject: Callable[[str], None],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    action: str,
    exitcode: int,
    described: str,
) -> None:
    # Up, then a stall during which the task is written into the pipe, then
    # death: the task never started (its bytes are still in the pipe), so it
    # must run on the replacement instead of failing.
    caplog.set_level(logging.WARNING, logger="triopool")
    once = tmp_path / "once"
    inject(f"after_up=sleep:2@once:{once}-1,after_up={action}@once:{once}-2")
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            await trio.sleep(0.2)  # let the worker report up first
            nonce, _ = await pool.run_sync(wf.echo_with_pid, "n3")
    assert nonce == "n3"
    stats = pool.statistics()
    assert (stats.tasks_completed, stats.tasks_failed, stats.workers_lost) == (1, 0, 1)
    assert_counters_add_up(stats)
    assert logged(caplog.records, event="lost", task="rerun", exitcode=exitcode)


@each_start_method
@pytest.mark.parametrize(("action", "exitcode", "described"), [exit_action(5), KILLED])
async def test_death_after_receiving_a_task_fails_that_task_only(
    inject: Callable[[str], None],
    tmp_path: Path,
    action: str,
    exitcode: int,
    described: str,
) -> None:
    inject(f"after_receive={action}@once:{tmp_path / 'once'}")
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.BrokenWorkerError) as info:
                await pool.run_sync(wf.add, 1, 2)
            # Received whole, so it counts as started: not re-run.
            assert await pool.run_sync(wf.add, 2, 2) == 4
    assert info.value.exitcode == exitcode
    assert described in str(info.value)
    stats = pool.statistics()
    assert (stats.tasks_completed, stats.tasks_failed) == (1, 1)
    assert stats.workers_lost == 1
    assert_counters_add_up(stats)


@each_start_method
async def test_stall_after_receiving_hits_the_time_limit(
    inject: Callable[[str], None],
) -> None:
    inject("after_receive=sleep:60@task:1")
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.TimeLimitExceeded):
                await pool.run_sync(wf.add, 1, 2, time_limit=1.0)
            # The replacement's first task stalls too: cancel it instead.
            scope = await cancel_once_running(pool)
            assert scope.cancelled_caught
    stats = pool.statistics()
    assert (stats.tasks_failed, stats.tasks_cancelled) == (1, 1)
    assert stats.workers_lost == 2
    assert_counters_add_up(stats)


@each_start_method
@pytest.mark.parametrize("size", [10, 1_000_000])
@pytest.mark.parametrize(
    ("action", "exitcode"), [("kill", -signal.SIGKILL), ("exit:7", 7)]
)
async def test_death_mid_result_write_is_a_broken_worker(
    inject: Callable[[str], None],
    tmp_path: Path,
    size: int,
    action: str,
    exitcode: int,
) -> None:
    inject(f"mid_result={action}@once:{tmp_path / 'once'}")
    data = b"x" * size
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.BrokenWorkerError) as info:
                await pool.run_sync(wf.identity, data)
            # The cut frame is dropped with its worker; the next one is whole.
            assert await pool.run_sync(wf.identity, data) == data
    assert info.value.exitcode == exitcode
    stats = pool.statistics()
    assert (stats.tasks_completed, stats.tasks_failed, stats.workers_lost) == (1, 1, 1)
    assert_counters_add_up(stats)


@each_start_method
async def test_stall_mid_result_write_still_delivers_the_result(
    inject: Callable[[str], None],
) -> None:
    stall = 0.3
    inject(f"mid_result=sleep:{stall}")
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            for size in (10, 200_000):
                started = time.monotonic()
                assert await pool.run_sync(wf.identity, b"y" * size) == b"y" * size
                # The stall happened (so the result was cut in two), and the
                # pool still put the halves back together. A sleep never
                # returns early; without the hook a call takes milliseconds.
                assert time.monotonic() - started >= stall
    stats = pool.statistics()
    assert (stats.tasks_completed, stats.workers_lost) == (2, 0)


# Parent stages.


@each_start_method
async def test_delay_before_the_handshake_counts_against_start_timeout(
    inject: Callable[[str], None], tmp_path: Path
) -> None:
    inject(f"before_config=sleep:60@once:{tmp_path / 'once'}")
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, start_timeout=START_TIMEOUT) as pool:
            assert await pool.run_sync(wf.add, 1, 2) == 3
    stats = pool.statistics()
    assert (stats.start_failures, stats.workers_started) == (1, 2)
    assert_counters_add_up(stats)


@each_start_method
async def test_worker_dead_before_the_handshake_is_a_start_failure(
    inject: Callable[[str], None],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its task pipe has no reader left: sending the configuration fails with
    # EPIPE, which must be a start failure, not an error escaping the pool.
    inject(f"before_config=kill@once:{tmp_path / 'once'}")
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            assert await pool.run_sync(wf.add, 1, 2) == 3
    stats = pool.statistics()
    assert (stats.start_failures, stats.workers_started) == (1, 2)
    assert_counters_add_up(stats)
    assert logged(
        caplog.records, event="start_failed", reason="exited", exitcode=-signal.SIGKILL
    )


@each_start_method
async def test_worker_dead_before_a_task_is_sent_reruns_it_elsewhere(
    inject: Callable[[str], None],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="triopool")
    inject(f"before_send=kill@once:{tmp_path / 'once'}")
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            nonce, _ = await pool.run_sync(wf.echo_with_pid, "n2")
    assert nonce == "n2"
    stats = pool.statistics()
    assert (stats.tasks_completed, stats.tasks_failed, stats.workers_lost) == (1, 0, 1)
    assert_counters_add_up(stats)
    assert logged(caplog.records, event="lost", task="rerun", exitcode=-signal.SIGKILL)


@each_start_method
async def test_stalled_send_is_cancellable_and_the_worker_replaced(
    inject: Callable[[str], None],
) -> None:
    inject("before_send=sleep:60@task:1")
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            scope = await cancel_once_running(pool)
            assert scope.cancelled_caught
    stats = pool.statistics()
    assert (stats.tasks_cancelled, stats.workers_lost) == (1, 1)
    assert_counters_add_up(stats)


@each_start_method
async def test_task_half_written_when_its_send_is_cancelled_discards_the_worker(
    inject: Callable[[str], None], tmp_path: Path
) -> None:
    # DESIGN.md, "Partial writes": the first worker stalls after UP and reads
    # nothing, so a task far bigger than a pipe's buffer blocks its send part
    # way. Cancelling the caller then leaves the stream to that worker out of
    # sync: the worker must be discarded, never sent another task.
    inject(f"after_up=sleep:60@once:{tmp_path / 'once'}")
    cut: list[tuple[int, int]] = []  # (bytes in the pipe, bytes in the frame)

    def trace(event: _hooks.Trace) -> None:
        if event.kind == "write cut":
            total = sum(memoryview(piece).nbytes for piece in event.pieces)
            cut.append((event.unread, total))

    data = b"z" * (2 << 20)
    with trio.fail_after(TIMEOUT), _hooks.installed(trace=trace):
        async with triopool.open_pool(1) as pool:
            async with trio.open_nursery() as nursery:

                async def call() -> None:
                    await pool.run_sync(wf.nbytes, data)

                nursery.start_soon(call)
                while pool.statistics().tasks_running < 1:  # noqa: ASYNC110 - polling the pool
                    await trio.sleep(0.01)
                # Until the send has filled the pipe and waits for room.
                await trio.testing.wait_all_tasks_blocked(0.2)
                assert pool.statistics().tasks_running == 1
                nursery.cancel_scope.cancel()
            # The caller returns at once; the slot kills and reaps meanwhile.
            while pool.statistics().workers_lost == 0:  # noqa: ASYNC110 - polling the pool
                await trio.sleep(0.01)
            # A fresh worker gets the next task whole, and answers it right.
            name, size = await pool.run_sync(wf.nbytes, data)
    assert (name, size) == ("bytes", len(data))
    # The send was cut part way: some of the frame was in the pipe, not all.
    assert len(cut) == 1, cut
    written, total = cut[0]
    assert 0 < written < total, cut
    stats = pool.statistics()
    assert (stats.tasks_completed, stats.tasks_cancelled) == (1, 1)
    assert stats.workers_lost == 1
    assert stats.workers_started == 2
    assert_counters_add_up(stats)

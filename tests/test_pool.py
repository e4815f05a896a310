"""The pool with real worker processes: open_pool, run_sync, errors, shutdown."""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import pickle
import signal
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, cast

import pytest
import trio
import trio.testing

import triopool
from tests import workerfuncs as wf
from tests.conftest import is_running, logged

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

# Generous bounds: the machine is small and shared; these catch hangs, not speed.
TIMEOUT = 60

# Every test runs once per start method (see conftest.start_method).
pytestmark = pytest.mark.usefixtures("start_method")


def test_public_objects_report_the_package_as_their_module() -> None:
    for name in triopool.__all__:
        obj = getattr(triopool, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == "triopool", name


async def test_run_sync_returns_the_result() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            assert await pool.run_sync(wf.add, 2, 3) == 5
            assert await pool.run_sync(functools.partial(int, base=2), "101") == 5
            assert await pool.run_sync(wf.getpid) != os.getpid()


async def test_many_concurrent_calls_each_get_their_own_result() -> None:
    results: dict[int, Any] = {}

    async def call(i: int) -> None:
        results[i] = await pool.run_sync(wf.echo_with_pid, i)

    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool, trio.open_nursery() as nursery:
            # Both workers up first: one alone may finish all 200 before the
            # other has started.
            while pool.statistics().workers_idle < 2:  # noqa: ASYNC110 - polling the pool
                await trio.sleep(0.01)
            for i in range(200):
                nursery.start_soon(call, i)
    assert {i: nonce for i, (nonce, _) in results.items()} == {i: i for i in range(200)}
    # Both workers, or only the first if the other was still starting.
    assert 1 <= len({pid for _, pid in results.values()}) <= 2
    stats = pool.statistics()
    assert stats.tasks_completed == stats.tasks_submitted == 200


async def test_exception_type_args_and_worker_traceback() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(ValueError, match="bad") as info:
                await pool.run_sync(wf.raise_value_error, "bad", 3)
    assert info.value.args == ("bad", 3)
    text = "".join(traceback.format_exception(info.value))
    assert "in raise_value_error" in text  # the worker's frame
    assert "workerfuncs.py" in text
    assert isinstance(info.value.__cause__, triopool.RemoteTraceback)


async def test_exception_that_cannot_be_pickled_becomes_remote_error() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.RemoteError) as info:
                await pool.run_sync(wf.raise_lock_error)
            # One that pickles but cannot be rebuilt in the parent.
            with pytest.raises(triopool.RemoteError) as info2:
                await pool.run_sync(wf.raise_unpicklable_error)
            assert await pool.run_sync(wf.add, 1, 1) == 2
    assert info.value.type_name == "tests.workerfuncs.LockError"
    assert info.value.message == "locked"
    assert "in raise_lock_error" in info.value.traceback_text
    assert info2.value.type_name == "tests.workerfuncs.UnpicklableError"
    assert "needs two args: 1 2" in str(info2.value)


async def test_unpicklable_arguments_raise_serialization_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # cloudpickle (in the test group) could send lambdas: test as if absent.
    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.SerializationError) as info:
                await pool.run_sync(wf.identity, lambda: None)
            assert isinstance(
                info.value.__cause__, pickle.PicklingError | AttributeError
            )
            with pytest.raises(triopool.SerializationError):
                await pool.run_sync(lambda: None)
            assert pool.statistics().tasks_submitted == 0


async def test_serialization_errors_in_the_worker_leave_it_working() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            pid = await pool.run_sync(wf.getpid)
            with pytest.raises(
                triopool.SerializationError, match="pickle the result"
            ) as info:
                await pool.run_sync(wf.return_unpicklable)
            # The pickling error itself is the cause, with the worker's
            # traceback as its own.
            assert isinstance(info.value.__cause__, TypeError)
            assert isinstance(info.value.__cause__.__cause__, triopool.RemoteTraceback)
            with pytest.raises(
                triopool.SerializationError, match="unpickle the task in the worker"
            ) as info:
                await pool.run_sync(wf.identity, wf.FailsToUnpickle())
            assert isinstance(info.value.__cause__, RuntimeError)
            with pytest.raises(
                triopool.SerializationError, match="unpickle the task's result"
            ):
                await pool.run_sync(wf.return_fails_to_unpickle)
            assert await pool.run_sync(wf.getpid) == pid
            assert pool.statistics().workers_lost == 0


async def test_large_exceptions_arrive_whole() -> None:
    # Exceptions whose pickles are large travel out of band, like large data.
    size = 200_000
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(ValueError, match=r"^x+$") as info:
                await pool.run_sync(wf.raise_large_error, size)
            assert info.value.args == ("x" * size,)
            with pytest.raises(triopool.BrokenWorkerError) as broken:
                await pool.run_sync(wf.exit_with_large_message, size)
            assert isinstance(broken.value.__cause__, SystemExit)
            assert broken.value.__cause__.code == "x" * size
            assert await pool.run_sync(wf.add, 2, 3) == 5
            stats = pool.statistics()
    assert (stats.tasks_failed, stats.tasks_completed, stats.workers_lost) == (2, 1, 1)


async def test_worker_breaking_the_protocol_is_lost_not_the_pool(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            with pytest.raises(triopool.BrokenWorkerError, match="protocol") as info:
                await pool.run_sync(wf.write_garbage_to_result_pipe)
            assert info.value.exitcode == -signal.SIGKILL
            # The pool goes on, on the other worker and on a replacement.
            results = [await pool.run_sync(wf.add, i, 1) for i in range(4)]
            stats = pool.statistics()
    assert results == [1, 2, 3, 4]
    assert stats.workers_lost == 1
    (lost,) = logged(caplog.records, event="lost", worker_pid=info.value.pid)
    assert (lost.broke_protocol, lost.task) == (True, "failed")  # type: ignore[attr-defined]


async def test_idle_worker_exits_at_eof_without_waiting_for_the_timeout() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2, shutdown_timeout=30) as pool:
            await pool.run_sync(wf.add, 1, 1)
            start = time.monotonic()
        # Closing the task pipes ends the workers; nothing waits for the 30 s.
        assert time.monotonic() - start < 10


async def test_async_function_is_rejected() -> None:
    async def coro() -> None:
        pass

    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(TypeError, match="regular function"):
                # The type checkers refuse it too: its result cannot be awaited.
                await pool.run_sync(coro)  # type: ignore[misc]
            with pytest.raises(TypeError, match="regular function"):
                await pool.run_sync(functools.partial(coro))  # type: ignore[misc]
            for fn in _async_callables():
                with pytest.raises(TypeError, match="regular function"):
                    await pool.run_sync(fn)
            # A sync function or builtin still runs.
            assert await pool.run_sync(len, "abc") == 3


class _Methods:
    async def method(self) -> None:
        pass


def _async_callables() -> list[Callable[[], Any]]:
    """Async callables that are not plain ``async def`` functions: an async
    generator function, a bound async method and (Python 3.12+) a function
    marked with inspect.markcoroutinefunction."""

    async def agen() -> AsyncIterator[None]:
        yield

    found: list[Callable[[], Any]] = [agen, _Methods().method]
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        found.append(mark(lambda: None))
    return found


@pytest.mark.parametrize(
    ("fn", "args", "exitcode"),
    [
        (wf.exit_with, (7,), 7),
        (wf.kill_self, (signal.SIGKILL,), -signal.SIGKILL),
        (wf.kill_self, (signal.SIGUSR1,), -signal.SIGUSR1),
        (wf.segfault, (), -signal.SIGSEGV),
    ],
    ids=["os._exit", "sigkill", "sigusr1", "segfault"],
)
async def test_crash_gives_broken_worker_error_with_exitcode(
    fn: Any, args: tuple[Any, ...], exitcode: int
) -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            pid = await pool.run_sync(wf.getpid)
            with pytest.raises(triopool.BrokenWorkerError) as info:
                await pool.run_sync(fn, *args)
            assert (info.value.pid, info.value.exitcode) == (pid, exitcode)
            # Replaced: the pool keeps working on a new process.
            assert await pool.run_sync(wf.getpid) != pid
            assert pool.statistics().workers_lost == 1


async def test_crash_leaves_tasks_on_other_workers_untouched() -> None:
    outcomes: dict[str, Any] = {}

    async def slow(i: int) -> None:
        outcomes[f"slow{i}"] = await pool.run_sync(wf.sleep, 1.0)

    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(3) as pool:
            await pool.run_sync(wf.add, 0, 0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow, 1)
                nursery.start_soon(slow, 2)
                await trio.sleep(0.2)
                with pytest.raises(triopool.BrokenWorkerError):
                    await pool.run_sync(wf.exit_with, 1)
    assert outcomes == {"slow1": 1.0, "slow2": 1.0}


async def test_system_exit_and_keyboard_interrupt_end_the_worker() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.BrokenWorkerError) as info:
                await pool.run_sync(wf.raise_system_exit, 3)
            assert info.value.exitcode == 3
            assert isinstance(info.value.__cause__, SystemExit)
            with pytest.raises(triopool.BrokenWorkerError) as info2:
                await pool.run_sync(wf.raise_keyboard_interrupt)
            assert isinstance(info2.value.__cause__, KeyboardInterrupt)
            assert info2.value.exitcode == 1
            # Any BaseException that is not an Exception, a custom one too.
            with pytest.raises(triopool.BrokenWorkerError) as info3:
                await pool.run_sync(wf.raise_base_exception, "custom")
            assert type(info3.value.__cause__) is wf.CustomBaseException
            assert info3.value.__cause__.args == ("custom",)
            assert await pool.run_sync(wf.add, 1, 2) == 3
            assert pool.statistics().workers_lost == 3


@pytest.mark.parametrize("kill_on_cancel", [True, False])
async def test_cancel_while_queued_never_runs(
    tmp_path: Any, kill_on_cancel: bool
) -> None:
    # kill_on_cancel=False shields only a task that started.
    marker = tmp_path / "ran"
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, kill_on_cancel=kill_on_cancel) as pool:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.run_sync, wf.sleep, 0.5)
                await trio.testing.wait_all_tasks_blocked()
                with trio.move_on_after(0.1) as scope:
                    await pool.run_sync(functools.partial(marker.write_text, "x"))
                assert scope.cancelled_caught
                assert pool.statistics().tasks_cancelled == 1
            # The worker was not killed and ran the next task, not the cancelled one.
            assert await pool.run_sync(wf.add, 1, 1) == 2
            assert pool.statistics().workers_lost == 0
    assert not marker.exists()
    assert not marker.exists()


async def test_cancel_while_running_kills_the_worker_promptly() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            pid = await pool.run_sync(wf.getpid)
            start = trio.current_time()
            with trio.move_on_after(0.5):
                await pool.run_sync(wf.sleep, 30)
            assert trio.current_time() - start < 5
            assert await pool.run_sync(wf.getpid) != pid
            stats = pool.statistics()
            assert (stats.workers_lost, stats.tasks_cancelled) == (1, 1)


async def test_cancel_while_running_without_kill_waits_for_the_result() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, kill_on_cancel=False) as pool:
            pid = await pool.run_sync(wf.getpid)
            result = None
            with trio.CancelScope() as scope:
                scope.deadline = trio.current_time() + 0.2
                result = await pool.run_sync(wf.sleep_then_pid, 1.0)
                # The cancellation takes effect at the next checkpoint.
                await trio.lowlevel.checkpoint()
                pytest.fail("not cancelled at the checkpoint")  # pragma: no cover
            assert scope.cancelled_caught
            assert result == pid
            assert pool.statistics().workers_lost == 0
            # The per-call option overrides the pool's.
            with trio.move_on_after(0.2):
                await pool.run_sync(wf.sleep, 30, kill_on_cancel=True)
            assert await pool.run_sync(wf.getpid) != pid


async def test_large_payloads_round_trip_and_survive_cancellation() -> None:
    data = os.urandom(1 << 20) * 64  # 64 MiB
    digest = hashlib.sha256(data).hexdigest()
    with trio.fail_after(TIMEOUT * 3):
        async with triopool.open_pool(2) as pool:
            assert await pool.run_sync(wf.nbytes, data) == ("bytes", len(data))
            for delay in (0, 0.001, 0.01, 0.03, 0.1):
                with trio.move_on_after(delay):
                    await pool.run_sync(wf.identity, data)
                echoed = await pool.run_sync(wf.identity, data)
                assert hashlib.sha256(echoed).hexdigest() == digest
            array = bytearray(data[: 1 << 22])
            assert await pool.run_sync(wf.identity, array) == array
            view = memoryview(array).cast("I")
            assert await pool.run_sync(wf.nbytes, view) == ("memoryview", len(array))


async def test_start_timeout_counts_as_start_failure() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(
            1,
            initializer=wf.initializer_sleeps,
            initargs=(30,),
            start_timeout=0.5,
            max_start_failures=2,
        ) as pool:
            with pytest.raises(triopool.BrokenPoolError) as info:
                await pool.run_sync(wf.add, 1, 1)
            stats = pool.statistics()
    cause = info.value.__cause__
    assert isinstance(cause, triopool.WorkerStartError)
    assert "did not report up within 0.5 s" in str(cause)
    assert stats.start_failures == 2


async def test_initializer_error_breaks_the_pool_with_its_cause() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(
            2, initializer=wf.initializer_fails, max_start_failures=3
        ) as pool:
            with pytest.raises(triopool.BrokenPoolError) as info:
                await pool.run_sync(wf.add, 1, 1)
            # Later calls fail at once, with the same cause.
            with pytest.raises(triopool.BrokenPoolError) as again:
                await pool.run_sync(wf.add, 1, 1)
    cause = info.value.__cause__
    assert isinstance(cause, triopool.WorkerStartError)
    assert "RuntimeError: initializer failed on purpose" in str(cause)
    assert isinstance(cause.__cause__, triopool.RemoteTraceback)
    assert "in initializer_fails" in str(cause.__cause__)
    assert again.value.__cause__ is cause
    assert pool.statistics().start_failures >= 3


async def test_worker_exiting_at_start_is_a_start_failure() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(
            1, initializer=wf.initializer_exits, max_start_failures=2
        ) as pool:
            with pytest.raises(triopool.BrokenPoolError) as info:
                await pool.run_sync(wf.add, 1, 1)
    assert "exited (exit code 3) before reporting up" in str(info.value.__cause__)


async def test_initializer_runs_once_per_worker_with_its_args() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(
            1, initializer=wf.initializer_records, initargs=("a", 1)
        ) as pool:
            assert await pool.run_sync(wf.initialized) == [("a", 1)]
            assert await pool.run_sync(wf.initialized) == [("a", 1)]


async def test_max_tasks_per_child_replaces_workers() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, max_tasks_per_child=2) as pool:
            calls = [await pool.run_sync(wf.count_calls) for _ in range(5)]
            stats = pool.statistics()
    pids = [pid for pid, _ in calls]
    assert [count for _, count in calls] == [1, 2, 1, 2, 1]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert stats.workers_recycled == 2
    assert stats.workers_started == 3
    assert stats.workers_lost == 0


async def test_dead_idle_worker_is_noticed_and_replaced() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            async with trio.open_nursery() as nursery:
                # Make both workers busy once so both are up.
                for _ in range(2):
                    nursery.start_soon(pool.run_sync, wf.sleep, 0.3)
            pids = {await pool.run_sync(wf.getpid) for _ in range(20)}
            victim = pids.pop()
            os.kill(victim, signal.SIGKILL)
            while pool.statistics().workers_lost < 1:  # noqa: ASYNC110 - polling the pool
                await trio.sleep(0.01)
            while pool.statistics().workers_idle < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
            seen = set()
            async with trio.open_nursery() as nursery:
                for _ in range(2):

                    async def record() -> None:
                        seen.add(await pool.run_sync(wf.sleep_then_pid, 0.3))

                    nursery.start_soon(record)
    assert victim not in seen
    assert len(seen) == 2


async def test_task_handed_to_a_worker_that_just_died_runs_on_another() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            victim = await pool.run_sync(wf.getpid)
            os.kill(victim, signal.SIGKILL)
            # Wait without a checkpoint, so that the pool cannot notice the
            # death before the next task is handed to the idle worker.
            while is_running(victim):
                time.sleep(0.001)  # noqa: ASYNC251 - no checkpoint on purpose
            assert await pool.run_sync(wf.getpid) not in (victim, os.getpid())
            stats = pool.statistics()
    assert (stats.workers_lost, stats.tasks_failed, stats.tasks_completed) == (1, 0, 2)


async def test_statistics_add_up() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2, max_tasks_per_child=3) as pool:
            for _ in range(7):
                await pool.run_sync(wf.add, 1, 1)
            with pytest.raises(ValueError, match="oops"):
                await pool.run_sync(wf.raise_value_error, "oops")
            with pytest.raises(triopool.BrokenWorkerError):
                await pool.run_sync(wf.exit_with, 1)
            stats = pool.statistics()
            assert stats.workers == 2
            assert stats.tasks_completed == 7
            assert stats.tasks_failed == 2
            assert stats.tasks_running == stats.tasks_waiting == 0
            assert stats.workers_busy == 0
    final = pool.statistics()
    assert final.workers_alive == 0
    assert final.workers_started == (
        final.workers_alive
        + final.workers_recycled
        + final.workers_lost
        + final.start_failures
        + final.workers_stopped
    )
    assert final.workers_recycled >= 2
    assert final.workers_lost == 1


async def test_use_after_the_block_raises_closed_resource_error() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            pass
        with pytest.raises(trio.ClosedResourceError):
            await pool.run_sync(wf.add, 1, 1)


async def test_body_exception_leaves_unwrapped_and_kills_workers() -> None:
    errors: list[BaseException] = []

    async def call_from_outside() -> None:
        try:
            await pool.run_sync(wf.sleep, 30)
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as outer:
            with pytest.raises(KeyError) as info:  # noqa: PT012 - the block is the subject
                async with triopool.open_pool(1) as pool:
                    pid = await pool.run_sync(wf.getpid)
                    outer.start_soon(call_from_outside)
                    await trio.sleep(0.3)
                    raise KeyError("body")
    assert not isinstance(info.value, BaseExceptionGroup)
    assert not os.path.exists(f"/proc/{pid}")  # noqa: ASYNC240
    # The task running in the pool ended with an error, not a hang.
    assert len(errors) == 1


async def test_plain_body_exception_is_itself() -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(ZeroDivisionError):
            async with triopool.open_pool(1):
                _ = 1 / 0


async def test_cancelling_the_block_kills_running_tasks_at_once() -> None:
    with trio.fail_after(TIMEOUT):
        start = trio.current_time()
        with trio.move_on_after(1.0):
            async with triopool.open_pool(2) as pool:
                await pool.run_sync(wf.sleep, 30)
        assert trio.current_time() - start < 10


async def test_normal_exit_lets_running_tasks_finish() -> None:
    results: list[float] = []

    async def outside(task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        results.append(await pool.run_sync(wf.sleep, 0.5))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            async with triopool.open_pool(1) as pool:
                await nursery.start(outside)
                await trio.sleep(0.1)
            # The block's exit waited for the task, then stopped the worker.
            assert results == [0.5]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"workers": 0}, ValueError, "workers must be >= 1, got 0"),
        ({"workers": 1.5}, TypeError, "workers must be an int"),
        ({"workers": True}, TypeError, "workers must be an int"),
        ({"start_method": "fork"}, ValueError, "start_method must be"),
        ({"start_timeout": -1}, ValueError, "start_timeout must be > 0, got -1"),
        ({"start_timeout": 0}, ValueError, "start_timeout must be > 0"),
        ({"shutdown_timeout": -0.5}, ValueError, "shutdown_timeout must be >= 0"),
        ({"time_limit": -2}, ValueError, "time_limit must be > 0"),
        ({"time_limit": "1"}, TypeError, "time_limit must be a number"),
        ({"soft_time_limit": float("nan")}, ValueError, "soft_time_limit must be"),
        (
            {"time_limit": 1, "soft_time_limit": 1},
            ValueError,
            "soft_time_limit must be < time_limit",
        ),
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child must be >= 1"),
        ({"max_memory_per_child": -5}, ValueError, "max_memory_per_child must be"),
        ({"max_start_failures": 0}, ValueError, "max_start_failures must be >= 1"),
        ({"kill_on_cancel": 1}, TypeError, "kill_on_cancel must be a bool"),
        ({"initializer": 5}, TypeError, "initializer must be callable"),
        ({"initializer": lambda: None}, TypeError, "must be picklable"),
        ({"forkserver_preload": [3]}, TypeError, "forkserver_preload must hold"),
        ({"forkserver_preload": "numpy"}, TypeError, "forkserver_preload must be a"),
        ({"initargs": 5}, TypeError, "initargs must be a sequence"),
    ],
)
def test_invalid_arguments_raise_at_once(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    # No trio.run, no nursery: the error comes from the call itself.
    with pytest.raises(error, match=message.replace("(", r"\(")):
        triopool.open_pool(**kwargs)


async def test_invalid_run_sync_options() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, time_limit=5) as pool:
            with pytest.raises(
                ValueError, match="soft_time_limit must be < time_limit"
            ):
                await pool.run_sync(wf.add, 1, 1, soft_time_limit=6)
            with pytest.raises(ValueError, match="time_limit must be > 0"):
                await pool.run_sync(wf.add, 1, 1, time_limit=0)
            with pytest.raises(TypeError, match="kill_on_cancel must be a bool"):
                await pool.run_sync(wf.add, 1, 1, kill_on_cancel=cast("bool", None))
            assert pool.statistics().tasks_submitted == 0


async def test_workers_default_to_usable_cpus() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool() as pool:
            assert pool.statistics().workers == len(os.sched_getaffinity(0))


async def test_lifecycle_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="triopool")
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, max_tasks_per_child=1) as pool:
            pid = await pool.run_sync(wf.getpid)
            with pytest.raises(triopool.BrokenWorkerError):
                await pool.run_sync(wf.exit_with, 9)
    for event in ("started", "up", "retired"):
        assert logged(caplog.records, event=event, worker_pid=pid), event
    assert logged(caplog.records, event="lost", exitcode=9, task="failed")


def test_public_errors_pickle() -> None:
    errors: list[BaseException] = [
        triopool.BrokenWorkerError("died", 12, -9),
        triopool.TimeLimitExceeded("slow", 1.5),
        triopool.RemoteError("mod.Err", "msg", "tb"),
        triopool.WorkerStartError("no"),
        triopool.BrokenPoolError("broken"),
        triopool.SerializationError("pickle"),
        triopool.SoftTimeLimitExceeded("soft"),
        triopool.RemoteTraceback("tb text"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert copy.args == error.args
        assert str(copy) == str(error)
    broken = pickle.loads(pickle.dumps(errors[0]))
    assert (broken.pid, broken.exitcode) == (12, -9)

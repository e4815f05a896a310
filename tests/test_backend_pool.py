"""The backend pool against an in-process fake engine (threads), so that its
semantics are tested without Ray or Dask installed."""

from __future__ import annotations

import concurrent.futures
import logging
import math
import subprocess
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any, cast

import pytest
import trio
import trio.lowlevel

import triopool
from triopool import Pool, PoolStatistics
from triopool._backend import (
    Capabilities,
    Outcome,
    check_engine_options,
    with_remote_traceback,
)
from triopool._cluster import ClusterScheduler
from triopool._ray import ray_capacity

from . import workerfuncs
from .storm import check_counters

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractAsyncContextManager

    from triopool._stats import PoolStatistics


class Killed(Exception):
    pass


class ThreadBackend:
    """A fake engine: calls run in a thread pool and report from its threads."""

    name = "ThreadBackend"

    def __init__(self, capacity: int = 2, *, kill_running: bool = True) -> None:
        self.threads = capacity
        self.capabilities = Capabilities(
            kill_running=kill_running, max_tasks_per_child=False
        )
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.callback_threads: set[str] = set()
        self.started = self.stopped = False
        self.cancelled: list[tuple[object, bool]] = []

    def start(self, max_tasks_per_child: int | None) -> int:
        self.executor = concurrent.futures.ThreadPoolExecutor(self.threads)
        self.started = True
        return self.threads

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            return fn(*args)
        finally:
            with self.lock:
                self.running -= 1

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        on_done: Callable[[Outcome], None],
    ) -> object:
        assert self.executor is not None
        future = self.executor.submit(self._run, fn, args)
        reported = threading.Event()

        def done(future: concurrent.futures.Future[Any]) -> None:
            if reported.is_set():
                return
            reported.set()
            self.callback_threads.add(threading.current_thread().name)
            try:
                on_done(Outcome(value=future.result()))
            except Exception as exc:
                text = "".join(traceback.format_exception(exc))
                on_done(Outcome(error=with_remote_traceback(exc, text)))

        future.add_done_callback(done)
        return (future, reported, on_done)

    def cancel(self, handle: object, *, kill: bool) -> None:
        self.cancelled.append((handle, kill))
        future, reported, on_done = cast(
            "tuple[concurrent.futures.Future[Any], threading.Event, Callable[[Outcome], None]]",
            handle,
        )
        if (future.cancel() or kill) and not reported.is_set():
            reported.set()
            on_done(Outcome(error=Killed()))

    def stop(self) -> None:
        assert self.executor is not None
        self.executor.shutdown(wait=True)
        self.stopped = True


class OnRequestBackend(ThreadBackend):
    """An engine that can kill only a call submitted as killable (Dask)."""

    def __init__(self) -> None:
        super().__init__()
        self.capabilities = Capabilities(
            kill_running=True, max_tasks_per_child=False, kill_on_request=True
        )
        self.killable: list[tuple[Any, bool]] = []

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        on_done: Callable[[Outcome], None],
        *,
        killable: bool = False,
    ) -> object:
        self.killable.append((args, killable))
        return super().submit(fn, args, on_done)


class CancelFails(ThreadBackend):
    """An engine whose cancel raises (a broken or disconnected client)."""

    def cancel(self, handle: object, *, kill: bool) -> None:
        self.cancelled.append((handle, kill))
        raise RuntimeError("the engine refused to cancel")


def crash() -> None:
    """What an engine reports when the worker running the call died."""
    raise triopool.BrokenWorkerError("the engine's worker died", None, None)


def assert_identity(stats: PoolStatistics) -> None:
    """The counter identities PoolStatistics documents."""
    problems = check_counters(stats, settled=False)
    assert not problems, problems
    assert stats.workers_idle + stats.workers_busy == stats.workers_alive, stats


def open_fake(
    backend: ThreadBackend, **options: Any
) -> AbstractAsyncContextManager[Pool]:
    return triopool.open_pool(backend=backend, **options)


async def test_round_trip_reports_from_engine_threads() -> None:
    backend = ThreadBackend()
    with trio.fail_after(10):
        async with open_fake(backend) as pool:
            assert type(pool) is Pool
            assert isinstance(pool._scheduler, ClusterScheduler)
            assert repr(pool).startswith("<triopool.Pool open backend=")
            assert await pool.run_sync(workerfuncs.add, 2, 3) == 5
            # A call that is not done at once reports from the engine's thread.
            assert await pool.run_sync(workerfuncs.sleep, 0.05) == 0.05
            stats = pool.statistics()
    assert stats.tasks_completed == 2
    assert stats.workers == 2
    assert backend.started
    assert backend.stopped
    assert backend.callback_threads
    assert backend.callback_threads - {threading.current_thread().name}


async def test_exception_type_args_and_traceback() -> None:
    with trio.fail_after(10):
        async with open_fake(ThreadBackend()) as pool:
            with pytest.raises(ValueError, match="boom") as info:
                await pool.run_sync(workerfuncs.raise_value_error, "boom", 3)
    assert type(info.value) is ValueError
    assert info.value.args == ("boom", 3)
    assert "raise_value_error" in "".join(traceback.format_exception(info.value))


async def test_in_flight_is_bounded_by_capacity() -> None:
    backend = ThreadBackend(capacity=2)
    results: list[float] = []
    busiest = 0
    with trio.fail_after(20):
        async with open_fake(backend) as pool:

            async def one(i: int) -> None:
                results.append(await pool.run_sync(workerfuncs.sleep, 0.01))

            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(one, i)
                await trio.lowlevel.checkpoint()
                while len(results) < 40:
                    busiest = max(busiest, pool.statistics().workers_busy)
                    await trio.sleep(0.002)
    assert len(results) == 40
    assert backend.max_running <= 2
    assert 1 <= busiest <= 2


async def test_cancel_queued_never_submits(tmp_path: Any) -> None:
    marker = tmp_path / "ran"
    with trio.fail_after(20):
        async with open_fake(ThreadBackend(capacity=1)) as pool:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.run_sync, workerfuncs.sleep, 0.5)
                await trio.sleep(0.1)
                with trio.move_on_after(0.1):
                    await pool.run_sync(workerfuncs.touch, str(marker))
            assert pool.statistics().tasks_cancelled == 1
            assert await pool.run_sync(workerfuncs.add, 1, 1) == 2
    assert not marker.exists()


async def test_kill_on_cancel_false_waits_for_the_outcome() -> None:
    with trio.fail_after(20):
        async with open_fake(
            ThreadBackend(kill_running=False), kill_on_cancel=False
        ) as pool:
            result = None
            with trio.CancelScope() as scope:
                scope.deadline = trio.current_time() + 0.1
                result = await pool.run_sync(workerfuncs.sleep, 0.4)
            assert result == 0.4


async def test_kill_on_cancel_cancels_in_the_engine() -> None:
    backend = ThreadBackend()
    with trio.fail_after(20):
        async with open_fake(backend) as pool:
            with trio.move_on_after(0.1) as scope:
                await pool.run_sync(workerfuncs.sleep, 0.5)
            assert scope.cancelled_caught
            assert [kill for _, kill in backend.cancelled] == [True]
            assert pool.statistics().tasks_cancelled == 1


async def test_time_limit_needs_and_uses_kill() -> None:
    backend = ThreadBackend()
    with trio.fail_after(20):
        async with open_fake(backend, time_limit=0.1) as pool:
            with pytest.raises(triopool.TimeLimitExceeded) as info:
                await pool.run_sync(workerfuncs.sleep, 0.5)
            assert info.value.time_limit == 0.1
            assert pool.statistics().tasks_failed == 1
            assert await pool.run_sync(workerfuncs.add, 1, 2, time_limit=None) == 3
    with pytest.raises(ValueError, match=r"ThreadBackend.*time_limit"):
        open_fake(ThreadBackend(kill_running=False), kill_on_cancel=False, time_limit=1)


async def test_body_error_cancels_in_flight_and_leaves_as_itself() -> None:
    backend = ThreadBackend()
    pool: Any = None

    async def body() -> None:
        nonlocal pool
        async with open_fake(backend) as pool, trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(pool.run_sync, workerfuncs.sleep, 0.3)
            await trio.sleep(0.05)
            raise KeyError("out")

    with trio.fail_after(20), pytest.raises(ExceptionGroup) as info:
        await body()
    # The body's own group, as itself: not wrapped in another one.
    assert len(info.value.exceptions) == 1
    assert type(info.value.exceptions[0]) is KeyError
    assert backend.stopped
    assert all(kill for _, kill in backend.cancelled)
    assert len(backend.cancelled) == 2  # the two submitted; the rest never were
    assert isinstance(pool._scheduler, ClusterScheduler)
    assert not pool._scheduler._in_engine


async def test_events_are_refused_and_insight_is_empty() -> None:
    """A cluster engine runs calls where the pool cannot watch: events() says
    so at once, and there are no per-worker numbers."""
    with trio.fail_after(10):
        async with open_fake(ThreadBackend()) as pool:
            with pytest.raises(NotImplementedError, match=r"poll statistics\(\)"):
                pool.events()
            assert pool.insight() == ()
            assert await pool.run_sync(workerfuncs.add, 1, 2) == 3


async def test_use_after_close() -> None:
    with trio.fail_after(10):
        async with open_fake(ThreadBackend()) as pool:
            pass
    with pytest.raises(trio.ClosedResourceError):
        await pool.run_sync(workerfuncs.add, 1, 2)
    with pytest.raises(trio.ClosedResourceError):
        await pool.map(workerfuncs.identity, [1])


async def test_async_function_is_refused() -> None:
    async def coro() -> None:
        pass

    with trio.fail_after(10):
        async with open_fake(ThreadBackend()) as pool:
            with pytest.raises(TypeError, match="async function"):
                await pool.run_sync(coro)  # type: ignore[misc]


async def test_map_in_order_with_bounded_in_flight() -> None:
    backend = ThreadBackend(capacity=2)
    with trio.fail_after(30):
        async with open_fake(backend) as pool:
            assert await pool.map(workerfuncs.identity, range(300)) == list(range(300))
            assert await pool.map(workerfuncs.identity, range(7), chunksize=3) == list(
                range(7)
            )
    assert backend.max_running <= 2


async def test_imap_unordered_async_iterable_and_back_pressure() -> None:
    produced = 0

    async def items() -> AsyncIterator[int]:
        nonlocal produced
        for i in range(20):
            produced += 1
            yield i

    with trio.fail_after(30):
        async with (
            open_fake(ThreadBackend(capacity=2)) as pool,
            pool.imap(
                workerfuncs.identity, items(), ordered=False, max_in_flight=3
            ) as results,
        ):
            first = await results.__anext__()
            await trio.sleep(0.2)
            # Only max_in_flight items run ahead of a consumer that waits.
            assert produced <= 1 + 3 + 1
            rest = [value async for value in results]
    assert sorted([first, *rest]) == list(range(20))


async def test_imap_first_error_propagates() -> None:
    with trio.fail_after(30):
        async with open_fake(ThreadBackend()) as pool:
            # Both items fail; whichever fails first leaves map, as itself.
            with pytest.raises(ValueError, match=r"^(bad|worse)$"):
                await pool.map(workerfuncs.raise_value_error, ["bad", "worse"])
            assert await pool.run_sync(workerfuncs.add, 1, 1) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"initializer": print}, "DaskBackend does not support initializer"),
        ({"soft_time_limit": 1.0}, "DaskBackend does not support soft_time_limit"),
        (
            {"max_tasks_per_child": 2},
            "DaskBackend cannot retire workers.*max_tasks_per_child",
        ),
    ],
)
def test_dask_refuses_options_it_cannot_honour(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        triopool.open_pool(backend=triopool.DaskBackend(), **options)
    # It kills a running task (in a child process of its worker), so these
    # are honoured (nothing starts before the block is entered).
    triopool.open_pool(backend=triopool.DaskBackend(), time_limit=5.0)
    triopool.open_pool(backend=triopool.DaskBackend(), kill_on_cancel=True)


def test_ray_refuses_local_only_options() -> None:
    with pytest.raises(ValueError, match="RayBackend does not support max_memory"):
        triopool.open_pool(backend=triopool.RayBackend(), max_memory_per_child=10**9)
    # Honoured ones are accepted (nothing starts before the block is entered).
    triopool.open_pool(
        backend=triopool.RayBackend(), max_tasks_per_child=3, time_limit=5.0
    )


async def test_per_call_options_the_backend_cannot_honour() -> None:
    with trio.fail_after(10):
        async with open_fake(
            ThreadBackend(kill_running=False), kill_on_cancel=False
        ) as pool:
            with pytest.raises(ValueError, match=r"ThreadBackend.*kill_on_cancel"):
                await pool.run_sync(workerfuncs.add, 1, 2, kill_on_cancel=True)
            with pytest.raises(ValueError, match="soft_time_limit"):
                await pool.run_sync(workerfuncs.add, 1, 2, soft_time_limit=1.0)


def test_import_triopool_does_not_import_the_engines() -> None:
    code = (
        "import sys, triopool\n"
        "triopool.RayBackend, triopool.DaskBackend\n"
        "bad = {'ray', 'dask', 'distributed'} & set(sys.modules)\n"
        "assert not bad, bad\n"
        "assert triopool.RayBackend.__module__ == 'triopool'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"shutdown_timeout": -1},
            ValueError,
            r"shutdown_timeout must be >= 0, got -1",
        ),
        ({"shutdown_timeout": math.nan}, ValueError, r"shutdown_timeout .* got nan"),
        ({"shutdown_timeout": "5"}, TypeError, r"shutdown_timeout .* got '5'"),
        ({"shutdown_timeout": None}, TypeError, r"shutdown_timeout .* got None"),
        ({"time_limit": -1.0}, ValueError, r"time_limit must be > 0, got -1.0"),
        ({"time_limit": math.nan}, ValueError, r"time_limit .* got nan"),
        ({"time_limit": "1"}, TypeError, r"time_limit .* got '1'"),
        ({"kill_on_cancel": 1}, TypeError, r"kill_on_cancel must be a bool, got 1"),
        ({"max_tasks_per_child": "3"}, TypeError, r"max_tasks_per_child .* got '3'"),
        ({"max_tasks_per_child": True}, TypeError, r"max_tasks_per_child .* got True"),
        ({"max_tasks_per_child": 0}, ValueError, r"max_tasks_per_child .* got 0"),
        # Options a backend refuses are still checked as the local pool does.
        ({"workers": "2"}, TypeError, r"workers must be an int, got '2'"),
        ({"start_timeout": -1}, ValueError, r"start_timeout must be > 0, got -1"),
        ({"soft_time_limit": "1"}, TypeError, r"soft_time_limit .* got '1'"),
        ({"retries": -1}, ValueError, r"retries must be >= 0 \(0: no retry\), got -1"),
        ({"retries": 0.5}, TypeError, r"retries must be an int >= 0, got 0\.5"),
        ({"retry_on": "KeyError"}, TypeError, r"retry_on must be a tuple of"),
        ({"retry_on": (SystemExit,)}, ValueError, r"retry_on cannot name SystemExit"),
    ],
)
def test_invalid_values_raise_at_once_like_the_local_pool(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    backend = ThreadBackend()
    with pytest.raises(error, match=message) as on_cluster:
        open_fake(backend, **options)
    assert type(on_cluster.value) is error
    assert not backend.started  # nothing started
    with pytest.raises(error) as local:
        triopool.open_pool(**{"workers": 1, **options})
    assert str(local.value) == str(on_cluster.value)


@pytest.mark.parametrize("backend", ["RayBackend", "DaskBackend"])
def test_wrong_types_are_type_errors_on_the_cluster_backends(backend: str) -> None:
    # A wrong type is a TypeError before the backend says what it supports.
    make = getattr(triopool, backend)
    with pytest.raises(TypeError, match="max_tasks_per_child must be an int, got '3'"):
        triopool.open_pool(
            backend=make(),
            max_tasks_per_child="3",  # type: ignore[arg-type]
            kill_on_cancel=False,
        )
    with pytest.raises(ValueError, match=r"shutdown_timeout must be >= 0, got -0\.5"):
        triopool.open_pool(backend=make(), shutdown_timeout=-0.5, kill_on_cancel=False)


async def test_the_engine_is_stopped_even_if_cancelling_fails() -> None:
    backend = CancelFails(capacity=2)
    answered: list[BaseException] = []

    async def caller(pool: Any) -> None:
        try:
            await pool.run_sync(workerfuncs.sleep, 0.3)
        except trio.ClosedResourceError as exc:
            answered.append(exc)

    async def leave_by_error(nursery: trio.Nursery) -> None:
        async with open_fake(backend) as pool:
            nursery.start_soon(caller, pool)
            nursery.start_soon(caller, pool)
            while pool.statistics().workers_busy < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
            raise KeyError("leave")

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            # Cancelling the two calls fails: that error leaves the block.
            with pytest.raises(RuntimeError, match="refused to cancel"):
                await leave_by_error(nursery)
    assert backend.stopped
    assert len(backend.cancelled) == 2
    assert len(answered) == 2  # no caller is left waiting


async def test_statistics_keep_the_identity_on_a_cluster() -> None:
    with trio.fail_after(20):
        async with open_fake(ThreadBackend(capacity=2), time_limit=5.0) as pool:
            stats = pool.statistics()
            assert (stats.workers, stats.workers_alive, stats.workers_idle) == (2, 2, 2)
            assert (stats.workers_started, stats.workers_lost) == (2, 0)
            assert_identity(stats)
            assert await pool.run_sync(workerfuncs.add, 1, 2) == 3
            # Killed on cancel, confirmed by the engine: one worker lost.
            with trio.move_on_after(0.1):
                await pool.run_sync(workerfuncs.sleep, 0.5)
            # Killed by the time limit: another.
            with pytest.raises(triopool.TimeLimitExceeded):
                await pool.run_sync(workerfuncs.sleep, 0.5, time_limit=0.1)
            # Reported dead by the engine: another.
            with pytest.raises(triopool.BrokenWorkerError):
                await pool.run_sync(crash)
            # An ordinary error loses no worker.
            with pytest.raises(ValueError, match="fine"):
                await pool.run_sync(workerfuncs.raise_value_error, "fine")
            while pool.statistics().workers_busy:  # noqa: ASYNC110
                await trio.sleep(0.01)
            stats = pool.statistics()
            assert stats.workers_lost == 3
            assert stats.workers_started == 2 + 3
            assert (stats.workers_alive, stats.workers_stopped) == (2, 0)
            assert_identity(stats)
        stats = pool.statistics()
    assert (stats.workers, stats.workers_alive, stats.workers_busy) == (2, 0, 0)
    assert (stats.workers_lost, stats.workers_stopped) == (3, 2)
    assert stats.tasks_completed == 1
    assert stats.tasks_failed == 3
    assert stats.tasks_cancelled == 1
    assert_identity(stats)


async def test_a_call_left_to_finish_loses_no_worker() -> None:
    # Cancelled with kill_on_cancel=False: the call ran on, its worker lives.
    backend = ThreadBackend(capacity=1, kill_running=False)
    with trio.fail_after(20):
        async with open_fake(backend, kill_on_cancel=False) as pool:
            with trio.CancelScope() as scope:
                scope.deadline = trio.current_time() + 0.05
                assert await pool.run_sync(workerfuncs.sleep, 0.2) == 0.2
            assert scope.cancel_called
    stats = pool.statistics()
    assert stats.workers_lost == 0
    assert stats.workers_started == stats.workers_stopped == 1
    assert_identity(stats)


class RetryingBackend(ThreadBackend):
    """A fake engine that retries on its own, as Ray and Dask do: it says what
    it can follow (check_retries) and records what each submit asked for."""

    name = "RetryingBackend"

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[int, tuple[type[BaseException], ...]]] = []

    def check_retries(
        self, retries: int, retry_on: tuple[type[BaseException], ...]
    ) -> None:
        if triopool.TimeLimitExceeded in retry_on:
            raise ValueError("RetryingBackend cannot retry a time limit")

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        on_done: Callable[[Outcome], None],
        *,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (),
    ) -> object:
        self.asked.append((retries, retry_on))
        return super().submit(fn, args, on_done)


async def test_retries_go_to_the_engines_own_retry() -> None:
    backend = RetryingBackend()
    with trio.fail_after(10):
        async with open_fake(backend, retries=2) as pool:
            assert await pool.run_sync(workerfuncs.add, 1, 2) == 3
            assert await pool.run_sync(workerfuncs.add, 1, 2, retries=0) == 3
            await pool.run_sync(workerfuncs.add, 1, 2, retries=1, retry_on=KeyError)
            with pytest.raises(ValueError, match="cannot retry a time limit"):
                await pool.run_sync(
                    workerfuncs.add, 1, 2, retry_on=(triopool.TimeLimitExceeded,)
                )
            assert await pool.map(workerfuncs.identity, [7], retries=1) == [7]
    # Passed only when there is something to retry.
    assert backend.asked == [
        (2, (triopool.BrokenWorkerError,)),
        (0, ()),
        (1, (KeyError,)),
        (1, (triopool.BrokenWorkerError,)),
    ]


async def test_an_engine_without_a_retry_refuses_retries() -> None:
    with pytest.raises(
        ValueError, match=r"^ThreadBackend cannot run a task again, so retries=1"
    ):
        open_fake(ThreadBackend(), retries=1)
    with trio.fail_after(10):
        async with open_fake(ThreadBackend()) as pool:
            with pytest.raises(ValueError, match="ThreadBackend cannot run a task"):
                await pool.run_sync(workerfuncs.add, 1, 2, retries=3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"retry_on": (KeyError,)},
            r"^RayBackend always retries a task whose worker died .* add it",
        ),
        (
            {"retry_on": (triopool.BrokenWorkerError, triopool.TimeLimitExceeded)},
            r"^RayBackend cannot retry a task killed for its time limit",
        ),
        (
            {"retry_on": (Exception,)},
            r"^RayBackend cannot retry a task killed for its time limit",
        ),
    ],
)
def test_ray_refuses_retries_it_cannot_follow(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        triopool.open_pool(backend=triopool.RayBackend(), retries=1, **options)


def test_ray_and_dask_take_the_retries_their_engine_has() -> None:
    # Nothing starts before the block is entered.
    triopool.open_pool(backend=triopool.RayBackend(), retries=2)
    triopool.open_pool(
        backend=triopool.RayBackend(),
        retries=2,
        retry_on=(triopool.BrokenWorkerError, KeyError),
    )
    triopool.open_pool(
        backend=triopool.DaskBackend(),
        kill_on_cancel=False,
        retries=2,
        retry_on=(Exception,),
    )
    with pytest.raises(
        ValueError, match=r"^DaskBackend retries a task that raised any exception"
    ):
        triopool.open_pool(
            backend=triopool.DaskBackend(), kill_on_cancel=False, retries=1
        )


class OptionsBackend(ThreadBackend):
    """An engine with options of its own: ``colour`` only."""

    def __init__(self) -> None:
        super().__init__()
        self.asked_options: list[dict[str, Any] | None] = []

    def check_engine_options(self, options: object) -> dict[str, Any]:
        return check_engine_options(
            self.name, "engine_options", options, frozenset({"colour"}), {}
        )

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        on_done: Callable[[Outcome], None],
        *,
        engine_options: dict[str, Any] | None = None,
    ) -> object:
        self.asked_options.append(engine_options)
        return super().submit(fn, args, on_done)


async def test_engine_options_reach_the_backend_checked() -> None:
    backend = OptionsBackend()
    with trio.fail_after(10):
        async with open_fake(backend) as pool:
            assert await pool.run_sync(workerfuncs.add, 1, 2) == 3
            assert await pool.run_sync(workerfuncs.add, 1, 2, engine_options={}) == 3
            options = {"colour": "blue"}
            assert (
                await pool.run_sync(workerfuncs.add, 1, 2, engine_options=options) == 3
            )
            with pytest.raises(ValueError, match=r"'size'; valid ones are colour$"):
                await pool.run_sync(workerfuncs.add, 1, 2, engine_options={"size": 1})
    # Passed only when there are some; a refused call never reaches it.
    assert backend.asked_options == [None, None, {"colour": "blue"}]


async def test_engine_options_need_a_backend_that_takes_them() -> None:
    with trio.fail_after(10):
        async with open_fake(ThreadBackend()) as pool:
            with pytest.raises(
                ValueError, match=r"^ThreadBackend takes no engine_options"
            ):
                await pool.run_sync(workerfuncs.add, 1, 2, engine_options={"a": 1})
            assert await pool.run_sync(workerfuncs.add, 1, 2, engine_options={}) == 3
        async with triopool.open_pool(1) as local:
            with pytest.raises(ValueError, match="needs a cluster backend"):
                await local.run_sync(workerfuncs.add, 1, 2, engine_options={"a": 1})
            assert await local.run_sync(workerfuncs.add, 1, 2, engine_options={}) == 3


@pytest.mark.parametrize(
    ("make", "valid", "reserved"),
    [
        (triopool.RayBackend, "num_gpus", "max_calls"),
        (triopool.DaskBackend, "priority", "retries"),
    ],
)
def test_ray_and_dask_name_the_task_options_they_take(
    make: Callable[..., Any], valid: str, reserved: str
) -> None:
    # Checked when the backend is made, before anything starts.
    assert make(task_options={valid: 1}).task_options == {valid: 1}
    with pytest.raises(
        ValueError, match=r"'colour', 'size'; valid ones are .*"
    ) as info:
        make(task_options={"size": 1, "colour": 2})
    assert valid in str(info.value)
    with pytest.raises(ValueError, match=f"cannot set {reserved} .use "):
        make(task_options={reserved: 1})
    with pytest.raises(TypeError, match="task_options must be a dict"):
        make(task_options=[valid])
    backend = make()
    assert backend.check_engine_options({valid: 2}) == {valid: 2}
    with pytest.raises(ValueError, match=r"^engine_options of .* 'size'"):
        backend.check_engine_options({"size": 1})


async def test_a_backend_that_kills_on_request_is_told_which_calls() -> None:
    backend = OnRequestBackend()
    with trio.fail_after(20):
        async with open_fake(backend) as pool:
            assert await pool.run_sync(workerfuncs.add, 1, 0) == 1
            assert await pool.run_sync(workerfuncs.add, 2, 0, kill_on_cancel=False) == 2
            three = await pool.run_sync(
                workerfuncs.add, 3, 0, kill_on_cancel=False, time_limit=5.0
            )
            assert three == 3
            # Cancelled while running: a kill only for a killable call.
            with trio.move_on_after(0.1):
                await pool.run_sync(workerfuncs.sleep, 0.4, time_limit=5.0)
            with pytest.raises(triopool.TimeLimitExceeded):
                await pool.run_sync(
                    workerfuncs.sleep, 0.5, kill_on_cancel=False, time_limit=0.1
                )
            # Both kills reach the pool through the run's token, as outcomes.
            while pool.statistics().workers_lost < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
            assert pool.statistics().workers_lost == 2
    assert backend.killable == [
        ((1, 0), True),  # kill_on_cancel=True, the pool's default
        ((2, 0), False),
        ((3, 0), True),  # a time limit
        ((0.4,), True),
        ((0.5,), True),
    ]
    assert [kill for _, kill in backend.cancelled] == [True, True]


async def test_a_call_not_submitted_as_killable_is_never_killed() -> None:
    backend = OnRequestBackend()
    pools: list[Any] = []
    errors: list[BaseException] = []

    async def caller(pool: Any) -> None:
        try:
            await pool.run_sync(workerfuncs.sleep, 0.5)
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    async def leave_by_error(nursery: trio.Nursery) -> None:
        async with open_fake(backend, kill_on_cancel=False) as pool:
            pools.append(pool)
            nursery.start_soon(caller, pool)
            while pool.statistics().tasks_running < 1:  # noqa: ASYNC110
                await trio.sleep(0.01)
            raise KeyError("leave")

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            with pytest.raises(KeyError):
                await leave_by_error(nursery)
    assert len(errors) == 1
    assert backend.killable == [((0.5,), False)]
    assert [kill for _, kill in backend.cancelled] == [False]
    assert pools[0].statistics().workers_lost == 0


class ScalingBackend(ThreadBackend):
    """A fake engine whose capacity the test changes (``slots``), as an
    autoscaling cluster's; its threads are more than enough for any."""

    capacity_interval = 0.01

    def __init__(self, slots: int, *, fails: bool = False) -> None:
        super().__init__(capacity=8)
        self.slots = slots
        self.fails = fails
        self.asked = 0

    def start(self, max_tasks_per_child: int | None) -> int:
        super().start(max_tasks_per_child)
        return self.slots

    def capacity(self) -> int:
        self.asked += 1
        if self.fails:
            raise ConnectionError("the engine did not answer")
        return self.slots


async def wait_until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110  (polling: nothing to wait on)
        await trio.sleep(0.005)


async def test_an_auto_chunked_map_uses_a_cluster_that_grows() -> None:
    # Slow items: chunks of one, two at a time per slot. Before the cluster
    # grows, at most two chunks are out (one running); after, the map's
    # window follows the new capacity and three run at once.
    backend = ScalingBackend(slots=1)
    with trio.fail_after(30):
        async with open_fake(backend) as pool:

            async def grow() -> None:
                await wait_until(lambda: backend.running == 1)
                assert backend.max_running == 1
                backend.slots = 3

            async with trio.open_nursery() as nursery:
                nursery.start_soon(grow)
                results = await pool.map(workerfuncs.sleep, [0.05] * 40)
            assert results == [0.05] * 40
    assert backend.max_running == 3


async def test_capacity_follows_the_engine() -> None:
    backend = ScalingBackend(slots=1)
    gate = threading.Event()
    done: list[bool] = []
    with trio.fail_after(20):
        async with open_fake(backend) as pool:
            await wait_until(lambda: backend.asked >= 2)  # asked while idle too

            async def one() -> None:
                done.append(await pool.run_sync(gate.wait, 20))

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(one)
                await wait_until(lambda: backend.running == 1)
                stats = pool.statistics()
                assert (stats.workers, stats.tasks_running, stats.tasks_waiting) == (
                    1,
                    1,
                    4,
                )
                backend.slots = 3  # the cluster grows
                await wait_until(lambda: backend.running == 3)
                stats = pool.statistics()
                assert (stats.workers, stats.workers_busy, stats.tasks_waiting) == (
                    3,
                    3,
                    2,
                )
                assert_identity(stats)
                backend.slots = 0  # shrinks: never below one slot
                await wait_until(lambda: pool.statistics().workers == 1)
                stats = pool.statistics()
                # The calls in the engine run on; none more is submitted.
                assert (stats.tasks_running, stats.workers_busy) == (3, 1)
                assert (stats.workers_started, stats.workers_stopped) == (3, 2)
                assert_identity(stats)
                gate.set()
            assert (pool.statistics().workers_alive, pool.statistics().workers) == (
                1,
                1,
            )
        stats = pool.statistics()
    assert done == [True] * 5
    assert backend.max_running == 3
    assert (stats.workers_started, stats.workers_alive, stats.workers_stopped) == (
        3,
        0,
        3,
    )
    assert_identity(stats)


async def test_explicit_workers_fix_the_capacity() -> None:
    backend = ScalingBackend(slots=1)
    gate = threading.Event()
    with trio.fail_after(20):
        async with (
            open_fake(backend, workers=3) as pool,
            trio.open_nursery() as nursery,
        ):
            for _ in range(4):
                nursery.start_soon(pool.run_sync, gate.wait, 20)
            await wait_until(lambda: backend.running == 3)
            await trio.sleep(0.05)
            assert pool.statistics().workers == 3
            assert pool.statistics().tasks_waiting == 1
            gate.set()
    assert backend.asked == 0
    assert backend.max_running == 3


async def test_capacity_the_engine_cannot_tell_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="triopool")
    backend = ScalingBackend(slots=2, fails=True)
    with trio.fail_after(20):
        async with open_fake(backend) as pool:
            assert await pool.run_sync(workerfuncs.sleep, 0.1) == 0.1
            assert pool.statistics().workers == 2
    assert backend.asked >= 1
    errors = [
        getattr(record, "error", None)
        for record in caplog.records
        if getattr(record, "event", None) == "capacity_unknown"
    ]
    assert errors
    assert all("ConnectionError" in str(error) for error in errors)


@pytest.mark.parametrize(
    ("task_options", "expected"),
    [
        ({}, 8),
        ({"num_cpus": 2}, 4),
        ({"num_cpus": 3}, 2),
        ({"num_cpus": 0.5}, 16),
        ({"num_cpus": 0.1}, 80),
        ({"num_gpus": 1}, 2),  # and one CPU each: the GPUs are fewer
        ({"num_cpus": 0, "num_gpus": 0.5}, 4),
        ({"memory": 4 * 2**30}, 2),
        ({"resources": {"model": 1}}, 3),
        ({"resources": {"absent": 1}}, 1),  # never below one
        ({"num_cpus": 0}, 8),  # asks for nothing: one per CPU
    ],
)
def test_ray_capacity_from_the_cluster_resources(
    task_options: dict[str, Any], expected: int
) -> None:
    resources = {"CPU": 8.0, "GPU": 2.0, "memory": 10 * 2**30, "model": 3.0}
    assert ray_capacity(resources, task_options) == expected


def test_ray_capacity_of_an_empty_cluster_is_one() -> None:
    assert ray_capacity({}, {}) == 1
    assert ray_capacity({"CPU": 0.0}, {"num_cpus": 0}) == 1

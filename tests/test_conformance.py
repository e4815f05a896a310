"""One contract, three engines: the local pool, Ray and Dask.

Each engine param is skipped when its extra is not installed, so the default
test session runs only ``local``; ``nox -s tests_distributed`` installs the
extras and runs them all, with the same expectations: killing a running task
(``kill_on_cancel``, ``time_limit``) included, which Dask does by running
such a task in a child process of its worker.

The Ray and Dask clusters are module-scoped fixtures, started by the test
module and stopped in its teardown (Dask as separate ``dask scheduler`` and
``dask worker`` processes, so that the workers Dask restarts after a crash are
not this process's children): the pools connect to them, which is also
the case "leaving the block never stops a cluster the pool did not start".
Being set up before the per-test leak check, their processes and fds are
not counted as a test's leaks.
"""

from __future__ import annotations

import functools
import os
import threading
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import trio

import triopool

from . import handlefuncs, retryfuncs, workerfuncs
from .clusters import dask_cluster

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

# Keep every engine on this machine and quiet.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

CAPACITY = 2


@dataclass
class Engine:
    name: str
    make_backend: Callable[..., Any] | None
    options: dict[str, Any] = field(default_factory=dict)
    # Whether the cluster the test started is still up (pools never stop it).
    cluster_up: Callable[[], bool] = lambda: True

    def open(
        self, *, task_options: dict[str, Any] | None = None, **options: Any
    ) -> AbstractAsyncContextManager[Any]:
        merged = {**self.options, **options}
        if self.make_backend is None:
            return triopool.open_pool(CAPACITY, **merged)
        backend = self.make_backend(task_options=task_options)
        return triopool.open_pool(backend=backend, **merged)


@pytest.fixture(
    scope="module",
    params=[
        "local",
        pytest.param("ray", marks=pytest.mark.engine_fds),
        pytest.param("dask", marks=pytest.mark.engine_fds),
    ],
)
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    if request.param == "local":
        yield Engine("local", None)
    elif request.param == "ray":
        ray = pytest.importorskip("ray")
        ray.init(
            address="local",
            num_cpus=CAPACITY,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
        )
        try:
            yield Engine(
                "ray",
                triopool.RayBackend,
                cluster_up=ray.is_initialized,
            )
        finally:
            ray.shutdown()
    else:
        pytest.importorskip("distributed")
        directory = tmp_path_factory.mktemp("dask")
        with dask_cluster(directory, nworkers=CAPACITY) as (address, processes):
            yield Engine(
                "dask",
                lambda **kw: triopool.DaskBackend(address, **kw),
                cluster_up=lambda: all(p.poll() is None for p in processes),
            )


async def wait_running(pool: Any, count: int) -> None:
    # Polling: the pool has no event for this, and the tests must not add one.
    while pool.statistics().tasks_running < count:  # noqa: ASYNC110
        await trio.sleep(0.01)


async def wait_lost(pool: Any, count: int) -> None:
    while pool.statistics().workers_lost < count:  # noqa: ASYNC110
        await trio.sleep(0.01)


async def test_round_trip(engine: Engine) -> None:
    with trio.fail_after(120):
        async with engine.open() as pool:
            assert await pool.run_sync(workerfuncs.add, 2, 3) == 5
            assert await pool.run_sync(workerfuncs.identity, {"a": [1]}) == {"a": [1]}
            stats = pool.statistics()
    assert stats.tasks_completed == 2
    assert stats.tasks_running == 0
    assert engine.cluster_up()


async def total(pool: triopool.Pool, items: list[int]) -> int:
    """Code written for a pool: it must take every engine's."""
    return sum(await pool.map(workerfuncs.identity, items))


async def test_every_engine_gives_a_triopool_pool(engine: Engine) -> None:
    with trio.fail_after(120):
        async with engine.open() as pool:
            assert isinstance(pool, triopool.Pool)
            assert type(pool) is triopool.Pool
            assert repr(pool).startswith("<triopool.Pool open ")
            assert await total(pool, [1, 2, 3]) == 6
    assert repr(pool).startswith("<triopool.Pool closed ")
    with pytest.raises(trio.ClosedResourceError):
        await pool.run_sync(workerfuncs.add, 1, 1)


async def test_exception_type_and_traceback(engine: Engine) -> None:
    with trio.fail_after(120):
        async with engine.open() as pool:
            with pytest.raises(ValueError, match="boom") as info:
                await pool.run_sync(workerfuncs.raise_value_error, "boom", 3)
            assert await pool.run_sync(workerfuncs.add, 1, 1) == 2
    assert type(info.value) is ValueError
    assert info.value.args == ("boom", 3)
    assert "raise_value_error" in "".join(traceback.format_exception(info.value))


async def test_cancel_queued(engine: Engine, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with trio.fail_after(120):
        async with engine.open() as pool:
            async with trio.open_nursery() as nursery:
                for _ in range(CAPACITY):
                    nursery.start_soon(pool.run_sync, workerfuncs.sleep, 1.0)
                await wait_running(pool, CAPACITY)
                with trio.move_on_after(0.2) as scope:
                    await pool.run_sync(workerfuncs.touch, str(marker))
                assert scope.cancelled_caught
            assert await pool.run_sync(workerfuncs.add, 1, 1) == 2
            assert pool.statistics().tasks_cancelled == 1
    assert not marker.exists()


async def test_cancel_running(engine: Engine) -> None:
    with trio.fail_after(120):
        async with engine.open() as pool:
            with trio.move_on_after(60) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pool.run_sync, workerfuncs.sleep, 60.0)
                    await wait_running(pool, 1)
                    await trio.sleep(0.5)
                    nursery.cancel_scope.cancel()
            # Cancelled promptly: the worker was killed, not waited for.
            assert not scope.cancelled_caught
            # And the kill did happen: the worker is counted lost once it is
            # gone (Ray, Dask: once the engine reports the task ended), long
            # before the task's 60 s are up.
            with trio.fail_after(20):
                await wait_lost(pool, 1)
            stats = pool.statistics()
            assert stats.tasks_cancelled == 1
            assert stats.workers_lost == 1
            assert await pool.run_sync(workerfuncs.add, 2, 2) == 4


async def test_cancel_running_without_kill_waits(engine: Engine) -> None:
    with trio.fail_after(120):
        async with engine.open(kill_on_cancel=False) as pool:
            results: list[float] = []

            async def call() -> None:
                results.append(await pool.run_sync(workerfuncs.sleep, 1.0))

            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(call)
                    await wait_running(pool, 1)
                    scope.cancel()
            # Shielded like trio.to_thread.run_sync: the outcome arrived.
            assert results == [1.0]
            assert pool.statistics().workers_lost == 0
            assert await pool.run_sync(workerfuncs.add, 2, 2) == 4


async def test_time_limit(engine: Engine) -> None:
    with trio.fail_after(120):
        async with engine.open(time_limit=30.0) as pool:
            with trio.fail_after(20):  # long before the task's 60 s
                with pytest.raises(triopool.TimeLimitExceeded) as info:
                    await pool.run_sync(workerfuncs.sleep, 60.0, time_limit=1.0)
            assert info.value.time_limit == 1.0
            # Under the pool's own limit, a task runs to its end.
            assert await pool.run_sync(workerfuncs.sleep, 0.1) == 0.1
            with trio.fail_after(20):
                await wait_lost(pool, 1)
            stats = pool.statistics()
            assert stats.tasks_failed == 1
            assert stats.tasks_completed == 1
            assert stats.workers_lost == 1


async def test_equal_calls_both_run(engine: Engine) -> None:
    # Two calls with equal arguments in flight together each run: an engine
    # that treats calls as pure (Dask's default) would run one and hand both
    # callers its result.
    results: list[bytes] = []

    async def call(pool: Any) -> None:
        results.append(await pool.run_sync(os.urandom, 16))

    with trio.fail_after(120):
        async with engine.open() as pool:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, pool)
                nursery.start_soon(call, pool)
            assert pool.statistics().tasks_completed == 2
    assert len(results) == 2
    assert results[0] != results[1]


async def test_worker_crash(engine: Engine) -> None:
    with trio.fail_after(120):
        async with engine.open() as pool:
            with pytest.raises(triopool.BrokenWorkerError):
                await pool.run_sync(workerfuncs.exit_with, 3)
            assert await pool.run_sync(workerfuncs.add, 2, 5) == 7


async def test_capacity_is_the_engine_s_unless_a_count_is_given(
    engine: Engine,
) -> None:
    """The pool runs as many calls at once as the engine has slots (local:
    its workers; Ray: CPUs over a task's ``num_cpus``; Dask: worker
    threads), and ``workers=N`` fixes the count on any engine. (A Dask
    cluster that grows while a map runs: test_cluster_processes.)"""
    with trio.fail_after(120):
        async with engine.open() as pool, trio.open_nursery() as nursery:
            assert pool.statistics().workers == CAPACITY
            for _ in range(CAPACITY + 1):
                nursery.start_soon(pool.run_sync, workerfuncs.sleep, 0.5)
            await wait_running(pool, CAPACITY)
            assert pool.statistics().tasks_waiting == 1
        if engine.name == "ray":
            async with engine.open(task_options={"num_cpus": 2}) as pool:
                assert pool.statistics().workers == CAPACITY // 2
        backend = engine.make_backend() if engine.make_backend else None
        async with (
            triopool.open_pool(1, backend=backend, **engine.options) as pool,
            trio.open_nursery() as nursery,
        ):
            assert pool.statistics().workers == 1
            for _ in range(2):
                nursery.start_soon(pool.run_sync, workerfuncs.sleep, 0.5)
            await wait_running(pool, 1)
            stats = pool.statistics()
            assert (stats.tasks_running, stats.tasks_waiting) == (1, 1)


async def test_map_1000_with_bounded_in_flight(engine: Engine) -> None:
    busiest = 0
    ahead = 0
    with trio.fail_after(300):
        async with engine.open() as pool:

            async def watch() -> None:
                nonlocal busiest, ahead
                while True:
                    stats = pool.statistics()
                    busiest = max(busiest, stats.tasks_running)
                    ahead = max(ahead, stats.tasks_running + stats.tasks_waiting)
                    await trio.sleep(0.005)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                results = await pool.map(workerfuncs.identity, range(1000))
                nursery.cancel_scope.cancel()
    assert results == list(range(1000))
    assert 1 <= busiest <= CAPACITY
    assert ahead <= 2 * CAPACITY  # max_in_flight's default


async def test_clean_exit_cancels_what_it_submitted(engine: Engine) -> None:
    seconds = 60.0
    errors: list[BaseException] = []
    pools: list[Any] = []

    async def caller(pool: Any) -> None:
        try:
            await pool.run_sync(workerfuncs.sleep, seconds)
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    async def leave_by_error(nursery: trio.Nursery) -> None:
        async with engine.open() as pool:
            pools.append(pool)
            for _ in range(CAPACITY + 1):
                nursery.start_soon(caller, pool)
            # Its slots, not CAPACITY: a Dask worker lost in an earlier test
            # may not be back yet, and then the pool opens with one fewer.
            await wait_running(pool, pool.statistics().workers)
            raise KeyError("leave")

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            with pytest.raises(KeyError, match="leave"):
                await leave_by_error(nursery)
    pool = pools[0]
    assert len(errors) == CAPACITY + 1
    stats = pool.statistics()
    assert stats.tasks_running == 0
    assert stats.tasks_waiting == 0
    assert not getattr(pool, "_in_engine", ())
    with pytest.raises(trio.ClosedResourceError):
        await pool.run_sync(workerfuncs.add, 1, 1)
    assert engine.cluster_up()


async def test_retries_on_the_engines_own_retry(engine: Engine, tmp_path: Path) -> None:
    task = tmp_path / "task"
    task.mkdir()
    if engine.name == "dask":
        # Dask's retries run again a task that raised, whatever it raised.
        options: dict[str, Any] = {"retry_on": (Exception,)}
        plan = retryfuncs.KEY_ERROR + retryfuncs.OK
    else:
        options = {}  # a worker death
        plan = retryfuncs.CRASH + retryfuncs.OK
    with trio.fail_after(120):
        async with engine.open(retries=1, **options) as pool:
            assert await pool.run_sync(retryfuncs.run, str(task), plan) == 2
    first, second = retryfuncs.runs(str(task))
    assert retryfuncs.overlaps(str(task)) == []
    if engine.name != "dask":
        assert first != second  # the worker it crashed is gone


async def test_engine_options_unknown_keys_are_named(engine: Engine) -> None:
    with trio.fail_after(120):
        async with engine.open() as pool:
            # An empty one is no option at all, on every engine.
            assert await pool.run_sync(workerfuncs.add, 1, 2, engine_options={}) == 3
            if engine.make_backend is None:
                with pytest.raises(ValueError, match=r"engine_options.*backend"):
                    await pool.run_sync(
                        workerfuncs.add, 1, 2, engine_options={"num_cpus": 1}
                    )
            else:
                valid = "num_gpus" if engine.name == "ray" else "priority"
                with pytest.raises(ValueError, match="'bogus'") as info:
                    await pool.run_sync(
                        workerfuncs.add, 1, 2, engine_options={"bogus": 1, valid: 1}
                    )
                assert valid in str(info.value)  # among the valid ones
                reserved = "max_retries" if engine.name == "ray" else "retries"
                with pytest.raises(ValueError, match=f"{reserved} .use the pool's"):
                    await pool.run_sync(
                        workerfuncs.add, 1, 2, engine_options={reserved: 2}
                    )
                with pytest.raises(TypeError, match="engine_options"):
                    await pool.run_sync(
                        workerfuncs.add, 1, 2, engine_options=[("bogus", 1)]
                    )
                # None of them reached the engine, and the pool goes on.
                assert await pool.run_sync(workerfuncs.add, 2, 2) == 4
                assert pool.statistics().tasks_submitted == 2
    if engine.make_backend is not None:
        with pytest.raises(ValueError, match=r"task_options.*'bogus'"):
            engine.make_backend(task_options={"bogus": 1})


async def test_engine_options_reach_the_engine(engine: Engine) -> None:
    if engine.make_backend is None:
        pytest.skip("the local pool has no engine options")
    with trio.fail_after(240):
        if engine.name == "ray":
            probe = "TRIOPOOL_ENGINE_OPTIONS_PROBE"

            def env(value: str) -> dict[str, Any]:
                return {"runtime_env": {"env_vars": {probe: value}}}

            async with engine.open(task_options=env("pool")) as pool:
                assert await pool.run_sync(workerfuncs.getenv, probe) == "pool"
                per_call = await pool.run_sync(
                    workerfuncs.getenv, probe, engine_options=env("call")
                )
                assert per_call == "call"
            return
        # Dask: pin tasks to one worker of two; without the pin, tasks that
        # overlap spread over both. (kill_on_cancel=False: the probe asks the
        # Dask worker, so it must run in the worker's thread, not a child.)
        async with engine.open(kill_on_cancel=False) as pool:
            pinned = await pool.run_sync(workerfuncs.dask_worker_address, 0.0)
        pin = {"workers": [pinned], "allow_other_workers": False}

        async def call(
            pool: Any, options: dict[str, Any] | None, addresses: list[str]
        ) -> None:
            addresses.append(
                await pool.run_sync(
                    workerfuncs.dask_worker_address, 0.3, engine_options=options
                )
            )

        for task_options, engine_options in ((pin, None), (None, pin)):
            addresses: list[str] = []
            async with (
                engine.open(task_options=task_options, kill_on_cancel=False) as pool,
                trio.open_nursery() as nursery,
            ):
                for _ in range(4):
                    nursery.start_soon(call, pool, engine_options, addresses)
            assert addresses == [pinned] * 4


# Data put once: pool.put() and handles (docs/serialization.rst).

BLOB = bytes(range(256)) * 1024  # 256 KiB: travels out of band


async def test_put_reaches_tasks_as_the_value(engine: Engine) -> None:
    with trio.fail_after(120):
        async with engine.open() as pool:
            handle = await pool.put(BLOB)
            assert isinstance(handle, triopool.Handle)
            small = await pool.put({"a": [1, 2]})
            assert await pool.run_sync(handlefuncs.type_name, handle) == "bytes"
            assert await pool.run_sync(workerfuncs.identity, handle) == BLOB
            assert await pool.run_sync(workerfuncs.identity, small) == {"a": [1, 2]}
            # In a partial, by position and by keyword.
            both = functools.partial(handlefuncs.sizes, handle, second=small)
            assert await pool.run_sync(both) == (len(BLOB), 1)
            # One handle, many tasks: in map's fn, and as map's items.
            plus = functools.partial(handlefuncs.size_plus, handle)
            assert await pool.map(plus, range(40)) == [len(BLOB) + i for i in range(40)]
            assert await pool.map(len, [handle, small] * 5) == [len(BLOB), 1] * 5
            async with pool.imap(plus, range(5), chunksize=2) as results:
                assert [value async for value in results] == [
                    len(BLOB) + i for i in range(5)
                ]


async def test_a_put_object_reaches_each_worker_once(engine: Engine) -> None:
    """Every task a worker process runs with the handle gets the same object:
    it was fetched (read, unpickled) once in that process, then kept."""
    with trio.fail_after(120):
        async with engine.open() as pool:
            handle = await pool.put(BLOB)
            seen: list[tuple[int, int, int]] = []

            async def use() -> None:
                seen.append(await pool.run_sync(handlefuncs.where_is, handle))

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(use)
    assert len(seen) == 20
    ids: dict[int, set[int]] = {}
    for pid, ident, size in seen:
        assert size == len(BLOB)
        ids.setdefault(pid, set()).add(ident)
    # where_is keeps each object alive: a second fetch could not reuse an id.
    assert all(len(idents) == 1 for idents in ids.values()), ids


async def test_put_release_and_bad_handles(engine: Engine) -> None:
    with trio.fail_after(120):
        async with engine.open() as pool:
            handle = await pool.put(BLOB)
            assert await pool.run_sync(len, handle) == len(BLOB)
            pool.release(handle)
            with pytest.raises(ValueError, match="not a live handle") as info:
                pool.release(handle)
            assert handle.key in str(info.value)
            with pytest.raises(TypeError, match=r"triopool\.Handle"):
                pool.release(BLOB)
            with pytest.raises(triopool.SerializationError):
                await pool.put(threading.Lock())
            kept = await pool.put(b"kept")
        with pytest.raises(trio.ClosedResourceError):
            await pool.put(BLOB)
        with pytest.raises(trio.ClosedResourceError):
            pool.release(kept)


async def test_engine_references_resolve(engine: Engine) -> None:
    """A reference the user made with the engine itself (a Ray ObjectRef, a
    Dask Future) is resolved where a handle would be."""
    if engine.name == "local":
        pytest.skip("the local pool has no engine references")
    with trio.fail_after(120):
        backend = engine.make_backend() if engine.make_backend else None
        async with triopool.open_pool(backend=backend, **engine.options) as pool:
            if engine.name == "ray":
                import ray

                ref = await trio.to_thread.run_sync(ray.put, BLOB)
            else:
                assert isinstance(backend, triopool.DaskBackend)
                [ref] = await trio.to_thread.run_sync(
                    functools.partial(backend.client.scatter, [BLOB], hash=False)
                )
            assert await pool.run_sync(handlefuncs.type_name, ref) == "bytes"
            assert await pool.run_sync(len, ref) == len(BLOB)
            plus = functools.partial(handlefuncs.size_plus, ref)
            assert await pool.map(plus, range(4)) == [len(BLOB) + i for i in range(4)]
            assert await pool.map(len, [ref, ref]) == [len(BLOB)] * 2


async def test_a_handle_of_another_pool_is_refused(engine: Engine) -> None:
    if engine.name == "local":
        pytest.skip("see test_put.py: the local pool's workers refuse it")
    with trio.fail_after(120):
        async with engine.open() as pool:
            foreign: triopool.Handle[bytes] = triopool.Handle(
                "triopool-elsewhere-1", None, object()
            )
            with pytest.raises(ValueError, match="not a live handle"):
                await pool.run_sync(len, foreign)
            with pytest.raises(ValueError, match="not a live handle"):
                pool.release(foreign)


async def test_killed_child_leaves_no_process_and_the_worker_serves(
    engine: Engine, tmp_path: Path
) -> None:
    if engine.name != "dask":
        pytest.skip("Dask's killable tasks run in a child process of its worker")
    pids = tmp_path / "pids"
    with trio.fail_after(120):
        async with engine.open() as pool:
            # In the worker's thread: which worker, and its pid.
            address = await pool.run_sync(
                workerfuncs.dask_worker_address, 0.0, kill_on_cancel=False
            )
            pin = {"workers": [address], "allow_other_workers": False}
            worker_pid = await pool.run_sync(
                workerfuncs.getpid, kill_on_cancel=False, engine_options=pin
            )
            with trio.move_on_after(60) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        functools.partial(
                            pool.run_sync,
                            workerfuncs.note_pids_then_sleep,
                            str(pids),
                            60.0,
                            engine_options=pin,
                        )
                    )
                    while not pids.exists() or not pids.read_text():  # noqa: ASYNC110
                        await trio.sleep(0.01)
                    nursery.cancel_scope.cancel()
            assert not scope.cancelled_caught
            child, parent = map(int, pids.read_text().split())
            assert parent == worker_pid  # a child of the Dask worker
            assert child != worker_pid
            # Killed and reaped (a zombie keeps its /proc entry): no orphan.
            while await trio.Path(f"/proc/{child}").exists():  # noqa: ASYNC110
                await trio.sleep(0.01)
            # The same worker process goes on serving, in its thread and in
            # a child alike.
            assert (
                await pool.run_sync(
                    workerfuncs.getpid, kill_on_cancel=False, engine_options=pin
                )
                == worker_pid
            )
            assert await pool.run_sync(workerfuncs.add, 1, 2, engine_options=pin) == 3

"""Backends against engines the pool does not own.

A Dask scheduler and worker started as separate processes (on 127.0.0.1),
used by two pools in turn and stopped by their pids: leaving a pool block
must leave that cluster running. Also each backend with a cluster it starts
and owns, which must be gone when the block exits.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

import triopool

from . import capacityfuncs, workerfuncs
from .clusters import dask_cluster, dask_worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture
def dask_processes(
    tmp_path: Path,
) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    pytest.importorskip("distributed")
    with dask_cluster(tmp_path, nworkers=1, nthreads=2) as cluster:
        yield cluster


@pytest.mark.engine_fds
async def test_dask_cluster_of_separate_processes_outlives_the_pools(
    dask_processes: tuple[str, list[subprocess.Popen[bytes]]],
) -> None:
    address, processes = dask_processes
    with trio.fail_after(120):
        for n in range(2):
            backend = triopool.DaskBackend(address)
            async with triopool.open_pool(
                backend=backend, kill_on_cancel=False
            ) as pool:
                assert await pool.run_sync(workerfuncs.add, n, 10) == n + 10
                assert pool.statistics().workers == 2  # the worker's two threads
            assert all(process.poll() is None for process in processes)


async def wait_until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110  (polling: nothing to wait on)
        await trio.sleep(0.05)


def retire(address: str, name: str) -> None:
    """Retire the worker called ``name`` as an adaptive cluster scales down:
    the scheduler moves its tasks elsewhere and the worker exits."""
    import distributed  # pyright: ignore[reportMissingImports]  # an optional extra

    with distributed.Client(address, set_as_default=False) as client:
        workers = client.scheduler_info()["workers"]
        [worker] = [key for key, info in workers.items() if info["name"] == name]
        client.retire_workers([worker])


@pytest.mark.engine_fds
async def test_dask_capacity_follows_workers_that_join_and_leave(
    tmp_path: Path,
) -> None:
    """A cluster of one worker thread grows by a worker while a map runs:
    the pool submits to both (two tasks counted running at once, which a
    capacity frozen at one never allows); the worker then retires and the map
    still completes, with the capacity back at one."""
    pytest.importorskip("distributed")
    counter = tmp_path / "counter"
    counter.mkdir()
    task = functools.partial(capacityfuncs.overlapping, str(counter), 0.2)
    produced = 0
    enough = trio.Event()
    results: list[int] = []

    async def items() -> AsyncIterator[int]:
        nonlocal produced
        while not enough.is_set():
            produced += 1
            yield produced

    with (
        dask_cluster(tmp_path, nworkers=1) as (address, _),
        contextlib.ExitStack() as stack,
        trio.fail_after(240),
    ):
        backend = triopool.DaskBackend(address)
        backend.capacity_interval = 0.1
        async with triopool.open_pool(backend=backend, kill_on_cancel=False) as pool:
            assert pool.statistics().workers == 1

            async def consume() -> None:
                async with pool.imap(
                    task, items(), ordered=False, chunksize=1, max_in_flight=4
                ) as stream:
                    async for result in stream:
                        results.append(result)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                await wait_until(lambda: bool(results))
                assert capacityfuncs.most_at_once(str(counter)) == 1
                await trio.to_thread.run_sync(
                    stack.enter_context, dask_worker(address, tmp_path, name="extra")
                )
                await wait_until(lambda: pool.statistics().workers == 2)
                await wait_until(lambda: capacityfuncs.most_at_once(str(counter)) == 2)
                await trio.to_thread.run_sync(retire, address, "extra")
                await wait_until(lambda: pool.statistics().workers == 1)
                finished = len(results)
                await wait_until(lambda: len(results) >= finished + 3)
                enough.set()
            stats = pool.statistics()
    assert sorted(results) == list(range(1, produced + 1))
    assert capacityfuncs.most_at_once(str(counter)) == 2
    assert stats.workers == 1
    assert stats.workers_started == 2  # one at the start, one joined
    assert stats.workers_stopped == 1  # the one that retired
    assert stats.tasks_completed == produced


@pytest.fixture(scope="module")
def resource_tracker() -> None:
    """Start multiprocessing's resource tracker, as Dask's LocalCluster does:
    a process-wide helper that lives until the interpreter exits, so it must
    exist before the leak check's baseline is taken."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


@pytest.mark.engine_fds
@pytest.mark.usefixtures("resource_tracker")
async def test_dask_owned_local_cluster_is_closed() -> None:
    pytest.importorskip("distributed")
    backend = triopool.DaskBackend(n_workers=1)
    with trio.fail_after(120):
        async with triopool.open_pool(backend=backend, kill_on_cancel=False) as pool:
            assert await pool.run_sync(workerfuncs.add, 1, 2) == 3
            with pytest.raises(triopool.BrokenWorkerError):
                await pool.run_sync(workerfuncs.exit_with, 3)  # allowed-failures 0
    assert backend._cluster is None
    assert backend._client is None


@pytest.mark.engine_fds
async def test_ray_owned_local_cluster_is_stopped() -> None:
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    backend = triopool.RayBackend(num_cpus=1)
    with trio.fail_after(180):
        async with triopool.open_pool(backend=backend, max_tasks_per_child=1) as pool:
            pid1 = await pool.run_sync(workerfuncs.getpid)
            pid2 = await pool.run_sync(workerfuncs.getpid)
            assert pool.statistics().workers == 1
    assert pid1 != pid2  # max_calls=1: each task in a fresh worker
    assert not ray.is_initialized()


@pytest.mark.slow
@pytest.mark.engine_fds
async def test_ray_owned_local_cluster_outlives_the_thread_that_started_it() -> None:
    """Ray's processes die with the thread that ran ``ray.init``; Trio's
    worker threads exit after 10 s idle, so a pool whose Ray was started in
    one lost its cluster then (the backend now starts it in a thread of its
    own)."""
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    backend = triopool.RayBackend(num_cpus=1)
    with trio.fail_after(180):
        async with triopool.open_pool(backend=backend) as pool:
            pid = await pool.run_sync(workerfuncs.getpid)
            await trio.sleep(12)  # past the idle thread's exit
            assert await pool.run_sync(workerfuncs.getpid) == pid
    assert not ray.is_initialized()


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("engine", ["ray", "dask"])
def test_expected_outcomes_print_nothing(engine: str) -> None:
    """Ray's SIGTERM-handler and token-auth warnings at start and Dask's
    ``Compute Failed`` report of a task exception the caller receives are
    the pool's own doing: a program that never configures logging prints
    none of them, and the pool leaves no filter behind."""
    pytest.importorskip("ray" if engine == "ray" else "distributed")
    done = subprocess.run(
        [sys.executable, "-m", "tests.cluster_quiet_program", engine],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout) == {
        "result": 3,
        "caught": "expected",
        "filters": 0,
    }

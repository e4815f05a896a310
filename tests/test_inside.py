"""``triopool.current_worker()``: which worker runs a task, in real workers of
both start methods, and a clear error anywhere else."""

from __future__ import annotations

import pickle

import pytest
import trio

import triopool
from tests import logfuncs as lf
from tests import workerfuncs as wf

TIMEOUT = 60

pytestmark = pytest.mark.usefixtures("start_method")


async def test_a_task_learns_its_worker_without_importing_trio() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            info, modules = await pool.run_sync(lf.where_and_modules)
            pid = await pool.run_sync(wf.getpid)
    assert isinstance(info, triopool.WorkerInfo)
    assert info.index == 0
    assert info.pid == pid
    assert info.tasks_done == 0
    for heavy in ("trio", "attrs", "attr", "triopool._pool"):
        assert heavy not in modules


async def test_tasks_done_counts_the_tasks_finished_before() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            await pool.run_sync(wf.add, 1, 2)
            with pytest.raises(ValueError, match="on purpose"):
                await pool.run_sync(wf.raise_value_error, "on purpose")
            first = await pool.run_sync(lf.where)
            second = await pool.run_sync(lf.where)
    assert (first.tasks_done, second.tasks_done) == (2, 3)
    assert first.pid == second.pid


async def test_the_initializer_learns_its_worker() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, initializer=lf.remember_worker) as pool:
            remembered = await pool.run_sync(lf.remembered)
            now = await pool.run_sync(lf.where)
    assert remembered == triopool.WorkerInfo(0, now.pid, 0)


async def test_each_worker_has_its_own_slot() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            infos: list[triopool.WorkerInfo] = []
            while len({info.index for info in infos}) < 2:
                async with trio.open_nursery() as nursery:

                    async def one() -> None:
                        infos.append(await pool.run_sync(lf.sleep_then_where, 0.2))

                    nursery.start_soon(one)
                    nursery.start_soon(one)
    assert {info.index for info in infos} == {0, 1}
    by_index = {info.index: info.pid for info in infos}
    assert len(set(by_index.values())) == 2


async def test_a_replacement_keeps_the_slot_of_the_worker_it_replaces() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, max_tasks_per_child=1) as pool:
            recycled = [await pool.run_sync(lf.where) for _ in range(3)]
            with pytest.raises(triopool.BrokenWorkerError):
                await pool.run_sync(lf.where_then_exit, 3)
            after_death = await pool.run_sync(lf.where)
            stats = pool.statistics()
    infos = [*recycled, after_death]
    assert [info.index for info in infos] == [0, 0, 0, 0]
    assert len({info.pid for info in infos}) == 4
    assert [info.tasks_done for info in infos] == [0, 0, 0, 0]
    assert stats.workers_recycled == 3
    assert stats.workers_lost == 1


async def test_a_process_a_task_forks_is_not_the_worker() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            assert await pool.run_sync(lf.forked_current_worker) == "RuntimeError"


def test_outside_a_worker_it_raises_runtime_error() -> None:
    with pytest.raises(RuntimeError):
        triopool.current_worker()


def test_worker_info_is_a_value() -> None:
    info = triopool.WorkerInfo(1, 4242, 7)
    assert (info.index, info.pid, info.tasks_done) == (1, 4242, 7)
    assert info == triopool.WorkerInfo(1, 4242, 7)
    assert info != triopool.WorkerInfo(0, 4242, 7)
    assert hash(info) == hash(triopool.WorkerInfo(1, 4242, 7))
    assert pickle.loads(pickle.dumps(info)) == info
    assert repr(info) == "WorkerInfo(index=1, pid=4242, tasks_done=7)"
    with pytest.raises(AttributeError):
        info.index = 2
    assert triopool.WorkerInfo.__module__ == "triopool"
    assert triopool.current_worker.__module__ == "triopool"

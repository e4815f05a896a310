"""Hostile tasks: what a task may do to its own worker process, and what the
pool guarantees all the same (docs/limits.rst, "What a task may do to its
worker"). Each test runs real workers under both start methods."""

from __future__ import annotations

import contextlib
import math
import os
import signal
from typing import TYPE_CHECKING, Any

import pytest
import trio

import triopool
from tests import hostile_tasks as ht
from tests import workerfuncs
from tests.conftest import is_running

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("start_method")

# Far longer than any of these tests may take: a pool that waited for the
# processes a task left behind would run into the tests' time-outs.
_LEFT_BEHIND_SECONDS = 60


@contextlib.contextmanager
def processes_left_behind(tmp_path: Path) -> Iterator[list[Path]]:
    """Pid files for processes a task leaves behind; killed at the end."""
    files: list[Path] = []
    try:
        yield files
    finally:
        for path in files:
            with contextlib.suppress(FileNotFoundError, ValueError):
                pid = int(path.read_text())
                # Sleeping for a minute: the pid is still the one written.
                if is_running(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["return", "raise", "sys.exit"])
async def test_a_forked_copy_that_comes_back_never_answers(how: str) -> None:
    """The forked child leaves at once (with the exit code its return, its
    exception or its ``sys.exit`` calls for); every caller gets its own
    outcome and the worker lives on."""
    expected_code = {"return": 0, "raise": 1, "sys.exit": 5}[how]
    results: dict[int, Any] = {}
    with trio.fail_after(30):
        async with triopool.open_pool(1) as pool:
            first_pid = await pool.run_sync(workerfuncs.getpid)

            async def call(number: int) -> None:
                if number % 5 == 0:
                    results[number] = await pool.run_sync(
                        ht.fork_and_come_back, number, how
                    )
                else:
                    results[number] = await pool.run_sync(workerfuncs.identity, number)

            async with trio.open_nursery() as nursery:
                for number in range(30):
                    nursery.start_soon(call, number)
            last_pid = await pool.run_sync(workerfuncs.getpid)
            stats = pool.statistics()
    for number in range(30):
        if number % 5 == 0:
            assert results[number] == (number, expected_code)
        else:
            assert results[number] == number
    assert last_pid == first_pid
    assert stats.workers_lost == 0


async def test_programs_a_task_starts_inherit_no_pipe_of_the_pool() -> None:
    with trio.fail_after(20):
        async with triopool.open_pool(1) as pool:
            assert await pool.run_sync(ht.inheritable_pipes) == []


@pytest.mark.parametrize("how", ["popen", "fork"])
async def test_a_worker_that_exits_is_noticed_while_a_process_holds_its_pipes(
    tmp_path: Path, how: str
) -> None:
    """Death is the process's exit, not EOF: a process the task left behind
    may hold the pipes (a forked child holds them, close-on-exec or not)."""
    with processes_left_behind(tmp_path) as left:
        left.append(tmp_path / "pid")
        with trio.fail_after(_LEFT_BEHIND_SECONDS / 3):
            async with triopool.open_pool(1) as pool:
                with pytest.raises(triopool.BrokenWorkerError) as caught:
                    await pool.run_sync(ht.start_then_exit, str(left[0]), how, 3)
                assert caught.value.exitcode == 3
                # The replacement serves.
                assert await pool.run_sync(workerfuncs.add, 2, 3) == 5
                stats = pool.statistics()
    assert stats.workers_lost == 1
    assert stats.tasks_failed == 1


async def test_an_idle_worker_killed_while_a_process_holds_its_pipes(
    tmp_path: Path,
) -> None:
    """The pool notices the death at once, and the next tasks run on the
    replacement."""
    with processes_left_behind(tmp_path) as left:
        left.append(tmp_path / "pid")
        with trio.fail_after(_LEFT_BEHIND_SECONDS / 3):
            async with triopool.open_pool(1) as pool:
                worker_pid = await pool.run_sync(ht.leave_forked_sleeper, str(left[0]))
                os.kill(worker_pid, signal.SIGKILL)
                # Noticed without EOF. (A task written at the very moment of
                # the kill could still be read by the dying process, and so
                # count as started: that is not what this test is about.)
                while pool.statistics().workers_lost < 1:  # noqa: ASYNC110 - polling the pool
                    await trio.sleep(0.01)
                for number in range(5):
                    assert await pool.run_sync(workerfuncs.identity, number) == number
                assert await pool.run_sync(workerfuncs.getpid) != worker_pid
                stats = pool.statistics()
    assert stats.workers_lost == 1
    assert stats.tasks_completed == 7


@pytest.mark.parametrize("how", ["dup2", "close all"])
async def test_a_task_that_breaks_its_result_pipe_gets_its_worker_killed(
    how: str,
) -> None:
    """Nothing can come from the worker any more: it is killed at once, its
    caller gets BrokenWorkerError, and the pool's block does not hang."""
    with trio.fail_after(_LEFT_BEHIND_SECONDS / 3):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.BrokenWorkerError) as caught:
                await pool.run_sync(
                    ht.break_result_pipe, how, float(_LEFT_BEHIND_SECONDS)
                )
            assert caught.value.exitcode == -signal.SIGKILL
            assert await pool.run_sync(workerfuncs.add, 1, 1) == 2
            stats = pool.statistics()
    assert stats.workers_lost == 1


@pytest.mark.parametrize("how", ["dup2", "close all"])
async def test_an_initializer_that_breaks_its_result_pipe_is_a_start_failure(
    how: str,
) -> None:
    with trio.fail_after(_LEFT_BEHIND_SECONDS / 3):
        async with triopool.open_pool(
            1,
            initializer=ht.break_result_pipe,
            initargs=(how, float(_LEFT_BEHIND_SECONDS)),
            max_start_failures=2,
        ) as pool:
            with pytest.raises(triopool.BrokenPoolError):
                await pool.run_sync(workerfuncs.add, 1, 1)
            stats = pool.statistics()
    assert stats.start_failures == 2


async def test_an_exception_whose_str_raises_arrives_as_itself() -> None:
    with trio.fail_after(20):
        async with triopool.open_pool(1) as pool:
            pid = await pool.run_sync(workerfuncs.getpid)
            with pytest.raises(ht.StrRaises) as caught:
                await pool.run_sync(ht.raise_str_raises, "tag")
            assert caught.value.args == ("tag",)
            assert await pool.run_sync(workerfuncs.getpid) == pid
            stats = pool.statistics()
    assert stats.workers_lost == 0
    assert stats.tasks_failed == 1


@pytest.mark.parametrize("limit", [math.inf, 1e10])
async def test_an_endless_limit_is_no_limit(limit: float) -> None:
    with trio.fail_after(20):
        async with triopool.open_pool(1, soft_time_limit=limit) as pool:
            assert await pool.run_sync(workerfuncs.add, 1, 2) == 3
            assert (
                await pool.run_sync(
                    workerfuncs.add, 2, 2, soft_time_limit=limit, time_limit=2 * limit
                )
                == 4
            )
            # An endless soft limit leaves room for any hard one.
            assert (
                await pool.run_sync(
                    workerfuncs.add, 3, 2, soft_time_limit=math.inf, time_limit=5.0
                )
                == 5
            )


@pytest.mark.slow
async def test_more_workers_than_cpus_start_a_few_at_a_time(tmp_path: Path) -> None:
    """Costly starts on a busy machine are slow, not a crash loop: the pool
    starts at most as many workers at once as it may use CPUs, so their
    initializers never compete with each other for a CPU and miss their
    start timeout together. Each initializer notes when it ran."""
    workers = 8
    cpus = len(os.sched_getaffinity(0))
    if workers < 2 * cpus:
        pytest.skip(f"needs a machine with at most {workers // 2} CPUs")
    with trio.fail_after(120):
        async with triopool.open_pool(
            workers,
            initializer=ht.initializer_burns_cpu,
            initargs=(str(tmp_path), 0.2),
            start_timeout=60.0,
        ) as pool:
            results = await pool.map(workerfuncs.identity, range(2 * workers))
            while pool.statistics().workers_idle < workers:  # noqa: ASYNC110
                await trio.sleep(0.05)  # every worker up: its initializer ran
            stats = pool.statistics()
    assert results == list(range(2 * workers))
    assert stats.start_failures == 0
    started, most = ht.most_at_once(str(tmp_path))
    assert started == stats.workers_started >= workers
    assert 1 <= most <= cpus


@pytest.fixture
def sigchld_ignored() -> Iterator[None]:
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)


@pytest.mark.usefixtures("sigchld_ignored")
async def test_an_exit_status_that_cannot_be_collected_reads_as_unknown(
    start_method: str,
) -> None:
    """With SIGCHLD ignored, the kernel reaps a spawned worker at once: its
    status is unknown, never success. A fork server reaps its own workers."""
    with trio.fail_after(30):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.BrokenWorkerError) as caught:
                await pool.run_sync(workerfuncs.exit_with, 7)
            with pytest.raises(triopool.BrokenWorkerError) as killed:
                await pool.run_sync(workerfuncs.kill_self, signal.SIGKILL)
            assert await pool.run_sync(workerfuncs.add, 1, 1) == 2
    if start_method == "spawn":
        assert caught.value.exitcode is None
        assert killed.value.exitcode is None
        assert "unknown status" in str(caught.value)
    else:
        assert caught.value.exitcode == 7
        assert killed.value.exitcode == -signal.SIGKILL

"""The fork server with real processes: what only start_method="forkserver" has.

Everything the two start methods share is tested in test_pool and test_child,
which run once per method.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import pytest
import trio

import triopool
from tests import workerfuncs as wf
from tests.conftest import is_running, worker_channels
from triopool import _pool

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TIMEOUT = 60


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (zombies included)."""
    return os.path.exists(f"/proc/{pid}")


def fd_targets(pid: int) -> dict[int, str]:
    targets = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue
    return targets


async def test_workers_are_children_of_one_server_holding_only_its_socket() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(
            2, start_method="forkserver", max_tasks_per_child=1
        ) as pool:
            parents = {await pool.run_sync(wf.parent_pid) for _ in range(6)}
        assert len(parents) == 1
        assert parents.pop() != os.getpid()
        async with triopool.open_pool(2, start_method="forkserver") as pool:
            # Both workers up and no fork in progress: the server holds only
            # its socket and its SIGCHLD wake-up pipe besides 0, 1 and 2, and
            # no worker's pipe.
            while pool.statistics().workers_idle < 2:  # noqa: ASYNC110 - polling the pool
                await trio.sleep(0.01)
            server = await pool.run_sync(wf.parent_pid)
            extra = {fd: t for fd, t in fd_targets(server).items() if fd > 2}
            assert sorted(t.split(":")[0] for t in extra.values()) == [
                "pipe",
                "pipe",
                "socket",
            ], extra
            # A worker holds its two pipes and not the server's socket.
            _, worker_fds = await pool.run_sync(wf.pid_and_fd_targets)
            own = worker_channels(worker_fds)
            assert len(own) == 2
            assert all(t.startswith("pipe:") for t in own), worker_fds
            assert not own & set(extra.values())


async def test_killed_server_fails_running_tasks_and_is_replaced() -> None:
    errors: list[triopool.BrokenWorkerError] = []

    async def doomed() -> None:
        with pytest.raises(triopool.BrokenWorkerError) as info:
            await pool.run_sync(wf.sleep, 30)
        errors.append(info.value)

    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2, start_method="forkserver") as pool:
            server = await pool.run_sync(wf.parent_pid)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(doomed)
                while pool.statistics().tasks_running < 1:  # noqa: ASYNC110 - polling the pool
                    await trio.sleep(0.01)
                os.kill(server, signal.SIGKILL)
            # Its workers died with it; new ones come from a new server.
            assert await pool.run_sync(wf.add, 2, 2) == 4
            new_server = await pool.run_sync(wf.parent_pid)
            stats = pool.statistics()
    assert new_server != server
    assert not alive(server)
    assert errors[0].exitcode == -signal.SIGKILL
    assert stats.workers_lost >= 1
    assert stats.start_failures == 0


async def on_two_workers(
    pool: triopool.Pool, fn: Callable[[float], tuple[int, int]]
) -> list[tuple[int, int]]:
    """Run ``fn(0.3)`` twice at once: on each of a pool of 2's workers."""
    results: list[tuple[int, int]] = []

    async def one() -> None:
        results.append(await pool.run_sync(fn, 0.3))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        nursery.start_soon(one)
    return results


async def test_workers_of_a_dead_server_get_no_task_and_are_replaced() -> None:
    # A server's death settles its workers as killed at once, a moment before
    # the kernel's kill lands and their pipes close; in that moment a worker
    # could still take a task and be killed running it. Here the workers
    # outlive their server, so that moment lasts: they must get nothing more.
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2, start_method="forkserver") as pool:
            outlived = await on_two_workers(pool, wf.outlive_parent)
            orphans = {pid for pid, _ in outlived}
            (server,) = {parent for _, parent in outlived}
            assert len(orphans) == 2
            os.kill(server, signal.SIGKILL)
            while pool.statistics().workers_lost < 2:  # noqa: ASYNC110 - polling the pool
                await trio.sleep(0.01)
            ran = await on_two_workers(pool, wf.sleep_then_pid_and_parent)
            # Both ran, on new workers of one new server.
            assert not {pid for pid, _ in ran} & orphans
            parents = {parent for _, parent in ran}
            assert len(parents) == 1
            assert parents != {server}
            # Dropped, the orphans read EOF on their task pipes and exited.
            while any(is_running(pid) for pid in orphans):  # noqa: ASYNC110 - polling the processes
                await trio.sleep(0.01)
            stats = pool.statistics()
    assert stats.workers_lost == 2
    assert stats.start_failures == 0


async def test_busy_worker_of_a_dead_server_answers_and_gets_no_more() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, start_method="forkserver") as pool:
            orphan, server = await pool.run_sync(wf.outlive_parent, 0)
            ran: list[tuple[int, int]] = []

            async def run(seconds: float) -> None:
                ran.append(await pool.run_sync(wf.sleep_then_pid_and_parent, seconds))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, 1.0)
                while pool.statistics().tasks_running < 1:  # noqa: ASYNC110 - polling the pool
                    await trio.sleep(0.01)
                nursery.start_soon(run, 0)
                while pool.statistics().tasks_waiting < 1:  # noqa: ASYNC110 - polling the pool
                    await trio.sleep(0.01)
                os.kill(server, signal.SIGKILL)
            stats = pool.statistics()
    # The running task finished on the worker that outlived its server; the
    # queued one went to a new worker of a new server, not to it.
    assert ran[0][0] == orphan
    assert ran[1][0] != orphan
    assert ran[1][1] != server
    assert stats.workers_lost == 1
    assert not is_running(orphan)


async def test_no_task_goes_ahead_to_a_worker_of_a_dead_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Tasks written ahead to a busy worker (pipelining, see test_pipelining)
    # stop as soon as its server is known dead: it runs what it holds, no more.
    monkeypatch.setattr(_pool, "_AHEAD_AFTER", 3600.0)
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, start_method="forkserver") as pool:
            orphan, server = await pool.run_sync(wf.outlive_parent, 0)
            pids: list[int] = []

            async def run() -> None:
                pids.append(await pool.run_sync(wf.sleep_then_pid, 0.001))

            async with trio.open_nursery() as nursery:
                for _ in range(300):
                    nursery.start_soon(run)
                while len(pids) < 20:  # noqa: ASYNC110 - polling the results
                    await trio.sleep(0.001)
                os.kill(server, signal.SIGKILL)
                killed_after = len(pids)
            stats = pool.statistics()
    assert len(pids) == 300
    # Until the kill is noticed (a few ms), the orphan runs the tasks it
    # holds and a few more; without the check it would run them all.
    assert pids.count(orphan) < killed_after + 100, (killed_after, pids.count(orphan))
    assert stats.workers_lost == 1


async def test_server_that_cannot_start_breaks_the_pool_clearly() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(
            1,
            start_method="forkserver",
            forkserver_preload=["tests.no_such_module"],
            max_start_failures=2,
        ) as pool:
            with pytest.raises(triopool.BrokenPoolError) as info:
                await pool.run_sync(wf.add, 1, 1)
            stats = pool.statistics()
    cause = info.value.__cause__
    assert isinstance(cause, triopool.WorkerStartError)
    assert "fork server failed to start" in str(cause)
    assert "ModuleNotFoundError" in str(cause)
    assert "tests.no_such_module" in str(cause)
    assert stats.start_failures == 2
    # No worker process ever ran, but each failed server start counts as a
    # (failed) start, so the PoolStatistics identity holds.
    assert stats.workers_started == 2
    assert stats.workers_alive == stats.workers_stopped == 0


async def test_server_stuck_at_start_hits_start_timeout() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(
            1,
            start_method="forkserver",
            forkserver_preload=["tests.preload_hangs"],
            start_timeout=0.5,
            max_start_failures=2,
        ) as pool:
            with pytest.raises(triopool.BrokenPoolError) as info:
                await pool.run_sync(wf.add, 1, 1)
    assert "fork server was not ready within 0.5 s" in str(info.value.__cause__)


async def test_preload_modules_are_imported_once_in_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "imports"
    monkeypatch.setenv("TRIOPOOL_TEST_PRELOAD_LOG", str(log))
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(
            2,
            start_method="forkserver",
            forkserver_preload=["tests.preload_probe"],
            max_tasks_per_child=1,
        ) as pool:
            states = [await pool.run_sync(wf.preload_probe_state) for _ in range(5)]
            assert pool.statistics().workers_started >= 5
    servers = {parent for parent, _ in states}
    assert len(servers) == 1
    server = servers.pop()
    # Imported in the server, before the fork, and in no worker.
    assert {imported_in for _, imported_in in states} == {server}
    assert log.read_text().split() == [str(server)]


async def test_hard_time_limit_kills_through_the_server() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(
            1, start_method="forkserver", time_limit=0.5
        ) as pool:
            pid = await pool.run_sync(wf.getpid)
            with pytest.raises(triopool.TimeLimitExceeded):
                await pool.run_sync(wf.sleep, 30)
            # One slot: its new worker comes after the old one was reaped.
            assert await pool.run_sync(wf.getpid) != pid
            assert not alive(pid)
            assert pool.statistics().workers_lost == 1


@pytest.mark.parametrize("exit_by", ["normal", "cancel", "error"])
async def test_pool_exit_leaves_no_server_and_no_worker(exit_by: str) -> None:
    pids: set[int] = set()
    expect_error: AbstractContextManager[Any] = (
        pytest.raises(KeyError) if exit_by == "error" else nullcontext()
    )
    with trio.fail_after(TIMEOUT), trio.CancelScope() as outer, expect_error:
        async with triopool.open_pool(2, start_method="forkserver") as pool:
            for _ in range(4):
                pids.update(await pool.run_sync(wf.pid_and_parent))
            if exit_by == "cancel":
                # Cancel the block while a task runs.
                outer.deadline = trio.current_time() + 0.3
                await pool.run_sync(wf.sleep, 30)
            elif exit_by == "error":
                raise KeyError("body")
    assert outer.cancelled_caught == (exit_by == "cancel")
    assert len(pids) >= 2  # the server and at least one worker
    for pid in pids:
        assert not alive(pid)


SCRIPT = """
    import os, signal, trio, triopool
    from tests import workerfuncs as wf

    async def main():
        async with triopool.open_pool(2, start_method="forkserver") as pool:
            pids = set()
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    async def record():
                        pids.update(await pool.run_sync(wf.sleep_then_pid_and_parent, 0.3))
                    nursery.start_soon(record)
            print(*sorted(pids), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    trio.run(main)
"""


async def test_server_and_workers_die_with_the_pools_process(tmp_path: Path) -> None:
    script = tmp_path / "dies.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process(
            [sys.executable, str(script)],
            capture_stdout=True,
            check=False,
            env=env,
            cwd=os.getcwd(),
        )
        assert done.returncode == -signal.SIGKILL
        pids = [int(pid) for pid in done.stdout.split()]
        assert len(pids) == 3  # the server and two workers
        while any(is_running(pid) for pid in pids):  # noqa: ASYNC110 - polling /proc
            await trio.sleep(0.01)

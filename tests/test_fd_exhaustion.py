"""No fds left: with ``RLIMIT_NOFILE`` lowered so that a new worker's pipes
(or the process itself) cannot be created, starts fail through the documented
errors, no fd leaks on the failure path, and the pool recovers once fds are
available again (or is declared broken if they never are).

Each test runs once per start method. With ``forkserver`` the lowered limit
first stops the fork server itself (its socket, its process), or, once it
runs, a worker's pipes; the server's own fds running out (it receives each
worker's pipe ends over its socket) has a test of its own.
"""

from __future__ import annotations

import contextlib
import errno

# The pool imports this as it opens (for the workers' authkey); with no fd to
# spare, the import itself would fail, and the test would only pass after
# another test had imported it.
import multiprocessing.process  # noqa: F401
import os
import resource
from typing import TYPE_CHECKING

import pytest
import trio

import triopool
from tests import workerfuncs as wf
from tests.conftest import child_processes, logged
from tests.storm import LogWatch, check_counters, watch_log

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.conftest import StartMethod

pytestmark = pytest.mark.usefixtures("start_method")

TIMEOUT = 60


def open_fds() -> set[int]:
    """This process's open fds, found without opening one (none may be left)."""
    found = set()
    for fd in range(4096):
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.add(fd)
    return found


@contextlib.contextmanager
def fd_headroom(count: int) -> Iterator[Callable[[], None]]:
    """Let this process open only ``count`` more fds until the returned
    function is called (or the block ends)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []

    def restore() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    try:
        # Fill the holes below the highest open fd, so that the limit alone
        # decides how many new fds fit.
        top = max(open_fds())
        while True:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            if fd > top:
                os.close(fd)
                break
            fillers.append(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1 + count, hard))
        yield restore
    finally:
        restore()
        for fd in fillers:
            os.close(fd)


async def wait_for_start_failures(pool: triopool.Pool, count: int) -> None:
    # Polling: the pool offers no event for this, and tests only need a bound.
    while pool.statistics().start_failures < count:  # noqa: ASYNC110
        await trio.sleep(0.02)


def fork_server_fds(fds: set[int]) -> bool:
    """Whether ``fds`` could be a running fork server's: its socket and, while
    the pool waits for it, its pidfd."""
    kinds = []
    for fd in fds:
        try:
            kinds.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            return False
    return len(kinds) <= 2 and all(
        kind.startswith(("socket:", "anon_inode:[pidfd]")) for kind in kinds
    )


# Spawn: 0: the first pipe cannot be made; 2: the second cannot (the first
# must be closed again); 4: both pipes exist but Popen cannot make its own
# pipe. Forkserver: 0: no socket for the server; 2: the server's process
# cannot be made; 4: the server runs, a worker's pipes cannot be made.
@pytest.mark.parametrize("headroom", [0, 2, 4])
async def test_starts_fail_without_fds_and_the_pool_recovers(
    headroom: int, start_method: StartMethod, caplog: pytest.LogCaptureFixture
) -> None:
    watch = LogWatch(start_method)
    with trio.fail_after(TIMEOUT), fd_headroom(headroom) as restore:
        fds_before = open_fds()
        with watch_log(watch):
            async with triopool.open_pool(1, max_start_failures=1000) as pool:
                await wait_for_start_failures(pool, 3)
                # Nothing of the failed attempts stays open (but a fork server
                # that could start holds its socket).
                extra = open_fds() - fds_before
                assert not fds_before - open_fds()
                if start_method == "forkserver":
                    assert fork_server_fds(extra), extra
                else:
                    assert not extra
                stats = pool.statistics()
                assert stats.workers_alive == 0
                restore()
                assert await pool.run_sync(wf.add, 1, 2) == 3
        assert open_fds() == fds_before
    stats = pool.statistics()
    assert stats.start_failures >= 3
    assert stats.tasks_completed == 1
    # The fork server's own start failures count as starts too.
    assert stats.workers_started == stats.start_failures + stats.workers_stopped
    assert logged(caplog.records, event="start_failed", errno=errno.EMFILE)


async def test_fork_server_start_failures_count_as_worker_starts(
    start_method: str,
) -> None:
    if start_method != "forkserver":
        pytest.skip("a fork server's start is only forkserver's")
    # PoolStatistics documents workers_started == workers_alive +
    # workers_recycled + workers_lost + start_failures + workers_stopped
    # "whatever happens": a fork server that cannot start counts as a failed
    # start, so as a start too.
    with trio.fail_after(TIMEOUT), fd_headroom(0) as restore:
        async with triopool.open_pool(1, max_start_failures=1000) as pool:
            await wait_for_start_failures(pool, 3)
            restore()
            assert await pool.run_sync(wf.add, 1, 2) == 3
    problems = check_counters(pool.statistics(), settled=True)
    assert not problems, problems


async def test_fork_server_without_fds_fails_starts_and_recovers(
    start_method: str, caplog: pytest.LogCaptureFixture
) -> None:
    if start_method != "forkserver":
        pytest.skip("only a fork server receives a worker's fds over a socket")
    # The server receives each worker's pipe ends over its socket: with no
    # fd left there, they are dropped on the way (MSG_CTRUNC) and the server
    # must refuse the fork, not fork a worker with missing pipes.
    servers_before = child_processes()
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(
            1, max_tasks_per_child=1, max_start_failures=1000
        ) as pool:
            assert await pool.run_sync(wf.add, 1, 2) == 3
            (server,) = child_processes() - servers_before
            held = {int(name) for name in os.listdir(f"/proc/{server}/fd")}
            lowest_free = min(set(range(len(held) + 1)) - held)
            soft, hard = resource.prlimit(server, resource.RLIMIT_NOFILE)
            resource.prlimit(server, resource.RLIMIT_NOFILE, (lowest_free, hard))
            try:
                # The first worker retired after its task: its replacements
                # cannot be forked, and nothing of them stays open here (once
                # the retired worker is surely gone).
                await wait_for_start_failures(pool, 2)
                fds_before = open_fds()
                await wait_for_start_failures(pool, 4)
                assert open_fds() == fds_before
                assert pool.statistics().workers_alive == 0
            finally:
                resource.prlimit(server, resource.RLIMIT_NOFILE, (soft, hard))
            assert await pool.run_sync(wf.add, 2, 2) == 4
            # The same server served throughout.
            assert child_processes() - servers_before == {server}
    stats = pool.statistics()
    assert stats.start_failures >= 3
    assert stats.tasks_completed == 2
    # Refused by the running server, not a server that failed.
    assert logged(
        caplog.records, event="start_failed", reason="forkserver", stage="fork"
    )
    assert not logged(caplog.records, event="start_failed", stage="server")


async def test_persistent_fd_exhaustion_breaks_the_pool() -> None:
    with trio.fail_after(TIMEOUT), fd_headroom(2):
        async with triopool.open_pool(1, max_start_failures=3) as pool:
            with pytest.raises(triopool.BrokenPoolError) as info:
                await pool.run_sync(wf.add, 1, 2)
    start_error = info.value.__cause__
    assert isinstance(start_error, triopool.WorkerStartError)
    assert isinstance(start_error.__cause__, OSError)
    assert start_error.__cause__.errno == errno.EMFILE
    assert pool.statistics().start_failures == 3

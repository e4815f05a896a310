"""No fds left: with ``RLIMIT_NOFILE`` lowered so that a new worker's pipes
(or the process itself) cannot be created, starts fail through the documented
errors, no fd leaks on the failure path, and the pool recovers once fds are
available again (or is declared broken if they never are)."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from typing import TYPE_CHECKING

import pytest
import trio

import triopool
from tests import workerfuncs as wf

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

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


# 0: the first pipe cannot be made; 2: the second cannot (the first must be
# closed again); 4: both pipes exist but Popen cannot make its own pipe.
@pytest.mark.parametrize("headroom", [0, 2, 4])
async def test_starts_fail_without_fds_and_the_pool_recovers(
    headroom: int, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(TIMEOUT), fd_headroom(headroom) as restore:
        fds_before = open_fds()
        async with triopool.open_pool(1, max_start_failures=1000) as pool:
            await wait_for_start_failures(pool, 3)
            # Nothing of the failed attempts stays open.
            assert open_fds() == fds_before
            stats = pool.statistics()
            assert stats.workers_alive == 0
            restore()
            assert await pool.run_sync(wf.add, 1, 2) == 3
        assert open_fds() == fds_before
    stats = pool.statistics()
    assert stats.start_failures >= 3
    assert stats.tasks_completed == 1
    assert stats.workers_started == stats.start_failures + stats.workers_stopped
    assert "Too many open files" in caplog.text


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

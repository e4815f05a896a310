"""The spawn start method's own edge cases, with real processes.

A worker that exits before it is sent its configuration is a failed start;
a worker that lingers after its shutdown gets SIGTERM.
"""

from __future__ import annotations

import logging
import time

import pytest
import trio

import triopool
from tests import workerfuncs
from tests.conftest import is_running, logged
from triopool import _hooks, _spawn


class _DeadOnArrival(_spawn.SpawnedProcess):
    """Starts a worker that exits at once, and returns only once it has."""

    def __init__(self, fd_in: int, fd_out: int) -> None:
        super().__init__("tests.exits_at_once", (fd_in, fd_out))
        deadline = time.monotonic() + 20
        while is_running(self.pid) and time.monotonic() < deadline:
            time.sleep(0.001)


async def test_worker_gone_before_its_configuration_is_a_start_failure() -> None:
    with trio.fail_after(30), _hooks.installed(launch=_DeadOnArrival):
        async with triopool.open_pool(1, max_start_failures=2) as pool:
            with pytest.raises(triopool.BrokenPoolError) as info:
                await pool.run_sync(len, "abc")
            stats = pool.statistics()
    assert isinstance(info.value.__cause__, triopool.WorkerStartError)
    assert "exited" in str(info.value.__cause__)
    assert stats.start_failures == 2


async def test_shutdown_timeout_then_sigterm_ends_a_lingering_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Spawned workers end as interpreters do, joining non-daemon threads; a
    # forked worker leaves with os._exit() after its loop, so it cannot linger.
    caplog.set_level(logging.WARNING, logger="triopool")
    with trio.fail_after(30):
        async with triopool.open_pool(
            1, start_method="spawn", shutdown_timeout=0.2
        ) as pool:
            # A thread left behind keeps the worker from exiting after EOF.
            pid = await pool.run_sync(workerfuncs.leave_a_thread_running, 60)
            start = time.monotonic()
        elapsed = time.monotonic() - start
    assert logged(caplog.records, event="shutdown_sigterm", worker_pid=pid)
    # SIGTERM was enough: no SIGKILL after the grace period.
    assert not logged(caplog.records, event="shutdown_sigkill")
    assert elapsed < 30

"""The spawn start method's own edge cases, with a real process.

A worker that exits before it is sent its configuration is a failed start.
"""

from __future__ import annotations

import time

import pytest
import trio

import triopool
from tests.conftest import is_running
from triopool import _spawn, _worker


class _DeadOnArrival(_spawn.WorkerProcess):
    """Starts a worker that exits at once, and returns only once it has."""

    def __init__(self, fd_in: int, fd_out: int) -> None:
        super().__init__(fd_in, fd_out)
        deadline = time.monotonic() + 20
        while is_running(self.pid) and time.monotonic() < deadline:
            time.sleep(0.001)


async def test_worker_gone_before_its_configuration_is_a_start_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_spawn, "_BOOTSTRAP", "import os; os._exit(3)")
    monkeypatch.setattr(_worker, "WorkerProcess", _DeadOnArrival)
    with trio.fail_after(30):
        async with triopool.open_pool(1, max_start_failures=2) as pool:
            with pytest.raises(triopool.BrokenPoolError) as info:
                await pool.run_sync(len, "abc")
            stats = pool.statistics()
    assert isinstance(info.value.__cause__, triopool.WorkerStartError)
    assert "exited" in str(info.value.__cause__)
    assert stats.start_failures == 2

"""A task handed to a worker that died while idle runs on another worker.

(To merge into tests/test_pool.py.)
"""

from __future__ import annotations

import os
import signal
import time

import trio

import triopool
from tests import workerfuncs as wf


def _wait_until_dead(pid: int) -> None:
    # Blocking on purpose: the pool must not get a chance to see the EOF
    # before the next task is handed to this worker's slot.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return
        time.sleep(0.001)
    raise AssertionError(f"worker {pid} did not die")


async def test_task_handed_to_a_dead_idle_worker_runs_on_another() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1) as pool:
            first = await pool.run_sync(wf.getpid)
            os.kill(first, signal.SIGKILL)
            _wait_until_dead(first)
            # Handed to the slot before it saw the EOF: writing the task hits
            # a closed pipe. The task had not started, so it runs again.
            second = await pool.run_sync(wf.getpid)
            stats = pool.statistics()
    assert second != first
    assert stats.workers_lost == 1
    assert stats.tasks_completed == 2
    assert stats.tasks_failed == 0

"""Graceful shutdown on SIGTERM, as systemd and docker stop send it.

Workers leave SIGTERM to their parent: when the whole process group gets it
(systemd's KillMode=control-group), the running tasks go on, and this program
lets them finish, then exits.

Run: python docs/examples/limits_sigterm.py
It sends the SIGTERM itself, to itself and to its workers, as systemd would.
To send it by hand instead, run it with --wait in the background and then
kill -TERM -- -PGID (its process group).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import trio

import triopool


def work(item: int) -> int:
    time.sleep(2.0)
    return item * item


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


async def worker_pids(pool: triopool.Pool) -> set[int]:
    """The pids of all the pool's workers, once all are up."""
    pids: set[int] = set()

    async def ask() -> None:
        pids.add(await pool.run_sync(pid_after, 0.1))

    while len(pids) < pool.statistics().workers:
        async with trio.open_nursery() as nursery:
            for _ in range(pool.statistics().workers):
                nursery.start_soon(ask)
    return pids


async def main(wait: bool) -> None:
    finished = 0
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with triopool.open_pool(2) as pool, trio.open_nursery() as nursery:

            async def producer(first: int) -> None:
                nonlocal finished
                for item in range(first, 10**9, 2):
                    # kill_on_cancel=False: a cancelled call still waits
                    # for its running task and returns its result.
                    await pool.run_sync(work, item, kill_on_cancel=False)
                    finished += 1

            if not wait:
                pids = await worker_pids(pool)
            nursery.start_soon(producer, 0)
            nursery.start_soon(producer, 1)
            if not wait:
                # Do what systemd does: SIGTERM to the program and to
                # every worker at once, while two tasks run.
                while pool.statistics().tasks_running < 2:  # noqa: ASYNC110 - a demo
                    await trio.sleep(0.01)
                for pid in {os.getpid(), *pids}:
                    os.kill(pid, signal.SIGTERM)
            async for _ in signals:
                print("SIGTERM: letting the running tasks finish")
                finished_before = finished
                nursery.cancel_scope.cancel()
                break
    stats = pool.statistics()
    print(f"tasks finished after SIGTERM: {finished - finished_before}")
    print(f"failed: {stats.tasks_failed}, workers lost: {stats.workers_lost}")


if __name__ == "__main__":
    trio.run(main, "--wait" in sys.argv[1:])

"""Graceful shutdown on SIGTERM, as systemd and docker stop send it.

Workers leave SIGTERM to their parent: when the whole process group gets it
(systemd's KillMode=control-group), the running tasks go on, and this program
lets them finish, then exits.

Run: python docs/examples/limits_sigterm.py
To stop it by hand instead: python docs/examples/limits_sigterm.py --wait &
then kill -TERM -- -<its process group id>.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import trio

import triopool


def work(item: int) -> int:
    time.sleep(1.0)
    return item * item


async def main(wait: bool) -> None:
    finished = 0
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with triopool.open_pool(2) as pool:
            worker_pids = {await pool.run_sync(os.getpid) for _ in range(4)}
            async with trio.open_nursery() as nursery:

                async def producer(first: int) -> None:
                    nonlocal finished
                    for item in range(first, 10**9, 2):
                        # kill_on_cancel=False: a cancelled call still waits
                        # for its running task and returns its result.
                        await pool.run_sync(work, item, kill_on_cancel=False)
                        finished += 1

                nursery.start_soon(producer, 0)
                nursery.start_soon(producer, 1)
                if not wait:
                    # Do what systemd does: SIGTERM to the program and to
                    # every worker at once.
                    await trio.sleep(1.5)
                    for pid in {os.getpid(), *worker_pids}:
                        os.kill(pid, signal.SIGTERM)
                async for _ in signals:
                    print("SIGTERM: letting the running tasks finish")
                    running = pool.statistics().tasks_running
                    nursery.cancel_scope.cancel()
                    break
    stats = pool.statistics()
    print(f"tasks finished after SIGTERM: {running}")
    print(f"failed: {stats.tasks_failed}, workers lost: {stats.workers_lost}")


if __name__ == "__main__":
    trio.run(main, "--wait" in sys.argv[1:])

"""Cancellation: what happens to a task whose caller stops waiting."""

from __future__ import annotations

import time

import trio

import triopool


def slow_square(x: int) -> int:
    time.sleep(1.0)
    return x * x


async def main() -> None:
    async with triopool.open_pool(workers=1) as pool:
        # A first call waits for the worker to start, so that the tasks below
        # start running at once.
        await pool.run_sync(int)

        # kill_on_cancel=True (the default): the worker is killed at once and
        # replaced; Cancelled propagates, so move_on_after catches it.
        with trio.move_on_after(0.2) as scope:
            await pool.run_sync(slow_square, 3)
        print("killed and moved on:", scope.cancelled_caught)

        await pool.run_sync(int)  # wait for the replacement worker

        # kill_on_cancel=False: like trio.to_thread.run_sync, the call is
        # shielded; it waits for the task and returns its result. The
        # cancellation takes effect at the next checkpoint.
        result = None
        with trio.move_on_after(0.2) as scope:
            result = await pool.run_sync(slow_square, 4, kill_on_cancel=False)
            await trio.lowlevel.checkpoint()  # Cancelled is raised here
            print("never reached")
        print("result kept:", result, "then cancelled:", scope.cancelled_caught)

        # Cancelled while still queued: the task never runs at all.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run_sync, slow_square, 5)
            await trio.sleep(0.1)  # the first call now holds the only worker
            with trio.move_on_after(0.1):
                await pool.run_sync(slow_square, 6)
        stats = pool.statistics()
        print("cancelled:", stats.tasks_cancelled, "lost workers:", stats.workers_lost)


if __name__ == "__main__":
    trio.run(main)

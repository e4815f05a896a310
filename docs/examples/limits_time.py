"""Hard and soft time limits: a task that runs too long is stopped.

Run: python docs/examples/limits_time.py
"""

from __future__ import annotations

import time

import trio

import triopool


def slow_sum(n: int) -> int:
    """A pure-Python loop that may run for a long time."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def careful_sum(n: int) -> tuple[str, int]:
    """Stops early, cleanly, when its soft time limit expires."""
    total = 0
    try:
        for i in range(n):
            total += i * i
    except triopool.SoftTimeLimitExceeded:
        return "partial", total
    return "complete", total


def stuck() -> None:
    """Ignores its soft limit: only the hard limit can stop it."""
    while True:
        try:
            time.sleep(3600)
        except triopool.SoftTimeLimitExceeded:
            pass


async def main() -> None:
    async with triopool.open_pool(2, soft_time_limit=0.5, time_limit=2.0) as pool:
        print(await pool.run_sync(careful_sum, 10**5))
        status, _ = await pool.run_sync(careful_sum, 10**10)
        print(status)  # "partial": the soft limit interrupted the loop

        try:
            await pool.run_sync(slow_sum, 10**10)
        except triopool.SoftTimeLimitExceeded as exc:
            print("soft limit:", exc)

        try:
            await pool.run_sync(stuck)
        except triopool.TimeLimitExceeded as exc:
            print(f"hard limit: the worker was killed after {exc.time_limit} s")

        # Per-call limits override the pool's defaults; None lifts them.
        print(
            await pool.run_sync(slow_sum, 10**6, soft_time_limit=None, time_limit=None)
        )
    print("workers killed and replaced:", pool.statistics().workers_lost)


if __name__ == "__main__":
    trio.run(main)

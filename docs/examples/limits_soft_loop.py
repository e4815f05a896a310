"""A tight loop that stops cleanly at its soft time limit, on every Python.

Run: python docs/examples/limits_soft_loop.py
"""

from __future__ import annotations

import time

import trio

import triopool


def refine_until(deadline: float) -> int:
    """Improve an estimate in a tight loop until the deadline; return the rounds."""
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
    return rounds


def refine(seconds: float) -> str:
    try:
        # The loop runs in a function of its own, called inside the `try`:
        # written here, under Python 3.13 the soft limit's exception could
        # escape this `try` (see "Tight loops" in docs/limits.rst).
        refine_until(time.monotonic() + seconds)
    except triopool.SoftTimeLimitExceeded:
        return "stopped by the soft limit"
    return "finished in time"


async def main() -> None:
    # The hard limit backs the soft one: it stops the task whatever it does.
    async with triopool.open_pool(1, soft_time_limit=0.5, time_limit=5) as pool:
        print(await pool.run_sync(refine, 60))
        print(await pool.run_sync(refine, 0.1))
        print("workers lost:", pool.statistics().workers_lost)


if __name__ == "__main__":
    trio.run(main)

"""Recycling workers: after a number of tasks, or when memory stays high.

Run: python docs/examples/limits_recycling.py
"""

from __future__ import annotations

import os

import trio

import triopool

_cache: list[bytearray] = []


def leaky_task(megabytes: int) -> int:
    """Keeps memory after it returns, as a cache or a leak would."""
    _cache.append(bytearray(megabytes * 1024 * 1024))
    return os.getpid()


async def main() -> None:
    async with triopool.open_pool(
        1, max_tasks_per_child=100, max_memory_per_child=200 * 1024 * 1024
    ) as pool:
        pids = [await pool.run_sync(leaky_task, 64) for _ in range(6)]
        # Each result is delivered; the worker that went over 200 MiB is then
        # retired and the next task runs in a fresh one.
        print("workers used:", len(set(pids)))
    print("recycled:", pool.statistics().workers_recycled)


if __name__ == "__main__":
    trio.run(main)

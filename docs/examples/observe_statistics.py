"""Progress from statistics(): poll the counters, with no subscription.

Works the same on a cluster backend, where events() is not available.

Run: python docs/examples/observe_statistics.py
"""

from __future__ import annotations

import time

import trio

import triopool


def score(n: int) -> int:
    time.sleep(0.02)
    return n * n


async def report(pool: triopool.Pool, total: int) -> None:
    while True:
        stats = pool.statistics()
        done = stats.tasks_completed + stats.tasks_failed
        print(f"{done}/{total} done, {stats.tasks_running} running", flush=True)
        if done >= total:
            return
        await trio.sleep(0.25)


async def main() -> None:
    total = 30
    async with triopool.open_pool(2) as pool, trio.open_nursery() as nursery:
        nursery.start_soon(report, pool, total)
        for n in range(total):
            nursery.start_soon(pool.run_sync, score, n)


if __name__ == "__main__":
    trio.run(main)

"""Idle workers exit, and come back when work comes; old workers retire.

Run: python docs/examples/limits_idle.py
"""

from __future__ import annotations

import trio

import triopool


def work(x: int) -> int:
    return x * x


async def main() -> None:
    async with triopool.open_pool(
        4, min_workers=1, idle_timeout=1.0, max_lifetime_per_child=3600
    ) as pool:
        await pool.map(work, range(100))  # all four workers busy
        await trio.sleep(3)  # a quiet moment: three exit after 1 s idle
        print("alive after a pause:", pool.statistics().workers_alive)
        # A burst: tasks wait, so the three slots start workers at once.
        results = await pool.map(work, range(100))
        print("results:", sum(results))
        print("target:", pool.statistics().workers)


if __name__ == "__main__":
    trio.run(main)

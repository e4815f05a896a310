"""Per-worker insight: what each worker slot did, and its longest tasks.

Run: python docs/examples/observe_insight.py
"""

from __future__ import annotations

import time

import trio

import triopool


def work(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def main() -> None:
    async with triopool.open_pool(2) as pool:
        async with trio.open_nursery() as nursery:
            for seconds in [0.4, 0.05, 0.05, 0.2, 0.05, 0.05]:
                nursery.start_soon(pool.run_sync, work, seconds)
        insight = pool.insight()
        stats = pool.statistics()
    for slot in insight:
        longest = ", ".join(
            f"{name} {seconds:.2f} s" for name, seconds in slot.longest_tasks
        )
        print(
            f"worker {slot.index}: {slot.tasks_done} tasks, "
            f"busy {slot.busy_time:.2f} s, idle {slot.idle_time:.2f} s, "
            f"start-up {slot.startup_time:.2f} s; longest: {longest}"
        )
    done = sum(slot.tasks_done for slot in insight)
    print(
        "tasks done:",
        done,
        "completed + failed:",
        stats.tasks_completed + stats.tasks_failed,
    )
    longest_name, longest_seconds = max(
        (task for slot in insight for task in slot.longest_tasks), key=lambda t: t[1]
    )
    print("longest task:", longest_name, "at least 0.4 s:", longest_seconds >= 0.4)


if __name__ == "__main__":
    trio.run(main)

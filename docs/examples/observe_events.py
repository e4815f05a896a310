"""Watch what a pool does: a subscriber prints each task's wait, transfer and
run times as tasks end, and counts the events it saw.

Run: python docs/examples/observe_events.py
"""

from __future__ import annotations

import collections
import time

import trio

import triopool


def resize(name: str) -> str:
    time.sleep(0.05)  # stands for real work
    if name == "broken.png":
        raise ValueError(f"cannot read {name}")
    return f"thumb-{name}"


async def watch(
    pool: triopool.Pool,
    counts: collections.Counter[str],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with pool.events() as events:
        task_status.started()
        # Ends by itself once the pool has closed.
        async for event in events:
            if isinstance(event, triopool.WorkerEvent):
                print(f"worker {event.index} (pid {event.pid}): {event.kind}")
                continue
            counts[event.kind] += 1
            if event.kind in ("finished", "failed"):
                print(
                    f"task {event.task} {event.function} {event.kind} on worker "
                    f"{event.worker_index}: waited {event.wait_time:.3f} s, "
                    f"transfer {event.transfer_time:.4f} s, ran {event.run_time:.3f} s"
                )


async def resize_or_report(pool: triopool.Pool, name: str) -> None:
    try:
        await pool.run_sync(resize, name)
    except ValueError as exc:
        print("error:", exc)


async def main() -> None:
    counts: collections.Counter[str] = collections.Counter()
    # The watchers' nursery is entered before the pool and left after it: the
    # watcher sees the pool to its end (the workers stopping), then its
    # `async for` ends by itself.
    async with trio.open_nursery() as watchers, triopool.open_pool(2) as pool:
        await watchers.start(watch, pool, counts)
        async with trio.open_nursery() as nursery:
            for name in ["a.png", "b.png", "broken.png", "c.png", "d.png"]:
                nursery.start_soon(resize_or_report, pool, name)
    print("task events:", dict(sorted(counts.items())))


if __name__ == "__main__":
    trio.run(main)

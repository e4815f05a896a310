"""A progress bar driven by the pool's events: tqdm or rich if installed,
plain lines otherwise.

Run: python docs/examples/observe_progress.py [tqdm|rich|plain]
"""

from __future__ import annotations

import importlib.util
import sys
import time
from typing import Any

import trio

import triopool


def score(n: int) -> int:
    time.sleep(0.01)
    return n * n


class PlainBar:
    """Prints a line at each tenth of the way."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0

    def advance(self) -> None:
        self.done += 1
        if self.done * 10 % self.total < 10:
            print(f"progress: {self.done}/{self.total}", flush=True)

    def close(self) -> None:
        pass


class TqdmBar:
    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar: Any = tqdm(total=total, unit="task")

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class RichBar:
    def __init__(self, total: int) -> None:
        from rich.progress import Progress

        self.progress: Any = Progress(transient=False)
        self.progress.start()
        self.task = self.progress.add_task("tasks", total=total)

    def advance(self) -> None:
        self.progress.advance(self.task)

    def close(self) -> None:
        self.progress.stop()


def make_bar(total: int) -> PlainBar | TqdmBar | RichBar:
    """The bar asked for on the command line, else the first one installed."""
    choice = sys.argv[1] if len(sys.argv) > 1 else None
    if choice in (None, "tqdm") and importlib.util.find_spec("tqdm") is not None:
        return TqdmBar(total)
    if choice in (None, "rich") and importlib.util.find_spec("rich") is not None:
        return RichBar(total)
    return PlainBar(total)


async def show_progress(
    pool: triopool.Pool,
    total: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    bar = make_bar(total)
    ended = 0
    try:
        async with pool.events() as events:
            task_status.started()
            async for event in events:
                if isinstance(event, triopool.TaskEvent) and event.kind in (
                    "finished",
                    "failed",
                ):
                    ended += 1
                    bar.advance()
                    if ended == total:
                        break
    finally:
        bar.close()


async def main() -> None:
    total = 40
    async with triopool.open_pool(2) as pool:
        async with trio.open_nursery() as nursery:
            await nursery.start(show_progress, pool, total)
            for n in range(total):
                nursery.start_soon(pool.run_sync, score, n)
        stats = pool.statistics()
    print(f"done: {stats.tasks_completed} of {total}, failed: {stats.tasks_failed}")


if __name__ == "__main__":
    trio.run(main)

"""``python -m bench.memory POOL WORKERS``: memory of one pool, in a fresh process.

Prints JSON: the median resident memory of a worker, and how much the
parent's resident memory grew per worker once all of them were up and busy.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import tempfile
from typing import Any

import trio

from bench import adapters, workloads


async def _measure_async(adapter: Any, workers: int) -> dict[str, float]:
    # A first pool of one worker imports the library and runs its code paths
    # once, so that the growth measured next is per worker, not one-off.
    async with adapter.open(1) as pool:
        await pool.call(workloads.noop)
    gc.collect()
    before = workloads.resident_memory()
    stamps = []
    with tempfile.TemporaryDirectory() as directory:
        async with adapter.open(workers) as pool:

            async def one() -> None:
                stamps.append(
                    await pool.call(workloads.arrive_and_wait, directory, workers)
                )

            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(one)
            after = workloads.resident_memory()
    return _report(before, after, workers, stamps)


def _measure_sync(adapter: Any, workers: int) -> dict[str, float]:
    with adapter.open(1) as pool:
        pool.call(workloads.noop)
    gc.collect()
    before = workloads.resident_memory()
    with tempfile.TemporaryDirectory() as directory, adapter.open(workers) as pool:
        stamps = pool.run_window(
            workloads.arrive_and_wait, [(directory, workers)] * workers, workers
        )
        after = workloads.resident_memory()
    return _report(before, after, workers, stamps)


def _report(
    before: int, after: int, workers: int, stamps: list[Any]
) -> dict[str, float]:
    by_pid = {pid: rss for pid, _, rss in stamps}
    return {
        "worker_rss": statistics.median(by_pid.values()),
        "parent_per_worker": (after - before) / workers,
        "workers_seen": len(by_pid),
    }


def main() -> None:
    name, workers = sys.argv[1], int(sys.argv[2])
    (adapter,) = [a for a in adapters.ALL if a.name == name]
    if adapter.is_async:
        # Warm trio up first so that its own start-up is not counted.
        trio.run(trio.sleep, 0)
        report = trio.run(_measure_async, adapter, workers)
    else:
        report = _measure_sync(adapter, workers)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

"""Benchmark: worker recycling, ``max_tasks_per_child=1``.

Every task needs a new worker, so this measures how fast a pool replaces
workers: 8 tasks in flight on 2 workers, tasks per second, median of 3 runs,
for triopool (spawn, forkserver), multiprocessing.Pool (fork,
``maxtasksperchild=1``) and trio-parallel (spawn, forkserver; ``retire``
after every task), all in the same run.

Usage: ``python bench/recycling.py [--tasks N] [--repeat R]``, or
``nox -s bench_recycling`` (installs trio-parallel).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from typing import TYPE_CHECKING

# From the script's directory (sys.path[0]); workers get the same sys.path.
import _recycling_tasks as tasks
import trio

import triopool

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

WORKERS = 2
IN_FLIGHT = 8


async def _drive(run: Callable[[int], Awaitable[int]], count: int) -> float:
    """Run ``count`` tasks with IN_FLIGHT at a time; return tasks/s."""
    per_caller = count // IN_FLIGHT

    async def caller(start: int) -> None:
        for n in range(start, start + per_caller):
            assert await run(n) == n * n

    begin = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(IN_FLIGHT):
            nursery.start_soon(caller, i * per_caller)
    return per_caller * IN_FLIGHT / (time.perf_counter() - begin)


async def triopool_rate(method: str, count: int) -> float:
    # The fork server imports the task's module once, as a user would have it
    # do for the modules its tasks need; spawned workers import it each.
    preload = ["_recycling_tasks"] if method == "forkserver" else []
    async with triopool.open_pool(
        WORKERS,
        start_method=method,
        forkserver_preload=preload,
        max_tasks_per_child=1,
    ) as pool:
        await pool.run_sync(tasks.task, 0)  # the pool (and its server) is up

        async def run(n: int) -> int:
            return await pool.run_sync(tasks.task, n)

        return await _drive(run, count)


async def trio_parallel_rate(method: str, count: int) -> float:
    import trio_parallel

    worker_type = {
        "spawn": trio_parallel.WorkerType.SPAWN,
        "forkserver": trio_parallel.WorkerType.FORKSERVER,
    }[method]
    limiter = trio.CapacityLimiter(WORKERS)
    async with trio_parallel.open_worker_context(
        worker_type=worker_type, retire=tasks.always
    ) as context:
        await context.run_sync(tasks.task, 0, limiter=limiter)

        async def run(n: int) -> int:
            result: int = await context.run_sync(tasks.task, n, limiter=limiter)
            return result

        return await _drive(run, count)


def multiprocessing_rate(count: int) -> float:
    context = multiprocessing.get_context("fork")
    with context.Pool(WORKERS, maxtasksperchild=1) as pool:
        pool.apply(tasks.task, (0,))
        begin = time.perf_counter()
        # imap with chunksize 1 keeps the pool's queue fed; the pool itself
        # bounds the tasks running at once to its 2 workers.
        results = list(pool.imap(tasks.task, range(count), chunksize=1))
        rate = count / (time.perf_counter() - begin)
    assert results == [n * n for n in range(count)]
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400, help="tasks per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per pool")
    args = parser.parse_args()
    count = args.tasks
    try:
        import trio_parallel  # noqa: F401
    except ImportError:
        have_trio_parallel = False
        print("trio-parallel is not installed: skipping it", file=sys.stderr)
    else:
        have_trio_parallel = True

    candidates: dict[str, Callable[[int], float]] = {
        "triopool spawn": lambda n: trio.run(triopool_rate, "spawn", n),
        "triopool forkserver": lambda n: trio.run(triopool_rate, "forkserver", n),
        "multiprocessing.Pool fork": multiprocessing_rate,
    }
    if have_trio_parallel:
        candidates["trio-parallel spawn"] = lambda n: trio.run(
            trio_parallel_rate, "spawn", n
        )
        candidates["trio-parallel forkserver"] = lambda n: trio.run(
            trio_parallel_rate, "forkserver", n
        )
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    # Interleaved, so that a change in the machine's load hits every pool.
    for _ in range(args.repeat):
        for name, measure in candidates.items():
            # Spawn-based pools are ~20x slower: give them fewer tasks.
            n = count // 8 if name.endswith("spawn") else count
            rates[name].append(measure(max(n, IN_FLIGHT)))
    print(
        f"max_tasks_per_child=1, {IN_FLIGHT} tasks in flight on {WORKERS} workers, "
        f"median of {args.repeat} runs"
    )
    for name, values in rates.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:28} {statistics.median(values):8.1f} tasks/s   ({runs})")


if __name__ == "__main__":
    main()

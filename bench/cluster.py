"""The same calls on the local pool, Ray and Dask, with and without ``put``.

Three measurements per engine, all on this machine (Ray: a local cluster
started by ``ray.init``; Dask: a ``LocalCluster`` of worker processes), with
``--workers`` workers (CPUs) each:

- ``trivial``: 1,000 trivial tasks, all submitted at once (``run_sync`` from
  1,000 Trio tasks): what a call costs on the engine.
- ``argument``: a 64 MiB ``bytes`` argument used by 100 tasks, passed as it
  is: every call sends it again.
- ``put``: the same 100 tasks given ``await pool.put(data)`` instead, the
  ``put`` included in the time: the data crosses to each worker once.

Each time is the best of ``--runs`` runs (wall clock, seconds), measured
after the pool is open and warmed up (engine start-up is not measured).
An engine that is not installed is skipped.

Usage::

    python bench/cluster.py [--engines local,ray,dask] [--workers 2]
        [--runs 1] [--megabytes 64] [--quick]

``nox -s bench_cluster`` installs Ray and Dask and runs it (options after
``--``). ``--quick`` (a 1 MiB argument, 50 trivial tasks, 10 data tasks)
only checks that every path works.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import trio

import triopool

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

ENGINES = ("local", "ray", "dask")
NEEDS = {"ray": "ray", "dask": "distributed"}


def trivial(x: int) -> int:
    return x + 1


def first_byte(data: bytes, offset: int) -> int:
    """A task that needs all of ``data``, and does next to nothing with it."""
    return data[offset % len(data)]


def open_engine(name: str, workers: int) -> Any:
    if name == "local":
        return triopool.open_pool(workers)
    if name == "ray":
        return triopool.open_pool(backend=triopool.RayBackend(num_cpus=workers))
    backend = triopool.DaskBackend(n_workers=workers)
    return triopool.open_pool(backend=backend, kill_on_cancel=False)


async def all_at_once(count: int, call: Callable[[int], Awaitable[object]]) -> None:
    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(call, index)


async def best_of(runs: int, measure: Callable[[], Awaitable[None]]) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        await measure()
        best = min(best, time.perf_counter() - start)
    return best


async def bench_engine(
    name: str, workers: int, runs: int, trivial_tasks: int, data_tasks: int, data: bytes
) -> dict[str, float]:
    async with open_engine(name, workers) as pool:
        # Warm up: every worker started, the functions imported.
        await all_at_once(4 * workers, lambda i: pool.run_sync(trivial, i))

        async def trivial_calls() -> None:
            await all_at_once(trivial_tasks, lambda i: pool.run_sync(trivial, i))

        async def with_argument() -> None:
            await all_at_once(data_tasks, lambda i: pool.run_sync(first_byte, data, i))

        async def with_put() -> None:
            handle = await pool.put(data)
            use = functools.partial(first_byte, handle)
            await all_at_once(data_tasks, lambda i: pool.run_sync(use, i))
            pool.release(handle)

        return {
            "trivial": await best_of(runs, trivial_calls),
            "argument": await best_of(runs, with_argument),
            "put": await best_of(runs, with_put),
        }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    trivial_tasks, data_tasks, megabytes = 1000, 100, args.megabytes
    if args.quick:
        trivial_tasks, data_tasks, megabytes = 50, 10, 1
    data = os.urandom(megabytes << 20)
    print(
        f"{trivial_tasks} trivial tasks; a {megabytes} MiB bytes argument used by "
        f"{data_tasks} tasks; {args.workers} workers; best of {args.runs}; "
        "wall clock seconds"
    )
    print()
    print("| engine | trivial | argument | put | argument / put |")
    print("|---|---:|---:|---:|---:|")
    for name in args.engines.split(","):
        if name not in ENGINES:
            parser.error(f"unknown engine {name!r}; choose among {', '.join(ENGINES)}")
        needs = NEEDS.get(name)
        if needs is not None and importlib.util.find_spec(needs) is None:
            print(f"| {name} | not installed | | | |")
            continue
        times = trio.run(
            bench_engine,
            name,
            args.workers,
            args.runs,
            trivial_tasks,
            data_tasks,
            data,
        )
        print(
            f"| {name} | {times['trivial']:.2f} | {times['argument']:.2f} | "
            f"{times['put']:.2f} | {times['argument'] / times['put']:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])

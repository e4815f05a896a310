"""Throughput of ``Pool.imap`` against ``multiprocessing.Pool.imap``.

Runs a trivial function over N items with 2 workers, once per chunk size,
through triopool and through multiprocessing (same chunk size, spawn start
method for both), and prints items per second, the median of several runs.
Pool start-up is not measured: each pool is started and warmed up first.

Usage::

    python bench/map_vs_multiprocessing.py [--items 100000] [--runs 3]
        [--chunksizes 1,256] [--workers 2]

Self-contained: needs only triopool (and trio) installed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time

import trio

import triopool


def trivial(x: int) -> int:
    return x + 1


async def _triopool_runs(
    items: int, chunksize: int, runs: int, workers: int
) -> list[float]:
    rates = []
    async with triopool.open_pool(workers) as pool:
        await pool.map(trivial, range(workers * 4))  # every worker up and warm
        for _ in range(runs):
            start = time.perf_counter()
            count = 0
            async with pool.imap(trivial, range(items), chunksize=chunksize) as results:
                async for _value in results:
                    count += 1
            elapsed = time.perf_counter() - start
            assert count == items
            rates.append(items / elapsed)
    return rates


def triopool_rate(items: int, chunksize: int, runs: int, workers: int) -> float:
    return statistics.median(trio.run(_triopool_runs, items, chunksize, runs, workers))


def multiprocessing_rate(items: int, chunksize: int, runs: int, workers: int) -> float:
    rates = []
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        pool.map(trivial, range(workers * 4))
        for _ in range(runs):
            start = time.perf_counter()
            count = 0
            for _value in pool.imap(trivial, range(items), chunksize=chunksize):
                count += 1
            elapsed = time.perf_counter() - start
            assert count == items
            rates.append(items / elapsed)
    return statistics.median(rates)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunksizes", default="1,256")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    chunksizes = [int(size) for size in args.chunksizes.split(",")]
    print(
        f"{args.items} trivial items, {args.workers} workers, "
        f"median of {args.runs} runs (items/s)"
    )
    print(f"{'chunksize':>10} {'triopool':>12} {'multiprocessing':>16} {'ratio':>7}")
    for chunksize in chunksizes:
        ours = triopool_rate(args.items, chunksize, args.runs, args.workers)
        theirs = multiprocessing_rate(args.items, chunksize, args.runs, args.workers)
        print(f"{chunksize:>10} {ours:>12,.0f} {theirs:>16,.0f} {ours / theirs:>7.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])

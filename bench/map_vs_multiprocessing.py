"""Throughput of ``Pool.imap`` against ``multiprocessing.Pool.imap``.

Runs a trivial function over N items with 2 workers, once per chunk size,
through triopool and through multiprocessing (same chunk size, spawn start
method for both), and prints items per second, the median of several runs.
The chunk size ``default`` passes none: triopool's ``"auto"`` against
multiprocessing's own defaults (1 for ``imap``, ``len / (4 * workers)`` for
``map``).
Pool start-up is not measured: each pool is started and warmed up first.
``Pool.map`` is measured too: it takes results a chunk at a time, so it shows
what the per-result ``async for`` of ``imap`` costs.

Usage::

    python bench/map_vs_multiprocessing.py [--items 100000] [--runs 3]
        [--chunksizes default,1,256] [--workers 2] [--quick]

``nox -s bench_map`` runs it (options after ``--``). ``--quick`` (2,000
items, one run) only checks that every path works; the test suite runs it.

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


def _options(chunksize: int | None) -> dict[str, int]:
    """The chunksize argument to pass: none for each library's default."""
    return {} if chunksize is None else {"chunksize": chunksize}


async def _triopool_runs(
    items: int, chunksize: int | None, runs: int, workers: int
) -> tuple[list[float], list[float]]:
    imap_rates = []
    map_rates = []
    options = _options(chunksize)
    async with triopool.open_pool(workers) as pool:
        await pool.map(trivial, range(workers * 4))  # every worker up and warm
        for _ in range(runs):
            start = time.perf_counter()
            count = 0
            async with pool.imap(trivial, range(items), **options) as results:
                async for _value in results:
                    count += 1
            elapsed = time.perf_counter() - start
            assert count == items
            imap_rates.append(items / elapsed)
            start = time.perf_counter()
            values = await pool.map(trivial, range(items), **options)
            elapsed = time.perf_counter() - start
            assert len(values) == items
            map_rates.append(items / elapsed)
    return imap_rates, map_rates


def triopool_rates(
    items: int, chunksize: int | None, runs: int, workers: int
) -> tuple[float, float]:
    """Items/s of (imap, map), each the median of ``runs``."""
    imap_rates, map_rates = trio.run(_triopool_runs, items, chunksize, runs, workers)
    return statistics.median(imap_rates), statistics.median(map_rates)


def multiprocessing_rates(
    items: int, chunksize: int | None, runs: int, workers: int
) -> tuple[float, float]:
    """Items/s of (imap, map), each the median of ``runs``."""
    imap_rates = []
    map_rates = []
    options = _options(chunksize)
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        pool.map(trivial, range(workers * 4))
        for _ in range(runs):
            start = time.perf_counter()
            count = 0
            for _value in pool.imap(trivial, range(items), **options):
                count += 1
            elapsed = time.perf_counter() - start
            assert count == items
            imap_rates.append(items / elapsed)
            start = time.perf_counter()
            values = pool.map(trivial, range(items), **options)
            elapsed = time.perf_counter() - start
            assert len(values) == items
            map_rates.append(items / elapsed)
    return statistics.median(imap_rates), statistics.median(map_rates)


def _chunksize(text: str) -> int | None:
    return None if text == "default" else int(text)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--chunksizes",
        default="default,1,256",
        help="comma-separated ints, or 'default' for each library's default",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2,000 items and one run: checks that it works, measures nothing",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.runs = 2_000, 1
    chunksizes = [_chunksize(size) for size in args.chunksizes.split(",")]
    print(
        f"{args.items} trivial items, {args.workers} workers, "
        f"median of {args.runs} runs (items/s)"
    )
    print(
        f"{'chunksize':>10} {'triopool imap':>14} {'multiprocessing imap':>21} "
        f"{'ratio':>6} {'triopool map':>13} {'multiprocessing map':>20} {'ratio':>6}"
    )
    for chunksize in chunksizes:
        ours, ours_map = triopool_rates(args.items, chunksize, args.runs, args.workers)
        theirs, theirs_map = multiprocessing_rates(
            args.items, chunksize, args.runs, args.workers
        )
        label = "default" if chunksize is None else str(chunksize)
        print(
            f"{label:>10} {ours:>14,.0f} {theirs:>21,.0f} {ours / theirs:>6.2f} "
            f"{ours_map:>13,.0f} {theirs_map:>20,.0f} {ours_map / theirs_map:>6.2f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])

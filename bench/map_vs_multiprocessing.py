"""Throughput of ``Pool.map``/``imap`` against ``multiprocessing.Pool``'s.

Runs a trivial function over N items with 2 workers, once per chunk size,
through triopool and through multiprocessing (same chunk size, spawn start
method for both), and prints items per second, the median of ``--runs``
runs (one by default: the rows interleave the two libraries).
The chunk size ``default`` passes none: triopool's ``"auto"`` against
multiprocessing's own defaults (1 for ``imap``, ``len / (4 * workers)`` for
``map``).
Then, with each library's defaults, two CPU-bound inputs: 2,000 items of
1 ms of CPU each (ideal: N * 1 ms / workers), and a skewed input (5 % of the
items, at seeded random places, 100 times slower than the rest), with the
time from the start of the last item to the end of the call (the tail a
badly balanced schedule leaves).
Pool start-up is not measured: each pool is started and warmed up first.
``Pool.map`` is measured too: it takes results a chunk at a time, so it shows
what the per-result ``async for`` of ``imap`` costs.

Usage::

    python bench/map_vs_multiprocessing.py [--items 200000] [--runs 1]
        [--chunksizes default,1,16,256] [--workers 2] [--quick]

``nox -s bench_map`` runs it (options after ``--``). ``--quick`` (2,000
trivial items, few CPU items, one run) only checks that every path works;
the test suite runs it.

Self-contained: needs only triopool (and trio) installed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import time

import trio

import triopool


def trivial(x: int) -> int:
    return x + 1


def burn(seconds: float) -> float:
    """Spin the CPU for ``seconds``; return when it started (monotonic, which
    is one clock for every process on Linux)."""
    start = time.monotonic()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return start


#: The CPU-bound inputs: name -> item durations, in seconds.
def cpu_inputs(quick: bool) -> dict[str, list[float]]:
    count = 200 if quick else 2_000
    rng = random.Random(16)
    skewed = [0.0002] * count
    for index in rng.sample(range(count), count // 20):
        skewed[index] = 0.02
    return {f"{count} items of 1 ms": [0.001] * count, "skewed, 5% 100x": skewed}


async def _triopool_cpu(items: list[float], workers: int) -> tuple[float, float, float]:
    async with triopool.open_pool(workers) as pool:
        await pool.map(trivial, range(workers * 4))
        start = time.monotonic()
        starts = await pool.map(burn, items)
        end = time.monotonic()
    return end - start, end - max(starts), sum(items) / workers


def triopool_cpu(items: list[float], workers: int) -> tuple[float, float, float]:
    """(elapsed, last start to end, ideal) for ``map`` with its defaults."""
    return trio.run(_triopool_cpu, items, workers)


def multiprocessing_cpu(items: list[float], workers: int) -> tuple[float, float, float]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        pool.map(trivial, range(workers * 4))
        start = time.monotonic()
        starts = pool.map(burn, items)
        end = time.monotonic()
    return end - start, end - max(starts), sum(items) / workers


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
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--chunksizes",
        default="default,1,16,256",
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
        args.items, args.runs, args.chunksizes = 2_000, 1, "default,1,256"
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
    print()
    print(f"CPU-bound items, map with defaults, {args.workers} workers")
    print(
        f"{'input':>20} {'library':>16} {'seconds':>8} {'ideal':>6} "
        f"{'of ideal':>9} {'tail':>7}"
    )
    for name, items in cpu_inputs(args.quick).items():
        for library, measure in (
            ("triopool", triopool_cpu),
            ("multiprocessing", multiprocessing_cpu),
        ):
            elapsed, tail, ideal = measure(items, args.workers)
            print(
                f"{name:>20} {library:>16} {elapsed:>8.3f} {ideal:>6.3f} "
                f"{elapsed / ideal:>8.0%} {tail:>7.3f}"
            )


if __name__ == "__main__":
    main(sys.argv[1:])

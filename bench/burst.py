"""A burst after an idle period: how soon a pool that shrank to no workers
serves again.

The pool is opened with ``min_workers=0`` and a short ``idle_timeout``, run
until every worker is up, then left idle until all of them have exited. Then
a burst arrives: the time to the first result (one trivial task), and, after
the pool has shrunk again, the time until every worker runs a task of the
burst (a barrier task per worker, as in the cold-start benchmark). Medians
over the rounds, for spawn and forkserver. Part of ``nox -s bench``; run
alone with ``python -m bench.burst [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import trio

import triopool
from bench import workloads

IDLE_TIMEOUT = 0.2


async def _shrunk(pool: triopool.Pool) -> None:
    """Wait until every worker of the pool has exited while idle."""
    # Polled: the pool tells its statistics, not their changes.
    while True:
        if not pool.statistics().workers_alive:
            return
        await trio.sleep(0.01)


async def _busy(pool: triopool.Pool, workers: int) -> float | None:
    """Seconds from the burst until all ``workers`` run one of its tasks."""
    stamps: list[tuple[int, float, int]] = []
    with tempfile.TemporaryDirectory() as directory:
        start = time.monotonic()

        async def one() -> None:
            stamps.append(
                await pool.run_sync(workloads.arrive_and_wait, directory, workers)
            )

        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(one)
    if len({pid for pid, _, _ in stamps}) < workers:
        return None
    return max(started for _, started, _ in stamps) - start


async def measure(start_method: str, workers: int, rounds: int) -> dict[str, Any]:
    """Times to first result and to all busy (ms) after each shrink to 0."""
    firsts: list[float] = []
    busies: list[float] = []
    async with triopool.open_pool(
        workers,
        start_method=start_method,  # type: ignore[arg-type]
        min_workers=0,
        idle_timeout=IDLE_TIMEOUT,
    ) as pool:
        await _busy(pool, workers)  # every worker up once (and the fork server)
        for _ in range(rounds):
            await _shrunk(pool)
            start = time.perf_counter()
            await pool.run_sync(workloads.noop)
            firsts.append((time.perf_counter() - start) * 1000)
            await _shrunk(pool)
            busy = await _busy(pool, workers)
            if busy is not None:
                busies.append(busy * 1000)
        stats = pool.statistics()
    return {
        "start_method": start_method,
        "workers": workers,
        "rounds": rounds,
        "first_ms": statistics.median(firsts),
        "busy_ms": statistics.median(busies) if busies else None,
        "workers_started": stats.workers_started,
        "workers_stopped": stats.workers_stopped,
    }


def section(quick: bool) -> tuple[list[dict[str, Any]], str]:
    """Run the burst benchmark for both start methods; its rows and a
    Markdown table."""
    workers, rounds = (2, 1) if quick else (4, 5)
    rows = [
        trio.run(measure, method, workers, rounds) for method in ("spawn", "forkserver")
    ]
    lines = [
        f"Burst after an idle period (pool shrunk to 0 workers, {workers} "
        f"workers, idle_timeout={IDLE_TIMEOUT:g} s, median of {rounds}):",
        "",
        "| start method | first result | all workers busy |",
        "|---|---|---|",
    ]
    for row in rows:
        busy = "n/a" if row["busy_ms"] is None else f"{row['busy_ms']:.0f} ms"
        lines.append(f"| {row['start_method']} | {row['first_ms']:.0f} ms | {busy} |")
    return rows, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.burst", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 workers, one round")
    args = parser.parse_args(argv)
    _, table = section(args.quick)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

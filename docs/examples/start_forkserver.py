"""A fork server pool: modules imported once, workers forked cheaply."""

from __future__ import annotations

import os
from fractions import Fraction

import trio

import triopool


def harmonic(n: int) -> tuple[int, str]:
    """The n-th harmonic number, exactly, and the pid of the worker."""
    return os.getpid(), str(sum(Fraction(1, k) for k in range(1, n + 1)))


async def main() -> None:
    async with triopool.open_pool(
        2,
        start_method="forkserver",
        # Imported once, by the fork server: every worker starts with them.
        # In a real program: your heavy imports (numpy, ...) and task modules.
        forkserver_preload=["fractions", "decimal"],
        # A fresh worker per task costs a fork, not an interpreter start.
        max_tasks_per_child=1,
    ) as pool:
        # chunksize=1: one item per task, so each item gets a fresh worker
        # (by default, map sends quick items in chunks, a chunk per task).
        results = await pool.map(harmonic, range(1, 9), chunksize=1)
    print("H(8) =", results[-1][1])
    print("worker processes for 8 tasks:", len({pid for pid, _ in results}))


if __name__ == "__main__":
    trio.run(main)

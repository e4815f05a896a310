"""The pool API on a Ray cluster (the ``ray`` extra, see docs/cluster.rst)."""

from __future__ import annotations

import random
import sys
import time

import trio

import triopool


def simulate(seed: int) -> float:
    """A Monte Carlo estimate of pi (runs as a Ray task)."""
    rng = random.Random(seed)
    inside = sum(rng.random() ** 2 + rng.random() ** 2 <= 1 for _ in range(20_000))
    return 4 * inside / 20_000


async def main(address: str | None) -> None:
    # None starts a local Ray cluster that the pool owns and stops on exit;
    # "auto" or "host:port" connects to a running cluster and leaves it running.
    backend = triopool.RayBackend(address, num_cpus=2)  # num_cpus: a local cluster's
    async with triopool.open_pool(backend=backend) as pool:
        estimates = await pool.map(simulate, range(8))
        print(f"pi is about {sum(estimates) / len(estimates):.1f}")
        # Ray can kill a running task, so time limits work too (counted from
        # the moment the pool submits the task to Ray).
        try:
            await pool.run_sync(time.sleep, 60, time_limit=2.0)
        except triopool.TimeLimitExceeded as exc:
            print("killed after", exc.time_limit, "s")


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else None)

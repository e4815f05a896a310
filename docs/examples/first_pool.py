"""Getting started: run a CPU-bound function in worker processes from Trio."""

from __future__ import annotations

import functools

import trio

import triopool


def count_primes(limit: int, *, start: int = 2) -> int:
    """Count the primes in ``[start, limit)`` by trial division: slow on purpose."""
    count = 0
    for n in range(max(start, 2), limit):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            count += 1
    return count


async def main() -> None:
    async with triopool.open_pool(workers=2) as pool:
        # One call: the function and its arguments travel to a worker by pickle.
        print("primes below 50000:", await pool.run_sync(count_primes, 50_000))

        # Keyword arguments go through functools.partial.
        upper_half = functools.partial(count_primes, 50_000, start=25_000)
        print("primes in [25000, 50000):", await pool.run_sync(upper_half))

        # Many calls at once: each task waits for a free worker, in order.
        results: dict[int, int] = {}

        async def count_into(limit: int) -> None:
            results[limit] = await pool.run_sync(count_primes, limit)

        async with trio.open_nursery() as nursery:
            for limit in (10_000, 20_000, 30_000, 40_000):
                nursery.start_soon(count_into, limit)
        print("by limit:", dict(sorted(results.items())))


# The workers import this script to find count_primes: the guard keeps them
# from running main() themselves.
if __name__ == "__main__":
    trio.run(main)

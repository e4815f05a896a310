"""An asyncio program that runs its triopool part in a Trio run of its own thread."""

from __future__ import annotations

import asyncio

import trio

import triopool


def digit_sum(n: int) -> int:
    """Sum of the decimal digits of n (runs in a worker)."""
    return sum(map(int, str(n)))


async def crunch(exponents: list[int]) -> list[int]:
    """The Trio part: it owns the pool, from open to close."""
    async with triopool.open_pool(2) as pool:
        return await pool.map(digit_sum, [2**e for e in exponents])


async def main() -> None:
    # trio.run blocks its thread until it returns: give it a thread of its
    # own, so the asyncio loop keeps running meanwhile.
    sums = await asyncio.to_thread(trio.run, crunch, [100, 1000, 10000])
    print("digit sums:", sums)


if __name__ == "__main__":
    asyncio.run(main())

"""Count the primes below each of several limits, in worker processes."""

from __future__ import annotations

import trio

import triopool


def count_primes(limit: int) -> int:
    """A deliberately CPU-bound function: it runs in a worker process."""
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\x00\x00"
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit, n)))
    return sum(sieve)


async def main() -> None:
    limits = [10_000 * k for k in range(1, 41)]
    async with triopool.open_pool() as pool:
        # One result per item, in input order.
        counts = await pool.map(count_primes, limits)
        # Many quick items travel in chunks, one round trip per chunk, sized
        # from the measured item times (chunksize="auto", the default). The
        # results still come back one per item.
        words = [f"word{n}" for n in range(100_000)]
        lengths = await pool.map(len, words)
    for limit, count in zip(limits[:3], counts[:3], strict=False):
        print(f"{count} primes below {limit}")
    print(f"... and {counts[-1]} primes below {limits[-1]}")
    print(f"{len(lengths)} words, {sum(lengths)} characters")


if __name__ == "__main__":
    trio.run(main)

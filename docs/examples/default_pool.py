"""The default pool: triopool.run_sync() without opening a pool first."""

from __future__ import annotations

import trio

import triopool


def collatz_steps(n: int) -> int:
    """Steps of the Collatz sequence from n down to 1 (runs in a worker)."""
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


async def main() -> None:
    # The first call starts this run's default pool; it closes when the run ends.
    print("2 ** 100 =", await triopool.run_sync(pow, 2, 100))
    print("steps from 27:", await triopool.run_sync(collatz_steps, 27))


if __name__ == "__main__":
    trio.run(main)

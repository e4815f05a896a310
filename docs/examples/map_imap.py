"""imap: handle each result as it arrives."""

from __future__ import annotations

import math

import trio

import triopool


async def main() -> None:
    async with (
        triopool.open_pool(2) as pool,
        pool.imap(math.factorial, [10, 20, 30]) as results,
    ):
        async for value in results:
            print(f"{value.bit_length()} bits")


if __name__ == "__main__":
    trio.run(main)

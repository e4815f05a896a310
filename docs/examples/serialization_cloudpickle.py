"""Lambdas and closures as tasks, with the triopool[cloudpickle] extra."""

from __future__ import annotations

import trio

import triopool


async def main() -> None:
    factor = 3

    def scale(x: int) -> int:  # a closure: plain pickle cannot send it
        return x * factor

    async with triopool.open_pool(2) as pool:
        print("lambda:", await pool.run_sync(lambda x: x * factor, 14))
        print("closure:", await pool.map(scale, [1, 2, 3]))


if __name__ == "__main__":
    trio.run(main)

"""An asyncio program that runs Trio on its own loop, as a guest (one thread)."""

from __future__ import annotations

import asyncio
from typing import Any

import trio

import triopool


def digit_sum(n: int) -> int:
    """Sum of the decimal digits of n (runs in a worker)."""
    return sum(map(int, str(n)))


async def crunch(exponents: list[int]) -> list[int]:
    """The Trio part: it owns the pool, from open to close."""
    async with triopool.open_pool(2) as pool:
        return await pool.map(digit_sum, [2**e for e in exponents])


async def run_trio_guest(trio_main: Any, *args: Any) -> Any:
    """Run ``trio_main(*args)`` as a Trio guest on this asyncio loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    trio.lowlevel.start_guest_run(
        trio_main,
        *args,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        done_callback=done.set_result,
    )
    outcome = await done
    return outcome.unwrap()


async def main() -> None:
    sums = await run_trio_guest(crunch, [100, 1000, 10000])
    print("digit sums:", sums)


if __name__ == "__main__":
    asyncio.run(main())

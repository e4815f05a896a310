"""Feed a pool from an async source and handle results as they finish."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio

import triopool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def render(job: tuple[str, float]) -> str:
    """Pretend to render a page: some take longer than others."""
    name, seconds = job
    time.sleep(seconds)
    return name


async def incoming_jobs() -> AsyncIterator[tuple[str, float]]:
    """An async source, e.g. requests arriving over the network."""
    for n, seconds in enumerate([1.0, 0.1, 0.3, 0.1, 0.2]):
        await trio.sleep(0.01)
        yield f"page-{n}", seconds


async def main() -> None:
    async with (
        triopool.open_pool(2) as pool,
        pool.imap(render, incoming_jobs(), ordered=False) as results,
    ):
        done = []
        async for name in results:
            print(f"{name} done")  # slow page-0 is likely last
            done.append(name)
    print(f"all done: {sorted(done)}")


if __name__ == "__main__":
    trio.run(main)

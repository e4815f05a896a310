"""Follow a long map: a callable gets a snapshot of its progress."""

from __future__ import annotations

import trio

import triopool


def slow_square(x: int) -> int:
    sum(range(20_000))  # a little CPU work per item
    return x * x


def report(progress: triopool.MapProgress) -> None:
    # At most ten times a second, and once at the end.
    if progress.done == progress.total:
        print(f"all {progress.done} done, {progress.failed} failed")


async def main() -> None:
    async with triopool.open_pool(2) as pool:
        squares = await pool.map(slow_square, range(2_000), progress=report)
        print(f"sum of squares: {sum(squares)}")
        # progress=True draws a line on stderr when it is a terminal.
        await pool.map(slow_square, range(2_000), progress=True)


if __name__ == "__main__":
    trio.run(main)

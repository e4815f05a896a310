"""The first failing item stops the call; the pool keeps working."""

from __future__ import annotations

import traceback

import trio

import triopool


def parse(text: str) -> int:
    return int(text)  # ValueError for text that is not a number


async def main() -> None:
    async with triopool.open_pool(2) as pool:
        async with pool.imap(parse, ["1", "2", "three", "4"]) as results:
            try:
                async for number in results:
                    print(f"got {number}")
            except ValueError as exc:
                # The worker's exception, as itself, with the worker's
                # traceback attached; the call's other tasks were cancelled.
                print(f"stopped: {exc}")
                text = "".join(traceback.format_exception(exc))
                print(f"worker frame in traceback: {'in parse' in text}")
        # The pool is healthy: use it again.
        print(await pool.map(parse, ["5", "6"]))


if __name__ == "__main__":
    trio.run(main)

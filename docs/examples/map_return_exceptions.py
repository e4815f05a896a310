"""Keep going past failing items: each yields its exception in its place."""

from __future__ import annotations

import trio

import triopool


def parse(text: str) -> int:
    return int(text)  # ValueError for text that is not a number


async def main() -> None:
    async with triopool.open_pool(2) as pool:
        results = await pool.map(
            parse, ["1", "2", "three", "4"], return_exceptions=True
        )
        for text, result in zip(["1", "2", "three", "4"], results, strict=True):
            if isinstance(result, Exception):
                print(f"{text}: failed with {type(result).__name__}")
            else:
                print(f"{text}: {result}")


if __name__ == "__main__":
    trio.run(main)

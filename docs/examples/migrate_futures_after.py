"""After: the same work with triopool, from Trio code."""

from __future__ import annotations

import hashlib

import trio

import triopool


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


async def main() -> None:
    blobs = [bytes([i]) * 1_000_000 for i in range(4)]
    async with triopool.open_pool(workers=2) as pool:
        # submit(...).result() becomes one awaited call.
        one = await pool.run_sync(digest, blobs[0])
        print("one:", one)

        # executor.map becomes one task per item in a nursery (or Pool.map).
        results: list[str | None] = [None] * len(blobs)

        async def run(i: int) -> None:
            results[i] = await pool.run_sync(digest, blobs[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(blobs)):
                nursery.start_soon(run, i)
        print("all:", results)


if __name__ == "__main__":
    trio.run(main)

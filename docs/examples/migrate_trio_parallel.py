"""From trio-parallel: an explicit pool block instead of the global cache."""

from __future__ import annotations

import functools
import zlib

import trio

import triopool


def checksum(data: bytes, *, start: int = 0) -> int:
    return zlib.adler32(data, start + 1)


async def main() -> None:
    data = b"structured concurrency" * 10_000
    # trio_parallel.run_sync(fn, *args) uses workers cached for the whole
    # program; with triopool, the block below owns its workers and nothing
    # outlives it.
    async with triopool.open_pool(workers=2, kill_on_cancel=True) as pool:
        print("checksum:", await pool.run_sync(checksum, data))
        # Keyword arguments: functools.partial, as with trio-parallel.
        seeded = functools.partial(checksum, data, start=41)
        print("seeded:", await pool.run_sync(seeded))
        # Per-call options are keyword-only arguments of run_sync.
        print("limited:", await pool.run_sync(checksum, b"", time_limit=10))


if __name__ == "__main__":
    trio.run(main)

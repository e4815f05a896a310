"""Send a big object to the workers once, not once per task: pool.put()."""

from __future__ import annotations

import functools
import hashlib

import trio

import triopool


def digest_slice(data: bytes, start: int) -> str:
    """Hash 1 MiB of ``data`` from ``start``: a task that needs all of data."""
    return hashlib.sha256(data[start : start + (1 << 20)]).hexdigest()[:8]


async def main() -> None:
    data = bytes(range(256)) * (1 << 16)  # 16 MiB
    async with triopool.open_pool(2) as pool:
        # Pickled once, into a file each worker reads once and keeps.
        handle = await pool.put(data)
        print(f"put {handle.nbytes} bytes")
        # A task given the handle gets the bytes themselves.
        print("length in a worker:", await pool.run_sync(len, handle))
        # 16 tasks, one object: in a partial, the handle reaches every task.
        starts = range(0, len(data), 1 << 20)
        digests = await pool.map(functools.partial(digest_slice, handle), starts)
        print(f"{len(digests)} digests, all alike: {len(set(digests)) == 1}")
        # Free it early; otherwise it lives until the pool's block ends.
        pool.release(handle)


if __name__ == "__main__":
    trio.run(main)

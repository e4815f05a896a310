"""Raise this process's limit on open files before opening a large pool.

Run: python docs/examples/fd_limit.py
"""

from __future__ import annotations

import resource

import trio

import triopool


def square(n: int) -> int:
    return n * n


async def main() -> None:
    # The soft limit may go up to the hard one without special rights.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    print("room for fds:", soft == resource.RLIM_INFINITY or soft >= wanted)

    async with triopool.open_pool(2) as pool:
        print(await pool.map(square, range(5)))


if __name__ == "__main__":
    trio.run(main)

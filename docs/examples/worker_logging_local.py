"""Handle log records in each worker instead: forward_logs=False and an
initializer that configures logging there."""

from __future__ import annotations

import logging
import os
import sys

import trio

import triopool

log = logging.getLogger("thumbnails")


def setup_logging(level: int) -> None:
    """Runs once in each worker (replacements too), before it takes tasks."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s [worker {os.getpid()}] %(name)s %(levelname)s %(message)s",
    )


def make_thumbnail(name: str) -> str:
    log.info("resizing %s", name)
    return f"thumb-{name}"


async def main() -> None:
    async with triopool.open_pool(
        2, forward_logs=False, initializer=setup_logging, initargs=(logging.INFO,)
    ) as pool:
        print(await pool.map(make_thumbnail, ["a.jpg", "b.jpg"]))


if __name__ == "__main__":
    trio.run(main)

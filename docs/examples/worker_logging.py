"""Log in tasks, configure logging once, in the parent."""

from __future__ import annotations

import logging

import trio

import triopool

log = logging.getLogger("thumbnails")


def make_thumbnail(name: str) -> str:
    log.info("resizing %s", name)
    log.debug("not sent: the parent's level is INFO")
    return f"thumb-{name}"


async def main() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(
            "%(name)s %(levelname)s %(message)s [worker %(worker_index)s]",
            # The parent's own records have no worker fields.
            defaults={"worker_index": "-"},
        )
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    log.info("starting")
    async with triopool.open_pool(2) as pool:
        print(await pool.map(make_thumbnail, ["a.jpg", "b.jpg"]))


if __name__ == "__main__":
    trio.run(main)

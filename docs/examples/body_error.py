"""An exception raised in the pool's block leaves it as itself, not wrapped."""

from __future__ import annotations

import trio

import triopool


class ConfigError(Exception):
    pass


async def main() -> None:
    try:
        async with triopool.open_pool(workers=2) as pool:
            print("answer:", await pool.run_sync(pow, 2, 10))
            raise ConfigError("no such section: [server]")
    except ConfigError as exc:
        # A plain except clause works: no ExceptionGroup to unwrap, and by now
        # every worker has been killed and reaped.
        print("caught:", repr(exc))

    # After the block, the pool refuses work.
    try:
        await pool.run_sync(pow, 2, 10)
    except trio.ClosedResourceError:
        print("closed after the block")


if __name__ == "__main__":
    trio.run(main)

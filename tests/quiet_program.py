"""A Trio program that never configures logging, for ``test_log_events``.

Run as ``python -m tests.quiet_program START_METHOD`` from the project root.
Its pool does only what it was asked to: a worker recycled after its task, a
worker killed for a time limit that the program catches, a worker killed for
a cancellation. None of that is unexpected, so nothing may reach stderr
(Python prints records of WARNING and above there when logging is not
configured). It prints the pool's statistics on stdout as one JSON line.
"""

from __future__ import annotations

import json
import sys
from typing import Literal

import trio

import triopool
from tests import workerfuncs


async def main(start_method: Literal["spawn", "forkserver"]) -> None:
    async with triopool.open_pool(
        1,
        max_tasks_per_child=1,
        start_method=start_method,
    ) as pool:
        await pool.run_sync(workerfuncs.add, 1, 2)  # then recycled
        try:
            await pool.run_sync(workerfuncs.sleep, 30.0, time_limit=0.5)
        except triopool.TimeLimitExceeded:
            pass
        async with trio.open_nursery() as nursery:
            # Killed when cancelled, once it runs.
            nursery.start_soon(pool.run_sync, workerfuncs.sleep, 30.0)
            # Polling a counter: the pool offers no event for "it runs".
            while pool.statistics().tasks_running == 0:  # noqa: ASYNC110
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    stats = pool.statistics()  # every worker is reaped and counted by now
    print(
        json.dumps(
            {
                "recycled": stats.workers_recycled,
                "lost": stats.workers_lost,
                "cancelled": stats.tasks_cancelled,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    trio.run(main, "forkserver" if sys.argv[1] == "forkserver" else "spawn")

"""A Trio program using a pool, for the signal tests in ``test_lifecycle.py``.

Run as ``python -m tests.lifecycle_program MODE`` from the project root. It
talks to the test on stdout, one line per event:

- ``workers <pid> <pid>``: both workers are up;
- ``busy <pid>``: printed by a worker when it starts a long task (workers
  inherit stdout);
- ``signalled <tasks running>``, ``results <json>``, ``stats <json>``: what a
  program that handles SIGTERM saw;
- ``children <pid> ...``: this process's children right after the pool's
  block, however it was left (none, if the pool reaped its workers itself).

Modes:

- ``one-busy``: one worker runs a long task awaited by the main task, the
  other is idle (Ctrl-C, SIGKILL of the parent);
- ``all-busy``: both workers run long tasks started in a nursery (Ctrl-C,
  process-group SIGTERM with SIGTERM's default action);
- ``drain-on-sigterm``: on SIGTERM, stop and let the running tasks finish;
- ``cancel-on-sigterm``: on SIGTERM, cancel the running tasks.

Warnings and errors of the ``triopool`` logger go to stderr, so the test sees
any report the pool makes.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from typing import Any

import trio

import triopool
from tests import limitfuncs, workerfuncs
from tests.conftest import child_processes

LONG = 60.0


async def learn_worker_pids(pool: triopool.Pool) -> None:
    """Print the pids of both workers once both are up."""
    pids: set[int] = set()
    while len(pids) < 2:
        async with trio.open_nursery() as nursery:

            async def one() -> None:
                pids.add(await pool.run_sync(workerfuncs.sleep_then_pid, 0.2))

            nursery.start_soon(one)
            nursery.start_soon(one)
    print("workers", *sorted(pids), flush=True)


def report_children() -> None:
    print("children", *sorted(child_processes()), flush=True)


async def one_busy() -> None:
    try:
        async with triopool.open_pool(2) as pool:
            await learn_worker_pids(pool)
            await pool.run_sync(limitfuncs.announce_then_sleep, LONG)
    finally:
        report_children()


async def all_busy() -> None:
    try:
        async with triopool.open_pool(2) as pool:
            await learn_worker_pids(pool)
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(
                        pool.run_sync, limitfuncs.announce_then_sleep, LONG
                    )
    finally:
        report_children()


async def on_sigterm(*, drain: bool) -> None:
    seconds = 3.0 if drain else LONG
    results: list[Any] = []
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with triopool.open_pool(2) as pool:
            await learn_worker_pids(pool)
            async with trio.open_nursery() as nursery:

                async def task() -> None:
                    results.append(
                        await pool.run_sync(limitfuncs.announce_then_sleep, seconds)
                    )

                nursery.start_soon(task)
                nursery.start_soon(task)
                async for _ in signals:
                    print("signalled", pool.statistics().tasks_running, flush=True)
                    if not drain:
                        nursery.cancel_scope.cancel()
                    break
    stats = pool.statistics()
    print("results", json.dumps(sorted(results)), flush=True)
    print(
        "stats",
        json.dumps(
            {
                "tasks_completed": stats.tasks_completed,
                "tasks_failed": stats.tasks_failed,
                "tasks_cancelled": stats.tasks_cancelled,
                "workers_lost": stats.workers_lost,
                "workers_alive": stats.workers_alive,
            }
        ),
        flush=True,
    )


def main(mode: str) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if mode == "one-busy":
        trio.run(one_busy)
    elif mode == "all-busy":
        trio.run(all_busy)
    elif mode in ("drain-on-sigterm", "cancel-on-sigterm"):
        trio.run(lambda: on_sigterm(drain=mode == "drain-on-sigterm"))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1])

"""Configure the default pool before the run that uses it."""

from __future__ import annotations

import os

import trio

import triopool


def worker_pid() -> int:
    return os.getpid()


async def main() -> None:
    pids = [await triopool.run_sync(worker_pid) for _ in range(4)]
    # max_tasks_per_child=1: every call got a fresh worker process.
    print("distinct workers for 4 calls:", len(set(pids)))
    try:
        # Too late: this run's default pool has started with its options.
        triopool.configure_default_pool(workers=8)
    except RuntimeError as exc:
        print("RuntimeError:", exc)


if __name__ == "__main__":
    # Process-wide; read when a run's default pool starts.
    triopool.configure_default_pool(workers=2, max_tasks_per_child=1)
    trio.run(main)

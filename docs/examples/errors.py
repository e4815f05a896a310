"""Errors: a task's exception arrives as itself; the pool's own errors say why."""

from __future__ import annotations

import time
import traceback

import trio

import triopool


def parse_port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    return port


def spin(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


async def main() -> None:
    async with triopool.open_pool(workers=1) as pool:
        # The task's own exception: same type, same args, the worker's
        # traceback attached as its __cause__.
        try:
            await pool.run_sync(parse_port, "70000")
        except ValueError as exc:
            print("caught:", repr(exc))
            text = "".join(traceback.format_exception(exc))
            print("worker frame in traceback:", "in parse_port" in text)

        # A hard time limit kills the worker; the pool starts a new one.
        try:
            await pool.run_sync(spin, 60, time_limit=0.5)
        except triopool.TimeLimitExceeded as exc:
            print("time limit:", exc.time_limit, "s")

        # The replacement worker serves the next call.
        print("next call:", await pool.run_sync(parse_port, "8080"))
        stats = pool.statistics()
        print("workers lost:", stats.workers_lost, "tasks failed:", stats.tasks_failed)


if __name__ == "__main__":
    trio.run(main)

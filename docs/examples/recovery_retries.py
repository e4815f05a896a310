"""Retrying a task: after its worker died, and after its own exception.

Run: python docs/examples/recovery_retries.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import trio

import triopool


def fragile(marker: str) -> str:
    """Crashes its worker on its first run, as a rare bug in a C extension
    might (the marker file remembers that it ran)."""
    path = Path(marker)
    if not path.exists():
        path.touch()
        os._exit(1)
    return "fragile: done on its second run"


class ServiceBusy(Exception):
    """What a task calling an overloaded service might raise."""


def flaky(counter: str) -> int:
    """Raises ServiceBusy on its first two runs."""
    path = Path(counter)
    run = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(run))
    if run < 3:
        raise ServiceBusy(f"busy on run {run}")
    return run


def poison() -> None:
    """Kills every worker it runs on."""
    os._exit(1)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # By default a worker death is retried once.
        async with triopool.open_pool(2, retries=1) as pool:
            print(await pool.run_sync(fragile, os.path.join(tmp, "fragile")))
            # For one call: retry the task's own ServiceBusy, twice.
            run = await pool.run_sync(
                flaky,
                os.path.join(tmp, "flaky"),
                retries=2,
                retry_on=(ServiceBusy,),
            )
            print("flaky: succeeded on run", run)
            try:
                await pool.run_sync(poison)
            except triopool.BrokenWorkerError as exc:
                print("poison:", exc)
                print("poison: runs tried:", exc.runs)
        stats = pool.statistics()
        print("retried:", stats.tasks_retried, "workers lost:", stats.workers_lost)


if __name__ == "__main__":
    trio.run(main)

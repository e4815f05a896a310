"""Which worker runs a task: triopool.current_worker()."""

from __future__ import annotations

import trio

import triopool

# Set once per worker by the initializer: one port per slot, reused by the
# worker that replaces it.
port = 0


def pick_port() -> None:
    global port
    port = 9000 + triopool.current_worker().index


def describe(item: str) -> tuple[str, int]:
    me = triopool.current_worker()
    return f"{item}: slot {me.index}, port {port}, {me.tasks_done} done before", me.pid


async def main() -> None:
    async with triopool.open_pool(
        1, initializer=pick_port, max_tasks_per_child=2
    ) as pool:
        pids = []
        for item in ["a", "b", "c"]:
            text, pid = await pool.run_sync(describe, item)
            print(text)
            pids.append(pid)
    # The worker retired after two tasks; its replacement took slot 0.
    print("new process for c:", pids[2] != pids[0])


if __name__ == "__main__":
    trio.run(main)

"""The pool API on a Dask cluster (the ``dask`` extra, see docs/cluster.rst)."""

from __future__ import annotations

import sys

import trio

import triopool


def word_count(text: str) -> int:
    return len(text.split())


async def main(address: str | None) -> None:
    # None starts a LocalCluster that the pool owns and closes on exit; a
    # scheduler address such as "tcp://127.0.0.1:8786" connects to a running
    # cluster and leaves it running.
    backend = triopool.DaskBackend(address, n_workers=2)
    # kill_on_cancel=False: these tasks need not be stopped midway, so they
    # run in the Dask worker's thread (with True, the default, each runs in a
    # child process of its worker, which can be killed but costs a start).
    async with triopool.open_pool(backend=backend, kill_on_cancel=False) as pool:
        print("total:", await pool.run_sync(sum, range(10)))
        print("words:", await pool.map(word_count, ["a b c", "trio and dask"]))


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else None)

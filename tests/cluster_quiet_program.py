"""A Trio program on a cluster backend that never configures logging, for
``test_cluster_processes``.

Run as ``python -m tests.cluster_quiet_program ENGINE`` (``ray`` or ``dask``)
from the project root. Its pool starts an engine of its own, runs a task and
one that raises an exception the program catches: all expected, so nothing
may reach stderr. It prints on stdout, as one JSON line, what it got and how
many logging filters the pool left on the engine's loggers in this process.
"""

from __future__ import annotations

import json
import logging
import sys

import trio

import triopool
from tests import workerfuncs

LOGGERS = (
    "ray._private.worker",
    "ray._private.authentication.authentication_token_setup",
    "distributed.worker",
)


async def main(engine: str) -> None:
    backend: triopool.RayBackend | triopool.DaskBackend
    if engine == "ray":
        backend = triopool.RayBackend(num_cpus=1)
        kill_on_cancel = True
    else:
        backend = triopool.DaskBackend(n_workers=1)
        kill_on_cancel = False
    async with triopool.open_pool(
        backend=backend, kill_on_cancel=kill_on_cancel
    ) as pool:
        result = await pool.run_sync(workerfuncs.add, 1, 2)
        try:
            await pool.run_sync(workerfuncs.raise_value_error, "expected")
        except ValueError as exc:
            caught = str(exc)
    filters = sum(len(logging.getLogger(name).filters) for name in LOGGERS)
    print(json.dumps({"result": result, "caught": caught, "filters": filters}))


if __name__ == "__main__":
    trio.run(main, sys.argv[1])

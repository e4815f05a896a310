# pyright: basic
"""Mistakes that mypy --strict and pyright must each report: every line
marked ``# mistake`` must get an error from both, and no other line may.

pyright checks this file in its most lenient mode ("basic"), so what is
reported here is reported in every mode. Checked by ``nox -s typecheck``
(``python -m tests.typecheck.check``); never run. The main mypy run
(pyproject.toml) excludes this file, whose errors are its point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

import triopool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def add(a: int, b: int) -> int:
    return a + b


async def fetch(url: str) -> bytes:
    return url.encode()


async def lines(count: int) -> AsyncIterator[str]:
    for number in range(count):
        yield str(number)


class Client:
    async def get(self, url: str) -> bytes:
        return url.encode()


async def wrong_arguments(pool: triopool.Pool) -> None:
    await pool.run_sync(add, 1, "2")  # mistake
    await pool.run_sync(add, 1)  # mistake
    await pool.run_sync(add, 1, 2, 3)  # mistake
    await pool.run_sync(add, a=1, b=2)  # mistake
    await pool.map(add, [1, 2])  # mistake
    total: str = await pool.run_sync(add, 1, 2)  # mistake
    print(total)


async def async_functions(pool: triopool.Pool) -> None:
    await pool.run_sync(fetch, "https://example.org")  # mistake
    await pool.run_sync(fetch, 42)  # mistake
    await pool.run_sync(lines, 3)  # mistake
    await pool.run_sync(Client().get, "https://example.org")  # mistake
    await pool.run_sync(trio.sleep, 1)  # mistake
    await triopool.run_sync(fetch, "https://example.org")  # mistake


async def wrong_options(pool: triopool.Pool) -> None:
    await pool.run_sync(add, 1, 2, time_limit="5")  # mistake
    await pool.run_sync(add, 1, 2, soft_time_limit="5")  # mistake
    await pool.run_sync(add, 1, 2, kill_on_cancel=None)  # mistake
    await pool.run_sync(add, 1, 2, timeout=5)  # mistake
    await triopool.run_sync(add, 1, 2, time_limit="5")  # mistake


def wrong_pool_options() -> None:
    triopool.open_pool(start_method="fork")  # mistake
    triopool.open_pool(workers="2")  # mistake
    triopool.configure_default_pool(start_method="fork")  # mistake


async def a_cluster_pool_checks_calls_the_same_way() -> None:
    async with triopool.open_pool(backend=triopool.RayBackend()) as pool:
        await pool.run_sync(fetch, "https://example.org")  # mistake
        await pool.run_sync(add, 1, "2")  # mistake

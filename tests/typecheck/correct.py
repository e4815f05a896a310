# pyright: strict
"""Correct uses of triopool's API: mypy --strict and pyright (strict) must
accept every line, and infer the types that ``assert_type`` states.

Checked by ``nox -s typecheck`` (``python -m tests.typecheck.check``); never run.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NoReturn, assert_type

import trio

import triopool

if TYPE_CHECKING:
    from collections.abc import Callable


def add(a: int, b: int) -> int:
    return a + b


def shout(text: str, *, end: str = "!") -> str:
    return text.upper() + end


def give_up() -> NoReturn:
    raise SystemExit(1)


class Counter:
    def bump(self, by: int) -> int:
        return by


def where() -> int:
    me = triopool.current_worker()
    assert_type(me, triopool.WorkerInfo)
    assert_type(me.index, int)
    assert_type(me.tasks_done, int)
    return me.pid


async def use_a_pool() -> None:
    async with triopool.open_pool(
        2, start_method="forkserver", forward_logs=False
    ) as pool:
        assert_type(pool, triopool.Pool)
        assert_type(await pool.run_sync(add, 1, 2), int)
        assert_type(await pool.run_sync(shout, "hi"), str)
        assert_type(await pool.run_sync(functools.partial(shout, end="?"), "hi"), str)
        assert_type(await pool.run_sync(Counter().bump, 3), int)
        assert_type(await pool.run_sync(len, "abc"), int)
        assert_type(await pool.run_sync(int, "12"), int)
        assert_type(await pool.run_sync(add, 1, 2, time_limit=None), int)
        assert_type(await pool.run_sync(add, 1, 2, time_limit=2.5), int)
        limit: float | triopool.PoolDefault | None = triopool.POOL_DEFAULT
        assert_type(await pool.run_sync(add, 1, 2, soft_time_limit=limit), int)
        assert_type(await pool.run_sync(add, 1, 2, kill_on_cancel=False), int)
        assert_type(pool.statistics(), triopool.PoolStatistics)
        assert_type(await pool.run_sync(where), int)
        assert_type(await pool.map(len, ["a", "bc"]), list[int])
        assert_type(
            await pool.map(len, ["a"], return_exceptions=True), list[int | Exception]
        )
        async with pool.imap(len, ["a", "bc"], ordered=False) as lengths:
            assert_type(lengths, AsyncIterator[int])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run_sync, add, 1, 2)


async def results_typed_any_stay_any(
    pool: triopool.Pool,
    untyped: Callable[..., Any],
    loose: Callable[..., object],
    no_return: Callable[[], NoReturn],
) -> None:
    # An Any result could be anything, an awaitable included: it is accepted
    # (refusing it would make every Callable[..., Any] an error).
    assert_type(await pool.run_sync(untyped, 1, "two"), Any)
    assert_type(await pool.run_sync(loose, 1), object)
    await pool.run_sync(no_return)
    await pool.run_sync(give_up)


async def use_the_default_pool() -> None:
    triopool.configure_default_pool(workers=2, start_method="spawn")
    assert_type(await triopool.run_sync(add, 1, 2), int)
    assert_type(await triopool.run_sync(shout, "hi", time_limit=None), str)


def takes_a_pool(pool: triopool.Pool) -> None:
    pass


async def use_a_cluster() -> None:
    async with triopool.open_pool(
        backend=triopool.RayBackend(), kill_on_cancel=False
    ) as pool:
        # The same type as a local pool: code written for one takes both.
        assert_type(pool, triopool.Pool)
        takes_a_pool(pool)
        assert_type(await pool.run_sync(add, 1, 2, kill_on_cancel=False), int)
        assert_type(pool.statistics(), triopool.PoolStatistics)
        assert_type(await pool.map(len, ["a"]), list[int])

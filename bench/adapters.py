"""One adapter per pool under test, so that every benchmark drives them alike.

Async adapters (triopool, trio-parallel, anyio) run inside ``trio.run`` and
hand out ``call(fn, *args)``; "N concurrent callers" means N Trio tasks each
awaiting one call at a time. Sync adapters (concurrent.futures,
multiprocessing, the floor) have no event loop; "N concurrent callers" means N
tasks kept in flight. A peer that is not installed is skipped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import threading
from typing import TYPE_CHECKING, Any

import trio

from bench import workloads
from bench.floor import FloorPool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator


async def _nursery_map(
    call: Callable[..., Awaitable[Any]],
    fn: Callable[..., Any],
    items: list[Any],
    limit: int,
) -> list[Any]:
    """map() for pools without one: a nursery of calls under a CapacityLimiter."""
    results: list[Any] = [None] * len(items)
    limiter = trio.CapacityLimiter(limit)

    async def one(index: int, item: Any) -> None:
        async with limiter:
            results[index] = await call(fn, item)

    async with trio.open_nursery() as nursery:
        for index, item in enumerate(items):
            nursery.start_soon(one, index, item)
    return results


class AsyncHandle:
    """An open async pool: ``call``, ``map`` and what its map is."""

    def __init__(
        self,
        call: Callable[..., Awaitable[Any]],
        workers: int,
        map_fn: Callable[[Callable[..., Any], list[Any]], Awaitable[list[Any]]]
        | None = None,
    ) -> None:
        self.call = call
        self.workers = workers
        self._map = map_fn

    @property
    def map_label(self) -> str:
        return "map" if self._map is not None else "nursery + CapacityLimiter"

    async def map(self, fn: Callable[..., Any], items: list[Any]) -> list[Any]:
        if self._map is not None:
            return await self._map(fn, items)
        return await _nursery_map(self.call, fn, items, 2 * self.workers)


class Triopool:
    name = "triopool"
    is_async = True
    recycles = True

    @staticmethod
    def available() -> bool:
        return True

    @contextlib.asynccontextmanager
    async def open(
        self, workers: int, max_tasks: int | None = None
    ) -> AsyncIterator[AsyncHandle]:
        import triopool

        async with triopool.open_pool(workers, max_tasks_per_child=max_tasks) as pool:
            pool_map = getattr(pool, "map", None)
            yield AsyncHandle(pool.run_sync, workers, pool_map)


class TrioParallel:
    name = "trio-parallel"
    is_async = True
    recycles = True

    @staticmethod
    def available() -> bool:
        try:
            import trio_parallel  # noqa: F401
        except ImportError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def open(
        self, workers: int, max_tasks: int | None = None
    ) -> AsyncIterator[AsyncHandle]:
        import trio_parallel

        if max_tasks not in (None, 1):
            raise ValueError("only max_tasks=1 is wired up for trio-parallel")
        retire = workloads.always if max_tasks == 1 else bool
        limiter = trio.CapacityLimiter(workers)
        async with trio_parallel.open_worker_context(retire=retire) as context:

            async def call(fn: Callable[..., Any], *args: Any) -> Any:
                return await context.run_sync(fn, *args, limiter=limiter)

            yield AsyncHandle(call, workers)


class AnyioToProcess:
    name = "anyio.to_process"
    is_async = True
    recycles = False

    @staticmethod
    def available() -> bool:
        try:
            import anyio.to_process  # noqa: F401
        except ImportError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def open(
        self, workers: int, max_tasks: int | None = None
    ) -> AsyncIterator[AsyncHandle]:
        # anyio keeps one process pool per event loop and stops it when the
        # loop ends: the benchmarks run each pool in a trio.run of its own.
        import anyio
        import anyio.to_process

        limiter = anyio.CapacityLimiter(workers)

        async def call(fn: Callable[..., Any], *args: Any) -> Any:
            return await anyio.to_process.run_sync(fn, *args, limiter=limiter)

        yield AsyncHandle(call, workers)


class SyncHandle:
    """An open blocking pool: ``call``, ``run_window`` and ``map``."""

    map_label = "map(chunksize=1)"

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def run_window(
        self, fn: Callable[..., Any], arglists: list[tuple[Any, ...]], window: int
    ) -> list[Any]:
        raise NotImplementedError

    def map(self, fn: Callable[..., Any], items: list[Any]) -> list[Any]:
        raise NotImplementedError


class _FuturesHandle(SyncHandle):
    def __init__(self, executor: concurrent.futures.ProcessPoolExecutor) -> None:
        self._executor = executor

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._executor.submit(fn, *args).result()

    def run_window(
        self, fn: Callable[..., Any], arglists: list[tuple[Any, ...]], window: int
    ) -> list[Any]:
        slots = threading.Semaphore(window)
        futures = []
        for args in arglists:
            slots.acquire()
            future = self._executor.submit(fn, *args)
            future.add_done_callback(lambda _: slots.release())
            futures.append(future)
        return [future.result() for future in futures]

    def map(self, fn: Callable[..., Any], items: list[Any]) -> list[Any]:
        return list(self._executor.map(fn, items, chunksize=1))


class Futures:
    name = "concurrent.futures"
    is_async = False
    recycles = True

    @staticmethod
    def available() -> bool:
        return True

    @contextlib.contextmanager
    def open(self, workers: int, max_tasks: int | None = None) -> Iterator[SyncHandle]:
        # The default context (fork on Linux); max_tasks_per_child needs spawn.
        context = multiprocessing.get_context("spawn") if max_tasks else None
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, max_tasks_per_child=max_tasks
        ) as executor:
            yield _FuturesHandle(executor)


class _MultiprocessingHandle(SyncHandle):
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._pool.apply(fn, args)

    def run_window(
        self, fn: Callable[..., Any], arglists: list[tuple[Any, ...]], window: int
    ) -> list[Any]:
        slots = threading.Semaphore(window)
        pending = []
        for args in arglists:
            slots.acquire()
            pending.append(
                self._pool.apply_async(
                    fn,
                    args,
                    callback=lambda _: slots.release(),
                    error_callback=lambda _: slots.release(),
                )
            )
        return [result.get() for result in pending]

    def map(self, fn: Callable[..., Any], items: list[Any]) -> list[Any]:
        return self._pool.map(fn, items, chunksize=1)  # type: ignore[no-any-return]


class Multiprocessing:
    name = "multiprocessing.Pool"
    is_async = False
    recycles = True

    @staticmethod
    def available() -> bool:
        return True

    @contextlib.contextmanager
    def open(self, workers: int, max_tasks: int | None = None) -> Iterator[SyncHandle]:
        pool = multiprocessing.Pool(workers, maxtasksperchild=max_tasks)
        try:
            yield _MultiprocessingHandle(pool)
        finally:
            pool.close()
            pool.join()


class _FloorHandle(SyncHandle):
    map_label = "pipelined, 2 per worker"

    def __init__(self, pool: FloorPool, workers: int) -> None:
        self._pool = pool
        self._workers = workers

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._pool.call(fn, *args)

    def run_window(
        self, fn: Callable[..., Any], arglists: list[tuple[Any, ...]], window: int
    ) -> list[Any]:
        return self._pool.run_window(fn, arglists, window)

    def map(self, fn: Callable[..., Any], items: list[Any]) -> list[Any]:
        return self._pool.run_window(fn, [(item,) for item in items], 2 * self._workers)


class Floor:
    name = "floor (raw pipe + pickle)"
    is_async = False
    recycles = False

    @staticmethod
    def available() -> bool:
        return True

    @contextlib.contextmanager
    def open(self, workers: int, max_tasks: int | None = None) -> Iterator[SyncHandle]:
        with FloorPool(workers) as pool:
            yield _FloorHandle(pool, workers)


ALL = [
    Triopool(),
    TrioParallel(),
    AnyioToProcess(),
    Futures(),
    Multiprocessing(),
    Floor(),
]

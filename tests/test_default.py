"""The default pool: triopool.run_sync without open_pool, one pool per run.

Each test runs its own ``trio.run`` in a thread, so that the run, and with it
the default pool, has ended when the leak check after the test looks for
leftover processes and fds.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

import pytest
import trio

import triopool
from tests import workerfuncs
from tests.conftest import child_processes, open_fds
from tests.test_backend_pool import ThreadBackend
from triopool import _default, _pool

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

TIMEOUT = 60


@pytest.fixture(autouse=True)
def default_configuration() -> Iterator[None]:
    """Start and end each test with the default configuration (it is
    process-wide)."""
    triopool.configure_default_pool()
    yield
    triopool.configure_default_pool()


async def in_new_run(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``fn`` in a trio.run of its own, in a thread, and return its result."""

    async def main() -> Any:
        with trio.fail_after(TIMEOUT):
            return await fn()

    return await trio.to_thread.run_sync(functools.partial(trio.run, main))


def default_pool() -> triopool.Pool:
    pool = _default._RUN_STATE.get().pool
    assert pool is not None
    return pool


async def test_run_sync_without_a_pool() -> None:
    async def main() -> tuple[int, int]:
        return await triopool.run_sync(workerfuncs.add, 2, 3), os.getpid()

    result, pid = await in_new_run(main)
    assert result == 5
    assert pid == os.getpid()


async def test_concurrent_first_uses_start_one_pool() -> None:
    triopool.configure_default_pool(workers=2)

    async def main() -> tuple[set[int], triopool.PoolStatistics]:
        pids: set[int] = set()

        async def one() -> None:
            pids.add(await triopool.run_sync(workerfuncs.sleep_then_pid, 0.05))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one)
        return pids, default_pool().statistics()

    pids, stats = await in_new_run(main)
    assert stats.workers == 2
    assert stats.workers_started == 2
    assert stats.tasks_completed == 10
    assert 1 <= len(pids) <= 2
    assert os.getpid() not in pids


async def test_the_end_of_the_run_stops_the_pool() -> None:
    fds_before = open_fds()

    async def main() -> int:
        return await triopool.run_sync(os.getpid)

    pid = await in_new_run(main)
    assert pid not in child_processes()
    assert not await trio.Path(f"/proc/{pid}").exists()
    assert open_fds() - fds_before == set()


async def test_each_run_has_its_own_pool() -> None:
    triopool.configure_default_pool(workers=1)

    async def main() -> tuple[int, triopool.Pool]:
        return await triopool.run_sync(os.getpid), default_pool()

    first_pid, first_pool = await in_new_run(main)
    second_pid, second_pool = await in_new_run(main)
    assert first_pool is not second_pool
    assert first_pid != second_pid
    with pytest.raises(trio.ClosedResourceError):
        await first_pool.run_sync(os.getpid)


async def test_configuration_applies_to_the_pool() -> None:
    triopool.configure_default_pool(
        workers=1,
        initializer=workerfuncs.initializer_records,
        initargs=("configured",),
        max_tasks_per_child=1,
    )

    async def main() -> tuple[list[Any], int, int]:
        initialized = await triopool.run_sync(workerfuncs.initialized)
        first = await triopool.run_sync(os.getpid)
        second = await triopool.run_sync(os.getpid)
        return initialized, first, second

    initialized, first, second = await in_new_run(main)
    assert initialized == [("configured",)]
    assert first != second  # max_tasks_per_child=1 replaced the worker


async def test_configure_after_start_raises_and_keeps_the_pool() -> None:
    triopool.configure_default_pool(workers=1)

    async def main() -> int:
        await triopool.run_sync(os.getpid)
        with pytest.raises(RuntimeError, match="already started"):
            triopool.configure_default_pool(workers=2)
        return default_pool().statistics().workers

    assert await in_new_run(main) == 1
    # The configuration in force is still the one the pool started with.
    assert _default._options.workers == 1


async def test_configure_from_a_thread_of_the_run_raises_too() -> None:
    # A trio.to_thread thread is part of the run: its default pool is up.
    triopool.configure_default_pool(workers=1)
    reconfigure = functools.partial(triopool.configure_default_pool, workers=2)

    async def main() -> int:
        # Before the pool starts, configuring from a thread is fine.
        await trio.to_thread.run_sync(reconfigure)
        await triopool.run_sync(os.getpid)
        with pytest.raises(RuntimeError, match="already started"):
            await trio.to_thread.run_sync(
                functools.partial(triopool.configure_default_pool, workers=3)
            )
        return default_pool().statistics().workers

    assert await in_new_run(main) == 2
    assert _default._options.workers == 2


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"workers": 0}, ValueError, "workers must be >= 1, got 0"),
        ({"start_timeout": -1}, ValueError, "start_timeout must be > 0"),
        ({"start_method": "fork"}, ValueError, "start_method must be"),
        ({"initializer": 3}, TypeError, "initializer must be callable"),
        ({"forkserver_preload": "numpy"}, TypeError, "forkserver_preload must be"),
        ({"initargs": "ab"}, TypeError, "initargs must be a sequence"),
        (
            {"time_limit": 1, "soft_time_limit": 2},
            ValueError,
            "soft_time_limit must be < time_limit",
        ),
    ],
)
async def test_configure_validates_like_open_pool(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    triopool.configure_default_pool(workers=3)
    before = _default._options
    with pytest.raises(error, match=message):
        triopool.configure_default_pool(**options)
    assert _default._options == before


async def test_configure_without_arguments_restores_the_defaults() -> None:
    triopool.configure_default_pool(workers=1, max_tasks_per_child=3)
    triopool.configure_default_pool()
    assert _default._options.workers is None
    assert _default._options.max_tasks_per_child is None


async def test_errors_and_options_pass_through() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="from the task"):
            await triopool.run_sync(workerfuncs.raise_value_error, "from the task")
        with pytest.raises(triopool.TimeLimitExceeded):
            await triopool.run_sync(workerfuncs.sleep, 30, time_limit=0.2)
        assert await triopool.run_sync(workerfuncs.add, 1, 1) == 2

    triopool.configure_default_pool(workers=1)
    await in_new_run(main)


async def test_cancelled_before_the_pool_starts() -> None:
    async def main() -> bool:
        with trio.CancelScope() as scope:
            scope.cancel()
            await triopool.run_sync(os.getpid)
        # The call never got as far as starting the default pool.
        with pytest.raises(LookupError):
            _default._RUN_STATE.get()
        return scope.cancelled_caught

    assert await in_new_run(main)


async def test_a_pool_that_cannot_start_fails_the_callers() -> None:
    triopool.configure_default_pool(
        workers=1, initializer=workerfuncs.initializer_fails, max_start_failures=1
    )

    async def main() -> None:
        with pytest.raises(triopool.BrokenPoolError):
            await triopool.run_sync(os.getpid)

    await in_new_run(main)


async def test_configure_takes_every_open_pool_option() -> None:
    import inspect

    def parameters(fn: Callable[..., Any]) -> dict[str, Any]:
        return {
            name: (parameter.kind, parameter.default)
            for name, parameter in inspect.signature(fn).parameters.items()
        }

    assert parameters(triopool.configure_default_pool) == parameters(_pool.open_pool)


async def test_configure_with_a_backend() -> None:
    backend = ThreadBackend(capacity=2)
    triopool.configure_default_pool(backend=backend)

    async def main() -> tuple[int, bool, bool]:
        pid = await triopool.run_sync(os.getpid)
        return pid, isinstance(default_pool(), triopool.Pool), backend.stopped

    pid, is_a_pool, stopped_during_the_run = await in_new_run(main)
    # The fake engine runs calls in threads of this process.
    assert pid == os.getpid()
    assert is_a_pool  # the one public type, whatever runs the tasks
    assert backend.started
    assert not stopped_during_the_run
    assert backend.stopped  # when the run ended


async def test_configure_checks_options_against_the_backend() -> None:
    before = _default._options
    with pytest.raises(ValueError, match="max_memory_per_child"):
        triopool.configure_default_pool(
            backend=ThreadBackend(), max_memory_per_child=10**9
        )
    assert _default._options == before


async def test_public_names() -> None:
    for name in ("run_sync", "configure_default_pool"):
        assert name in triopool.__all__
        assert getattr(triopool, name).__module__ == "triopool"

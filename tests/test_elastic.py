"""Elasticity and age, against real worker processes: idle workers above
``min_workers`` exit after ``idle_timeout`` and come back when work waits;
``max_lifetime_per_child`` retires a worker at its first idle moment.

Every test bounds its run with ``trio.fail_after`` and is checked for leaked
fds and processes by the autouse fixture in ``conftest.py``. Waits poll the
statistics; no duration is asserted.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import pytest
import trio

import triopool
from tests import elasticfuncs, workerfuncs
from triopool import _default, _hooks
from triopool._config import DEFAULTS, Options
from triopool._stats import identity_problems

if TYPE_CHECKING:
    from pathlib import Path

    from triopool._stats import PoolStatistics

pytestmark = pytest.mark.usefixtures("start_method")


async def until(pool: triopool.Pool, holds: Any) -> PoolStatistics:
    """Poll the pool's statistics until ``holds(stats)``; return them."""
    while True:
        stats = pool.statistics()
        if holds(stats):
            return stats
        await trio.sleep(0.02)


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


def _lifetime(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records of workers retired for their age."""
    return [
        r for r in events(caplog, "retired") if getattr(r, "reason", "") == "lifetime"
    ]


async def meet_all(pool: triopool.Pool, directory: Path, count: int) -> set[int]:
    """Run ``count`` tasks that finish only once ``count`` workers run them
    at the same time; the workers' pids."""
    results: list[tuple[int, int]] = []

    async def one() -> None:
        results.append(
            await pool.run_sync(elasticfuncs.meet, str(directory), count, 60.0)
        )

    await trio.Path(directory).mkdir()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    assert [seen for _, seen in results] == [count] * count
    return {pid for pid, _ in results}


async def test_idle_workers_exit_down_to_min_workers_and_come_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triopool")
    with trio.fail_after(120):
        async with triopool.open_pool(3, min_workers=1, idle_timeout=0.2) as pool:
            first = await meet_all(pool, tmp_path / "first", 3)
            assert len(first) == 3
            stats = await until(pool, lambda s: s.workers_stopped == 2)
            assert (stats.workers, stats.workers_alive) == (3, 1)
            # The one kept stays: it is not stopped below min_workers.
            await trio.sleep(0.6)
            assert pool.statistics().workers_alive == 1
            # Work waits: the two slots start workers again, all three run.
            again = await meet_all(pool, tmp_path / "again", 3)
            assert len(again) == 3
            assert len(again & first) == 1
            stats = await until(pool, lambda s: s.workers_stopped == 4)
        final = pool.statistics()
    assert identity_problems(stats) == []
    assert identity_problems(final) == []
    assert (stats.workers_started, stats.workers_alive) == (5, 1)
    assert (final.workers_lost, final.workers_recycled, final.start_failures) == (
        0,
        0,
        0,
    )
    assert final.workers_stopped == 5
    idle = [r for r in events(caplog, "stopped") if getattr(r, "reason", "") == "idle"]
    assert len(idle) == 4
    assert all(r.levelno == logging.INFO for r in idle)
    assert {getattr(r, "worker_pid", None) for r in idle} <= first | again


async def test_a_pool_shrunk_to_zero_serves_again() -> None:
    with trio.fail_after(120):
        async with triopool.open_pool(2, min_workers=0, idle_timeout=0.1) as pool:
            stats = await until(pool, lambda s: s.workers_stopped == 2)
            assert stats.workers_alive == 0
            assert await pool.run_sync(workerfuncs.add, 2, 3) == 5
            results = await pool.map(workerfuncs.identity, range(50))
            assert results == list(range(50))
            stats = await until(
                pool, lambda s: s.workers_alive == 0 and s.workers_started > 2
            )
    assert identity_problems(stats) == []
    assert stats.workers_lost == stats.start_failures == 0
    assert stats.workers_started == stats.workers_stopped >= 3


async def test_lifetime_retires_only_between_tasks_with_write_ahead(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="triopool")
    ahead = 0

    def trace(event: _hooks.Trace) -> None:
        nonlocal ahead
        ahead += event.kind == "written ahead"

    results: list[tuple[int, int]] = []

    async def caller(start: int) -> None:
        for x in range(start, start + 150):
            results.append(await pool.run_sync(elasticfuncs.echo_with_pid_and_age, x))

    with trio.fail_after(120), _hooks.installed(ahead_after=3600.0, trace=trace):
        async with triopool.open_pool(
            2, max_tasks_per_child=10**6, max_lifetime_per_child=0.1
        ) as pool:
            # Long enough for workers to pass their age with tasks ahead.
            # Rounds of 600 short tasks from 4 callers (so that tasks queue and
            # go ahead) until a worker has retired for its age, or 10 rounds.
            for _ in range(10):
                base = len(results)
                async with trio.open_nursery() as nursery:
                    for start in range(0, 600, 150):
                        nursery.start_soon(caller, base + start)
                if pool.statistics().workers_recycled and _lifetime(caplog):
                    break
        stats = pool.statistics()
    assert ahead >= 1
    assert sorted(x for x, _ in results) == list(range(len(results)))
    assert stats.tasks_failed == stats.tasks_cancelled == 0
    assert stats.tasks_completed == len(results)
    assert stats.workers_lost == 0
    assert stats.workers_recycled >= 1
    assert identity_problems(stats) == []
    assert not events(caplog, "lost")
    assert _lifetime(caplog)


async def test_an_idle_worker_past_its_age_is_retired(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="triopool")
    with trio.fail_after(120):
        async with triopool.open_pool(1, max_lifetime_per_child=0.3) as pool:
            first = await pool.run_sync(workerfuncs.getpid)
            await until(pool, lambda s: s.workers_recycled >= 1)
            second = await pool.run_sync(workerfuncs.getpid)
        stats = pool.statistics()
    assert first != second
    assert stats.workers_lost == 0
    assert identity_problems(stats) == []
    assert first in {getattr(r, "worker_pid", None) for r in _lifetime(caplog)}


def test_the_default_pool_releases_workers_idle_for_ten_minutes() -> None:
    options = _default._elastic(DEFAULTS, None)
    assert (options.min_workers, options.idle_timeout) == (0, 600.0)
    # Anything configured is kept as given.
    kept = Options(min_workers=1, idle_timeout=30.0)
    assert _default._elastic(kept, None) is kept
    never = Options(min_workers=0, idle_timeout=math.inf)
    assert _default._elastic(never, None) is never
    assert not never.config().elastic
    # A cluster backend sizes itself: nothing is added.
    backend = triopool.RayBackend()
    assert _default._elastic(DEFAULTS, backend) is DEFAULTS


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"workers": 2, "min_workers": 3, "idle_timeout": 1.0},
            ValueError,
            r"^min_workers must be <= workers, got min_workers=3 and workers=2$",
        ),
        (
            {"idle_timeout": 5.0},
            ValueError,
            r"^idle_timeout=5.0 needs min_workers.*pass min_workers=0",
        ),
        ({"min_workers": 1}, ValueError, r"^min_workers=1 needs idle_timeout"),
        (
            {"min_workers": -1, "idle_timeout": 1.0},
            ValueError,
            r"^min_workers must be >= 0, got -1$",
        ),
        (
            {"min_workers": True, "idle_timeout": 1.0},
            TypeError,
            r"^min_workers must be an int or None, got True$",
        ),
        (
            {"min_workers": 0, "idle_timeout": 0},
            ValueError,
            r"^idle_timeout must be > 0, got 0$",
        ),
        (
            {"max_lifetime_per_child": -1.0},
            ValueError,
            r"^max_lifetime_per_child must be > 0, got -1.0$",
        ),
        (
            {"max_lifetime_per_child": "1"},
            TypeError,
            r"^max_lifetime_per_child must be a number of seconds",
        ),
    ],
)
def test_bad_elastic_options_are_refused(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        triopool.open_pool(**options)
    with pytest.raises(error, match=message):
        triopool.configure_default_pool(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"min_workers": 0, "idle_timeout": 5.0},
        {"max_lifetime_per_child": 60.0},
    ],
)
def test_cluster_backends_refuse_elastic_options(options: dict[str, Any]) -> None:
    name = next(iter(options))
    for backend in (triopool.RayBackend(), triopool.DaskBackend()):
        with pytest.raises(
            ValueError, match=rf"does not support {name}=.*sizes them|decides"
        ):
            triopool.open_pool(
                backend=backend, start_method="spawn", kill_on_cancel=False, **options
            )

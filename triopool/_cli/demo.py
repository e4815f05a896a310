"""``triopool demo``: a CPU-bound job, sequentially and through a pool, and why Trio.

The job counts primes (:mod:`triopool._demo`, the worker side, which never
imports trio). Everything runs in one Trio program, beside a *heartbeat*: a
task that wants to wake every :data:`HEARTBEAT_PERIOD` seconds and records how
late it woke. During the sequential run the calls block the event loop, so the
heartbeat is late by up to a call's length; through the pool the work runs in
other processes and the heartbeat stays on time. Then one stuck task is
cancelled with :func:`trio.move_on_after`, and the summary shows its worker
killed and replaced (the statistics before and after).

Whether other programs competed for the CPUs is judged from CPU time measured
against wall time (:func:`busy_note`), not from the load average, which lags
by a minute and counts processes that are only waiting for I/O.
"""

from __future__ import annotations

import math
import os
import random
import resource
import sys
import time
from typing import TYPE_CHECKING

import attrs
import trio

from .. import BrokenPoolError, TriopoolError, _demo, open_pool
from .._progress import Progress, rate
from .parser import PROG
from .terminal import pool_log_through, pool_status

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from .. import Pool, PoolStatistics

#: How often the heartbeat wants to wake, in seconds.
HEARTBEAT_PERIOD = 0.05
#: How long the stuck task runs before :func:`trio.move_on_after` cancels it.
CANCEL_AFTER = 0.5
#: How long to wait for the pool to settle (a worker up) before giving up.
_SETTLE_TIMEOUT = 30.0
#: The shortest pool run whose CPU use says whether the machine is busy.
_JUDGED_POOL_TIME = 1.0

#: How long the task that is cancelled would take: it sleeps (a task stuck
#: in a call), so its CPU time does not blur the pool's CPU figures.
_STUCK_FOR = 7 * 24 * 3600


class Heartbeat:
    """A task that ticks every ``period`` seconds and measures its lateness.

    Ticks are counted per *phase* (``"sequential"``, ``"pool"``): lateness is
    how long after its deadline a tick's task ran. A tick missed entirely is
    skipped, not made up in a burst.
    """

    def __init__(self, period: float) -> None:
        self.period = period
        self.phase: str | None = None
        self.ticks: dict[str, int] = {}
        self.max_late: dict[str, float] = {}

    def enter(self, phase: str | None) -> None:
        """Count the following ticks for ``phase`` (``None``: for none)."""
        self.phase = phase
        if phase is not None:
            self.ticks.setdefault(phase, 0)
            self.max_late.setdefault(phase, 0.0)

    async def run(self) -> None:
        """Tick until cancelled."""
        deadline = trio.current_time() + self.period
        while True:
            await trio.sleep_until(deadline)
            now = trio.current_time()
            if self.phase is not None:
                self.ticks[self.phase] += 1
                self.max_late[self.phase] = max(
                    self.max_late[self.phase], now - deadline
                )
            while deadline <= now:
                deadline += self.period


@attrs.frozen
class CancelReport:
    """What cancelling one running task did to the pool."""

    before: PoolStatistics
    after: PoolStatistics
    #: From the end of the cancelled call to the replacement's start and to
    #: every worker being up again (None: not seen in time).
    started_after: float | None
    up_after: float | None


async def _wait_for(
    pool: Pool, ready: Callable[[PoolStatistics], bool], since: float
) -> float | None:
    """Seconds from ``since`` until ``ready(pool.statistics())``, polled."""
    with trio.move_on_after(_SETTLE_TIMEOUT):
        # Polled: the statistics are a snapshot, with no change notification.
        while not ready(pool.statistics()):  # noqa: ASYNC110
            await trio.sleep(0.001)
        return trio.current_time() - since
    return None


async def cancel_one(pool: Pool) -> CancelReport:
    """Start a task stuck for a week, cancel it with
    :func:`trio.move_on_after`, and watch its worker be replaced."""
    workers = pool.statistics().workers
    # Start from a settled pool, so the counters move for this task only.
    await _wait_for(pool, lambda s: s.workers_idle == workers, trio.current_time())
    before = pool.statistics()
    with trio.move_on_after(CANCEL_AFTER):
        await pool.run_sync(time.sleep, _STUCK_FOR)
    cancelled = trio.current_time()
    started_after = await _wait_for(
        pool,
        lambda s: (
            s.workers_started > before.workers_started
            and s.workers_lost > before.workers_lost
        ),
        cancelled,
    )
    up_after = await _wait_for(pool, lambda s: s.workers_idle == workers, cancelled)
    return CancelReport(before, pool.statistics(), started_after, up_after)


def busy_note(
    *,
    sequential_cpu: float,
    sequential_time: float,
    workers_cpu: float,
    pool_time: float,
    workers: int,
    cpus: int,
) -> str | None:
    """A note when other programs took CPU time from the runs, else None.

    Judged from what the runs got: the sequential run, pure computation,
    should keep one CPU busy; the pool's workers, ``min(workers, cpus)`` CPUs,
    less starting them and the last tasks, which weigh too much in a run
    shorter than :data:`_JUDGED_POOL_TIME` to judge it.
    """
    sequential_share = sequential_cpu / sequential_time if sequential_time > 0 else 1
    usable = min(workers, cpus)
    pool_cpus = workers_cpu / pool_time if pool_time > 0 else usable
    pool_starved = pool_time >= _JUDGED_POOL_TIME and pool_cpus < 0.7 * usable
    if sequential_share >= 0.9 and not pool_starved:
        return None
    return (
        "note:       other programs competed for the CPUs: the sequential run "
        f"got {sequential_share:.2f} of a CPU, the pool's workers "
        f"{pool_cpus:.2f} of {usable}, so the speed-up is lower, and the "
        "heartbeat later, than on an idle machine"
    )


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _children_cpu_time() -> float:
    """CPU seconds used by this process's reaped children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpus(cpu_seconds: float, wall_seconds: float) -> str:
    if wall_seconds <= 0:
        return "-"
    return f"{cpu_seconds / wall_seconds:.2f} CPUs busy"


def _ticks(count: int) -> str:
    return f"{count} tick" if count == 1 else f"{count} ticks"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


async def _sequential(
    ranges: list[tuple[int, int]], progress: Progress
) -> tuple[list[int], float, float]:
    """Count in this process, as a plain call would: the expected results,
    the wall time and this process's CPU time."""
    tasks = len(ranges)
    expected: list[int] = []
    start = time.perf_counter()
    cpu_start = time.process_time()
    for index, (low, high) in enumerate(ranges):
        # Blocks the event loop for the whole call: the heartbeat waits.
        expected.append(_demo.count_primes(low, high))
        elapsed = time.perf_counter() - start
        progress.draw(
            f"sequential  {index + 1}/{tasks}  {rate(index + 1, elapsed)}",
            force=index + 1 == tasks,
        )
        await trio.lowlevel.checkpoint()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    progress.done(
        f"sequential  {tasks}/{tasks} tasks in {elapsed:.2f} s"
        f"  ({rate(tasks, elapsed)})"
    )
    return expected, elapsed, cpu


async def _pool_run(
    pool: Pool,
    ranges: list[tuple[int, int]],
    doomed: set[int],
    progress: Progress,
    heartbeat: Heartbeat,
    start: float,
) -> tuple[list[int | BaseException | None], float]:
    tasks = len(ranges)
    workers = pool.statistics().workers
    results: list[int | BaseException | None] = [None] * tasks
    done = 0
    # At most this many calls wait at once: memory stays bounded for any --tasks.
    limiter = trio.CapacityLimiter(2 * workers)

    async def run_one(index: int) -> None:
        nonlocal done
        low, high = ranges[index]
        try:
            results[index] = await pool.run_sync(
                _demo.count_primes_or_die, low, high, index in doomed
            )
        except TriopoolError as exc:
            results[index] = exc
        finally:
            limiter.release_on_behalf_of(index)
        done += 1

    def render() -> str:
        elapsed = trio.current_time() - start
        late = _ms(heartbeat.max_late.get("pool"))
        return (
            f"pool  {done}/{tasks}  {rate(done, elapsed)}  heartbeat late at most"
            f" {late}  {pool_status(pool)}"
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(progress.run, render)
        async with trio.open_nursery() as calls:
            for index in range(tasks):
                await limiter.acquire_on_behalf_of(index)
                calls.start_soon(run_one, index)
        nursery.cancel_scope.cancel()
    elapsed = trio.current_time() - start
    progress.done(
        f"pool  {tasks}/{tasks} tasks in {elapsed:.2f} s  ({rate(tasks, elapsed)})"
        f"  {pool_status(pool)}"
    )
    return results, elapsed


async def run(args: argparse.Namespace) -> int:
    """``triopool demo``; returns the exit status."""
    tasks: int = args.tasks
    ranges = [_demo.task_range(index) for index in range(tasks)]
    doomed: set[int] = set()
    if args.chaos > 0:
        count = max(1, round(tasks * args.chaos))
        doomed = set(random.Random(2026).sample(range(tasks), min(count, tasks)))
    progress = Progress(sys.stderr, enabled=True)
    first, last = ranges[0][0], ranges[-1][1]
    print(
        f"{PROG} demo: counting the primes between {first:,} and {last:,} "
        f"in {tasks} tasks of {_demo.SPAN:,} numbers",
        file=sys.stderr,
    )
    heartbeat = Heartbeat(HEARTBEAT_PERIOD)
    cancel: CancelReport | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat.run)
        # Sequential: the same function, called in this process.
        heartbeat.enter("sequential")
        expected, sequential_time, sequential_cpu = await _sequential(ranges, progress)
        heartbeat.enter(None)
        children_cpu = _children_cpu_time()
        # The pool run's time and heartbeat include starting the workers.
        heartbeat.enter("pool")
        start = trio.current_time()
        with pool_log_through(progress):
            async with open_pool(
                args.workers, max_tasks_per_child=args.max_tasks_per_child
            ) as pool:
                workers = pool.statistics().workers
                results, pool_time = await _pool_run(
                    pool, ranges, doomed, progress, heartbeat, start
                )
                heartbeat.enter(None)
                if not any(isinstance(r, BrokenPoolError) for r in results):
                    cancel = await cancel_one(pool)
        nursery.cancel_scope.cancel()
    # After the block: retirements still under way at the end are counted,
    # and the workers are reaped, so their CPU time is in RUSAGE_CHILDREN.
    stats = pool.statistics()
    workers_cpu = _children_cpu_time() - children_cpu
    broken = next((r for r in results if isinstance(r, BrokenPoolError)), None)
    if broken is not None:
        # Every task failed the same way: one message, not one per task.
        print(f"{PROG} demo: error: the pool broke: {broken}", file=sys.stderr)
        return 1
    assert cancel is not None

    matched = sum(
        1
        for index, result in enumerate(results)
        if index not in doomed and result == expected[index]
    )
    wrong = [
        index
        for index, result in enumerate(results)
        if index not in doomed and result != expected[index]
    ]
    killed = [
        index for index in sorted(doomed) if isinstance(results[index], TriopoolError)
    ]
    speedup = sequential_time / pool_time if pool_time > 0 else math.inf
    out = sys.stdout
    print(
        f"sequential: {tasks} tasks in {sequential_time:6.2f} s"
        f"  ({rate(tasks, sequential_time)}), 1 process",
        file=out,
    )
    print(
        f"pool:       {tasks} tasks in {pool_time:6.2f} s"
        f"  ({rate(tasks, pool_time)}), {workers} workers"
        " (worker start-up included)",
        file=out,
    )
    print(f"speed-up:   {speedup:.2f}x with {workers} workers", file=out)
    print(
        f"cpu:        sequential {_cpus(sequential_cpu, sequential_time)}, "
        f"pool workers {_cpus(workers_cpu, pool_time)} on average",
        file=out,
    )
    note = busy_note(
        sequential_cpu=sequential_cpu,
        sequential_time=sequential_time,
        workers_cpu=workers_cpu,
        pool_time=pool_time,
        workers=workers,
        cpus=_usable_cpus(),
    )
    if note is not None:
        print(note, file=out)
    print(
        "heartbeat:  a task of this Trio program asks to wake every"
        f" {HEARTBEAT_PERIOD * 1000:.0f} ms",
        file=out,
    )
    for phase, label, why in (
        ("sequential", "sequential run:", "each call blocks the event loop"),
        ("pool", "pool run:      ", "the work runs in the workers"),
    ):
        print(
            f"              {label} {_ticks(heartbeat.ticks[phase])}, at most"
            f" {_ms(heartbeat.max_late[phase])} late ({why})",
            file=out,
        )
    before, after = cancel.before, cancel.after
    print(
        f"cancel:     trio.move_on_after({CANCEL_AFTER}) cancelled a task stuck"
        f" in time.sleep({_STUCK_FOR}) in a worker;",
        file=out,
    )
    print(
        "              its worker was killed, a new one started"
        f" {_ms(cancel.started_after)} later and was up after"
        f" {_ms(cancel.up_after)}",
        file=out,
    )
    print(
        f"              (workers_started {before.workers_started} ->"
        f" {after.workers_started}, workers_lost {before.workers_lost} ->"
        f" {after.workers_lost})",
        file=out,
    )
    print(
        f"results:    {matched} of {tasks - len(doomed)} match the sequential run"
        f" ({sum(expected):,} primes)",
        file=out,
    )
    if doomed:
        print(
            f"chaos:      {len(killed)} of {len(doomed)} tasks killed their worker"
            " on purpose and failed with:",
            file=out,
        )
        for index in killed[:3]:
            error = results[index]
            print(
                f"              task {index}: {type(error).__name__}: {error}", file=out
            )
        if len(killed) > 3:
            print(f"              ... and {len(killed) - 3} more", file=out)
    print(
        f"workers:    started {stats.workers_started}, recycled"
        f" {stats.workers_recycled}, lost {stats.workers_lost}, start failures"
        f" {stats.start_failures}",
        file=out,
    )
    print(
        f"tasks:      completed {stats.tasks_completed}, failed"
        f" {stats.tasks_failed}, cancelled {stats.tasks_cancelled}",
        file=out,
    )
    for index in wrong:
        print(
            f"{PROG} demo: task {index}: expected {expected[index]}, "
            f"got {results[index]!r}",
            file=sys.stderr,
        )
    return 1 if wrong or len(killed) != len(doomed) else 0

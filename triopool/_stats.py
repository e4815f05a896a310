"""The pool's counters, their identities, and the snapshot that
:meth:`Pool.statistics` returns.

Task counters live in :class:`~triopool._jobs.Jobs` (every change of a job's
state moves them, through its one table); worker counters in
:class:`WorkerCounters`, moved by the slots. Both obey the identities that
:func:`identity_problems` checks, which the tests hold after every storm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from ._jobs import Jobs


@attrs.define(eq=False)
class WorkerCounters:
    """The worker counters of ``statistics()``, moved by the slots."""

    alive: int = 0
    started: int = 0
    recycled: int = 0
    lost: int = 0
    start_failures: int = 0
    stopped: int = 0


@attrs.frozen
class PoolStatistics:
    """A snapshot of a pool's state, from :meth:`Pool.statistics`.

    The worker counters satisfy ``workers_started == workers_alive +
    workers_recycled + workers_lost + start_failures + workers_stopped``, and
    once nothing is in flight ``tasks_submitted == tasks_completed +
    tasks_failed + tasks_cancelled``.

    Attributes:
        workers: The target number of workers (``open_pool``'s ``workers``),
            which an elastic pool (``min_workers``) may run fewer of while idle.
        workers_alive: Worker processes started and not yet reaped, starting
            ones included.
        workers_idle: Workers that are up and waiting for a task.
        workers_busy: Workers running a task.
        tasks_waiting: Tasks submitted and not yet handed to a worker.
        tasks_running: Tasks handed to a worker and not yet finished.
        tasks_completed: Tasks that returned a value.
        tasks_failed: Tasks that raised, in the worker or because the worker
            died or hit a time limit.
        tasks_cancelled: Tasks whose caller was cancelled before they ended.
        tasks_submitted: All tasks ever submitted.
        workers_started: Worker starts so far, replacements included. An
            attempt that could not even create the process (no fds left,
            say) counts here too, and as a start failure, and so does a fork
            server that failed to start or died before forking (it stood
            between the pool and its next worker), so the identity above
            holds whatever happens.
        workers_recycled: Retired by ``max_tasks_per_child``,
            ``max_memory_per_child`` or ``max_lifetime_per_child``.
        workers_lost: Died unexpectedly, or killed by a time limit, a
            cancellation or a desynchronised pipe.
        start_failures: Failed starts (initializer error, early exit, start
            timeout, no process could be created).
        workers_stopped: Stopped because the pool closed or broke, or
            because they idled for ``idle_timeout`` above ``min_workers``.
    """

    workers: int
    workers_alive: int
    workers_idle: int
    workers_busy: int
    tasks_waiting: int
    tasks_running: int
    tasks_completed: int
    tasks_failed: int
    tasks_cancelled: int
    tasks_submitted: int
    workers_started: int
    workers_recycled: int
    workers_lost: int
    start_failures: int
    workers_stopped: int


def snapshot(workers: int, jobs: Jobs, counters: WorkerCounters) -> PoolStatistics:
    """The statistics of a pool of ``workers`` with these counters."""
    waiting, running, completed, failed, cancelled = jobs.counts
    return PoolStatistics(
        workers=workers,
        workers_alive=counters.alive,
        workers_idle=len(jobs.idle),
        workers_busy=running,
        tasks_waiting=waiting,
        tasks_running=running,
        tasks_completed=completed,
        tasks_failed=failed,
        tasks_cancelled=cancelled,
        tasks_submitted=jobs.submitted,
        workers_started=counters.started,
        workers_recycled=counters.recycled,
        workers_lost=counters.lost,
        start_failures=counters.start_failures,
        workers_stopped=counters.stopped,
    )


def identity_problems(stats: PoolStatistics) -> list[str]:
    """The identities ``stats`` breaks (none, for a correct pool).

    Always: ``workers_started == workers_alive + workers_recycled +
    workers_lost + start_failures + workers_stopped`` and ``tasks_submitted
    == tasks_waiting + tasks_running + tasks_completed + tasks_failed +
    tasks_cancelled``; no counter is negative.
    """
    problems = [
        f"{name} is negative: {value}"
        for name, value in attrs.asdict(stats).items()
        if value < 0
    ]
    accounted = (
        stats.workers_alive
        + stats.workers_recycled
        + stats.workers_lost
        + stats.start_failures
        + stats.workers_stopped
    )
    if stats.workers_started != accounted:
        problems.append(
            f"workers_started {stats.workers_started} != alive + recycled + lost "
            f"+ start_failures + stopped {accounted}"
        )
    tasks = (
        stats.tasks_waiting
        + stats.tasks_running
        + stats.tasks_completed
        + stats.tasks_failed
        + stats.tasks_cancelled
    )
    if stats.tasks_submitted != tasks:
        problems.append(
            f"tasks_submitted {stats.tasks_submitted} != waiting + running + "
            f"completed + failed + cancelled {tasks}"
        )
    return problems

"""The pool's counters, their identities, and the snapshot that
:meth:`Pool.statistics` returns.

Task counters live in :class:`~triopool._jobs.Jobs` (every change of a job's
state moves them, through its one table); worker counters in
:class:`WorkerCounters`, moved by the slots. Both obey the identities that
:func:`identity_problems` checks, which the tests hold after every storm.

Per-worker insight (:meth:`Pool.insight`) is kept in one :class:`SlotBook`
per slot: the slot records its workers' starts, ups and ends, and
``Jobs.end`` each job that ended on one of them. Invariant: the ``tasks_done``
of all slots add up to the tasks completed or failed on a worker, which is
``tasks_completed + tasks_failed`` except for tasks failed before any worker
took them (the pool broke or closed first).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Final

import attrs
import trio

if TYPE_CHECKING:
    from ._jobs import Job, Jobs
    from ._pipeline import Pipeline

#: How many of a slot's longest tasks :class:`WorkerInsight` keeps.
LONGEST_TASKS: Final = 5


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
    tasks_failed + tasks_cancelled``. A retried task is still one task: its
    runs after the first are counted in ``tasks_retried`` only, and while it
    waits to run again it counts as waiting.

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
        tasks_retried: Runs started again after a failure named in
            ``retry_on`` (``retries``): a task that succeeded on its third run
            counts 2 here. With a cluster backend the engine retries on its
            own, unseen, and this stays 0.
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
    tasks_retried: int = 0


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
        tasks_retried=jobs.retried,
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


@attrs.frozen
class WorkerInsight:
    """What one slot's workers did, from :meth:`Pool.insight`.

    A slot is one of the pool's ``workers`` places; its worker is replaced
    when it retires or dies, and the numbers cover all of that slot's
    workers so far. Times are in seconds, measured in the pool's process:
    a task's time runs from the moment its worker had it whole to the moment
    its outcome came back (for a task whose worker died or hit the time
    limit, to the moment the pool noticed).

    Attributes:
        index: The slot, ``0 <= index < workers`` (as in
            :class:`WorkerEvent`).
        pid: The pid of the slot's worker that is up now; ``None`` while it
            has none (starting, or replaced).
        workers_started: Worker processes started in this slot.
        tasks_done: Tasks that completed or failed on its workers (cancelled
            ones are not counted).
        busy_time: Time its workers spent on tasks, the running one
            included.
        idle_time: Time its workers were up and had no task.
        startup_time: How long its latest worker took from its start to
            reporting up (imports and initializer included); ``None``
            before one is up.
        longest_tasks: Its longest tasks so far, longest first, at most five:
            ``(function's qualified name, seconds)`` pairs.
    """

    index: int
    pid: int | None
    workers_started: int
    tasks_done: int
    busy_time: float
    idle_time: float
    startup_time: float | None
    longest_tasks: tuple[tuple[str, float], ...]


@attrs.define(eq=False)
class SlotBook:
    """One slot's insight, kept as its workers and their tasks go."""

    index: int
    #: The slot's worker that is up (serving), and its pipeline.
    pid: int | None = None
    pipeline: Pipeline | None = None
    workers_started: int = 0
    tasks_done: int = 0
    busy_time: float = 0.0
    #: Up time of its workers that no longer serve, and since when the
    #: serving one is up.
    up_time: float = 0.0
    up_since: float | None = None
    start_at: float = 0.0
    startup_time: float | None = None
    #: (-seconds, name), shortest last: bisect keeps it sorted.
    longest: list[tuple[float, str]] = attrs.field(factory=list)

    def worker_started(self, now: float) -> None:
        self.workers_started += 1
        self.start_at = now

    def worker_up(self, pid: int, pipeline: Pipeline, now: float) -> None:
        self.pid = pid
        self.pipeline = pipeline
        self.up_since = now
        self.startup_time = now - self.start_at

    def worker_down(self, pid: int, now: float) -> None:
        """The worker ``pid`` serves no more (idempotent)."""
        if self.pid != pid or self.up_since is None:
            return
        self.up_time += now - self.up_since
        self.up_since = None
        self.pid = None
        self.pipeline = None

    def task_ended(self, job: Job, now: float | None) -> None:
        finished = job.finished_at
        if finished is None:
            finished = trio.current_time() if now is None else now
        sent = job.sent_at
        seconds = 0.0 if sent is None else max(0.0, finished - sent)
        self.tasks_done += 1
        self.busy_time += seconds
        longest = self.longest
        if len(longest) < LONGEST_TASKS or -seconds < longest[-1][0]:
            bisect.insort(longest, (-seconds, job.function_name()))
            del longest[LONGEST_TASKS:]

    def insight(self, now: float) -> WorkerInsight:
        busy = self.busy_time
        up = self.up_time
        if self.up_since is not None:
            up += now - self.up_since
        pipeline = self.pipeline
        if pipeline is not None and pipeline.sent:
            job = pipeline.current
            if job is not None and job.sent_at is not None:
                busy += max(0.0, now - job.sent_at)  # the task it runs now
        return WorkerInsight(
            index=self.index,
            pid=self.pid,
            workers_started=self.workers_started,
            tasks_done=self.tasks_done,
            busy_time=busy,
            idle_time=max(0.0, up - busy),
            startup_time=self.startup_time,
            longest_tasks=tuple((name, -neg) for neg, name in self.longest),
        )

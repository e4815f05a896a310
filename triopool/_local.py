"""The local scheduler: a job queue served by worker processes in slots.

Shape: while :meth:`LocalScheduler.running` runs, a supervising nursery holds
one *slot* task per worker (see ``_slots``; with
``start_method="forkserver"``, also one task owning the fork server). A slot
loops: each turn starts a task for one worker, which opens it (``async with
open_worker()``), waits for it to report up, serves jobs until the worker
retires, dies or the pool closes, and leaves the block, which kills, reaps and
closes everything of that worker. :meth:`LocalScheduler.run` puts a job in
the queue (``_jobs``) and parks its caller until the job ends.

Invariants:

- A worker is touched only by its owning task and that task's feeder, inside
  its ``async with`` (see ``_worker``); a slot has at most one serving
  worker, plus one that is exiting.
- A job is in exactly one place at a time: the waiting queue, handed to one
  idle worker, running on one worker, or finished. Only a worker that is up
  and idle takes a job, so a job never reaches one that is starting or
  retiring.
- Every job ends: its caller gets a result or an error, or was cancelled and
  stopped waiting. Nothing is left hanging, whatever happens to the workers.
- A call costs its caller no task switch beyond the one wait for its outcome.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

import trio

from . import _context, _events, _hooks, _messages, _stats
from ._config import POOL_DEFAULT, PoolDefault, _usable_cpus, retries_task_errors
from ._jobs import Job, Jobs, JobState
from ._slots import Slots

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from ._config import PoolConfig, RetryOn
    from ._events import EventStream
    from ._stats import PoolStatistics, WorkerInsight


class LocalScheduler:
    """Runs a pool's calls in its own worker processes (a :class:`Scheduler`
    of ``_scheduler``)."""

    def __init__(self, config: PoolConfig) -> None:
        self._config = config
        self._main_importable = _messages.main_module() != (None, None)
        self._closed = False
        self._nursery: trio.Nursery | None = None
        self._thread: int | None = None  # of the run that opened it (see _open)
        self._jobs = Jobs()
        self._retry_errors = retries_task_errors(config.retry_on)
        self._feed = _events.Feed()
        self._slots = Slots(
            config,
            _messages.worker_config(
                config.initializer, config.initargs, config.max_memory_per_child
            ),
            self._jobs,
            _usable_cpus(),
            _hooks.current(),
        )

    @property
    def time_limit(self) -> float | None:
        return self._config.time_limit

    @property
    def soft_time_limit(self) -> float | None:
        return self._config.soft_time_limit

    @property
    def kill_on_cancel(self) -> bool:
        return self._config.kill_on_cancel

    @property
    def retries(self) -> int:
        return self._config.retries

    @property
    def retry_on(self) -> tuple[type[BaseException], ...]:
        return self._config.retry_on

    def describe(self) -> str:
        state = "closed" if self._closed else "broken" if self._jobs.broken else "open"
        return f"{state} workers={self._config.workers}"

    def statistics(self) -> PoolStatistics:
        return _stats.snapshot(self._config.workers, self._jobs, self._slots.counters)

    def insight(self) -> tuple[WorkerInsight, ...]:
        return self._slots.insight()

    def events(
        self, buffer: int
    ) -> contextlib.AbstractAsyncContextManager[EventStream]:
        self._check_open()
        return self._subscribe(buffer)

    @contextlib.asynccontextmanager
    async def _subscribe(self, buffer: int) -> AsyncIterator[EventStream]:
        # Nothing here waits before the subscription exists: what the pool
        # does from the moment of entering is seen.
        self._check_open()
        feed = self._feed
        stream = feed.subscribe(buffer)
        self._jobs.feed = feed
        try:
            yield stream
        finally:
            feed.unsubscribe(stream)
            if not feed.streams:
                self._jobs.feed = None

    def _check_open(self) -> None:
        if self._closed or self._jobs.closing or self._nursery is None:
            raise trio.ClosedResourceError("the pool is closed")
        if _context.current_thread() != self._thread:
            raise _context.other_run("the pool")

    def check_usable(self) -> None:
        if self._closed or self._jobs.closing:
            raise trio.ClosedResourceError("the pool is closed")
        if self._jobs.broken is not None:
            raise self._jobs.broken_error()
        if _context.current_thread() != self._thread:
            raise _context.other_run("the pool")

    async def run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        time_limit: float | None,
        soft_time_limit: float | None,
        kill_on_cancel: bool,
        retries: int,
        retry_on: tuple[type[BaseException], ...],
    ) -> Any:
        self.check_usable()
        job = Job(
            _messages.task_frame(
                fn, args, soft_time_limit, main_importable=self._main_importable
            ),
            time_limit,
            kill_on_cancel,
            fn,
            args,
        )
        if retries:
            job.retries = retries
            job.retry_on = retry_on
            job.retry_errors = (
                self._retry_errors
                if retry_on is self._config.retry_on
                else retries_task_errors(retry_on)
            )
        job.caller = trio.lowlevel.current_task()
        self._jobs.submit(job)

        def abort(_: object) -> trio.lowlevel.Abort:
            # Cancelled (or KeyboardInterrupt) while parked. With
            # kill_on_cancel=False and the task started, go on waiting for
            # its outcome, like trio.to_thread.run_sync: the cancellation
            # takes effect at the next checkpoint.
            if self._jobs.abandon(job, kill=job.kill_on_cancel):
                job.caller = None  # Trio wakes it: nothing here may
                return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED

        # Parked until _finish reschedules it: cheaper than a trio.Event.
        await trio.lowlevel.wait_task_rescheduled(abort)
        if job.state is JobState.CANCELLED:
            # Given up while sent ahead, and woken once the worker dropped
            # it (or was killed for it): the cancellation is still pending.
            await trio.lowlevel.checkpoint()
        return _job_outcome(job)

    def submit_nowait(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        on_end: Callable[[Callable[[], Any] | None], None],
        *,
        retries: int | PoolDefault = POOL_DEFAULT,
        retry_on: RetryOn | PoolDefault = POOL_DEFAULT,
        parts: list[Any] | None = None,
    ) -> Callable[[], bool]:
        """Submit ``fn(*args)`` with the pool's options, without a waiting task.

        The streaming seam of map/imap (see ``_map_tasks.Streamer``): when the task
        ends, ``on_end`` is called once, in the task that ended it, with a
        function that returns its result or raises its error as :meth:`run`
        would, or with ``None`` if it was cancelled before it ran. Returns
        ``cancel()``: it gives the task up as a cancelled :meth:`run` would,
        and returns ``True`` if the task is over then (``on_end`` will not be
        called), ``False`` if ``on_end`` is still to come (the task runs on
        with ``kill_on_cancel=False``, or a worker it was written ahead to
        has yet to drop it). Raises as :meth:`run` raises before it submits.
        ``retries`` and ``retry_on`` (checked already) override the pool's.
        ``parts``: the task reports each item of a chunk (see
        ``_chunk_parts``); its PART frames are appended to this list.
        """
        self.check_usable()
        config = self._config
        job = Job(
            _messages.task_frame(
                fn, args, config.soft_time_limit, main_importable=self._main_importable
            ),
            config.time_limit,
            config.kill_on_cancel,
            fn,
            args,
        )
        if retries is POOL_DEFAULT:
            retries = config.retries
        if retries:
            classes = config.retry_on if retry_on is POOL_DEFAULT else retry_on
            assert isinstance(classes, tuple)
            job.retries = retries
            job.retry_on = classes
            job.retry_errors = (
                self._retry_errors
                if classes is config.retry_on
                else retries_task_errors(classes)
            )

        def ended(job: Job) -> None:
            if job.state is JobState.CANCELLED:
                on_end(None)
            else:
                on_end(functools.partial(_job_outcome, job))

        job.on_end = ended
        job.parts = parts
        self._jobs.submit(job)

        def cancel() -> bool:
            if job.on_end is None:
                return True  # ended already, on_end was called
            if self._jobs.abandon(job, kill=job.kill_on_cancel):
                job.on_end = None
                return True
            return False

        return cancel

    # Lifecycle

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        body_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._open(nursery)
                try:
                    yield
                except BaseException as exc:
                    body_error = exc
                    self._abort()
                else:
                    self._close()
        except BaseExceptionGroup as group:
            # Ctrl-C while the block waits for the workers to finish arrives
            # here wrapped by the nursery; it leaves as itself, like one from
            # the body.
            interrupt, rest = group.split(KeyboardInterrupt)
            if interrupt is not None and rest is None:
                raise _first_leaf(interrupt) from None
            raise
        finally:
            self._jobs.closing = True
            self._closed = True
            self._fail_waiting()
            # After the workers' last events: subscribers' iterations end.
            self._jobs.feed = None
            self._feed.close()
        if body_error is not None:
            raise body_error

    def _open(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._thread = _context.current_thread()
        self._slots.start(nursery)

    def _close(self) -> None:
        """Normal exit: run what was submitted, then stop the workers."""
        self._jobs.closing = True
        self._slots.wake_idle()

    def _abort(self) -> None:
        """Exit by error or cancellation: kill every worker now."""
        self._jobs.closing = True
        self._fail_waiting()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def _fail_waiting(self) -> None:
        self._slots.fail_waiting(lambda: trio.ClosedResourceError("the pool closed"))


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _job_outcome(job: Job) -> Any:
    """The result of an ended job, or raise its error."""
    if job.error is not None:
        raise job.error
    assert job.frame is not None
    return _messages.outcome(job.frame)

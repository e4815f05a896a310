"""A job (one task submitted to the pool), the one table of its states, and
the queue that hands jobs to idle workers.

Every change of a job's state goes through :meth:`Jobs.move`, which looks it
up in :data:`TRANSITIONS` (h11's rule: a state machine is a table, not
assignments spread over the code) and keeps the task counters of
``statistics()`` in step, so that ``tasks_submitted == waiting + running +
completed + failed + cancelled`` holds after every move.

Invariants:

- A job is in exactly one place: the waiting queue, handed to one idle taker
  (a worker's service), written ahead to one busy worker (SENT), running on
  one worker, or ended (COMPLETED, FAILED, CANCELLED). A move the table does
  not have is a bug, and raises at once.
- Every job ends, and its caller is woken exactly once: by :meth:`Jobs.end`
  for an outcome, or by Trio for a cancellation that its abort accepted
  (which clears ``caller`` so that nothing here can wake it again).
- A run that failed with one of the job's ``retry_on`` while it has retries
  left does not end the job: :meth:`Jobs.run_failed` moves it back to
  WAITING (RETRY), at the front of the queue, and its caller sleeps on. Only
  a run that is over can fail (its worker gone, or its answer in), so a job
  never runs twice at once; and a job whose caller gave up on it (it waits
  only for the outcome of the run under way) is not run again.
- Task events (``_events``) are published here and nowhere else: by
  :meth:`Jobs.submit` and :meth:`Jobs.move`, and only while someone is
  subscribed (``feed`` is not None); with nobody, a move pays one None check.
  A job that ends on a worker is counted in that worker's :class:`Book` by
  :meth:`Jobs.end`, its one way to end there.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Final, Protocol

import attrs
import trio

from . import _messages, _protocol
from ._chunk import run_chunk, run_timed_chunk
from ._errors import BrokenWorkerError, TimeLimitExceeded

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._errors import BrokenPoolError
    from ._events import Feed, TaskKind


class JobState(enum.IntEnum):
    #: In the queue, or handed to an idle taker that has not woken yet.
    WAITING = 0
    #: Written ahead to a busy worker and not started: counts as waiting,
    #: and its caller can still take it back (a SKIP).
    SENT = 1
    RUNNING = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5


class Move(enum.Enum):
    #: Written whole to a free worker, or started by the worker it was
    #: written ahead to.
    START = "start"
    #: Written ahead to a busy worker (pipelining).
    SEND_AHEAD = "send ahead"
    #: Its worker went before starting it: it waits again.
    PUT_BACK = "put back"
    COMPLETE = "complete"
    FAIL = "fail"
    #: A run failed with one of its ``retry_on`` and retries are left: it
    #: waits again, to run anew.
    RETRY = "retry"
    CANCEL = "cancel"

    # Members are singletons: hash them by identity, in C, as every move
    # looks its edge up by its move (Enum's own hash is a Python method).
    __hash__ = object.__hash__


W, S, R = JobState.WAITING, JobState.SENT, JobState.RUNNING

#: (state, move) -> new state: every edge a job may take, and no other.
TRANSITIONS: Final[dict[tuple[JobState, Move], JobState]] = {
    (W, Move.START): R,
    (S, Move.START): R,
    (W, Move.SEND_AHEAD): S,
    (R, Move.PUT_BACK): W,
    (S, Move.PUT_BACK): W,
    (R, Move.COMPLETE): JobState.COMPLETED,
    (R, Move.RETRY): W,
    # A running job fails in its worker; a waiting or sent one when the pool
    # breaks or closes before it could run.
    (R, Move.FAIL): JobState.FAILED,
    (W, Move.FAIL): JobState.FAILED,
    (S, Move.FAIL): JobState.FAILED,
    (W, Move.CANCEL): JobState.CANCELLED,
    (S, Move.CANCEL): JobState.CANCELLED,
    (R, Move.CANCEL): JobState.CANCELLED,
}

# TRANSITIONS by move, then by the old state's number (None: no such edge).
_EDGES: Final[dict[Move, tuple[JobState | None, ...]]] = {
    move: tuple(TRANSITIONS.get((state, move)) for state in JobState) for move in Move
}

# The counter of tasks in each state (see Jobs.counts).
_COUNTER: Final = (0, 0, 1, 2, 3, 4)  # waiting, waiting, running, completed, ...

_log = logging.getLogger("triopool")
# The task event a move into each state publishes (SENT: none, the task
# still waits). A task that runs again after a failure publishes "retried"
# (with _publish) where that decision is taken.
_KIND: Final[tuple[TaskKind | None, ...]] = (
    "queued",
    None,
    "started",
    "finished",
    "failed",
    "cancelled",
)

# map's chunk runners: their events name the mapped function instead.
_CHUNK_RUNNERS: Final = (run_chunk, run_timed_chunk)


class Taker(Protocol):
    """An idle worker's service, which a caller hands a waiting job to."""

    def take(self, job: Job) -> None: ...


class Link(Protocol):
    """The service of the worker a job was written to (to run, or ahead)."""

    def skip(self, job: Job) -> None: ...

    def stop_running(self, job: Job) -> None: ...


class Book(Protocol):
    """What a slot keeps of the jobs its workers ran (``_stats.SlotBook``)."""

    #: The slot's serving worker, and the slot.
    pid: int | None
    index: int

    def task_ended(self, job: Job, now: float | None) -> None:
        """A job that ran on the slot's worker ended there (at ``now``, if
        the caller read the clock already)."""


@attrs.define(eq=False)
class Job:
    """One task, from submission to its end."""

    pieces: list[bytes | memoryview]
    time_limit: float | None
    kill_on_cancel: bool
    #: What runs, for events and insight (see :meth:`function_name`).
    fn: object = None
    args: tuple[object, ...] = ()
    #: Its number in the pool, from 1 (see Jobs.submit).
    id: int = 0
    #: The caller's task, parked until the job ends (see Pool.run_sync).
    caller: trio.lowlevel.Task | None = None
    state: JobState = JobState.WAITING
    #: The outcome: the worker's answer, or an error raised to the caller.
    frame: _protocol.Frame | None = None
    error: BaseException | None = None
    #: What a task that ended its worker raised (FATAL), for the error's cause.
    fatal_cause: BaseException | None = None
    # Where it runs, once written (see _serve and _pipeline): the service of
    # its worker, its number there, the worker's bytes_written after it, and
    # its hard deadline (trio time).
    link: Link | None = None
    number: int = 0
    end: int = 0
    deadline: float = math.inf
    #: Written ahead, then given up by its caller: a SKIP was asked for, and
    #: the caller waits for the worker's verdict (dropped, or started).
    skip: bool = False
    #: Runs left after this one if it fails with one of ``retry_on``.
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    #: ``retry_on`` may match the task's own exception: an ERROR answer is
    #: decoded here, once, to decide (see Jobs.answered).
    retry_errors: bool = False
    #: Runs that failed so far.
    failed_runs: int = 0
    #: Its caller gave up on it (see Jobs.abandon): a failed run is not
    #: retried for a caller that no longer wants the outcome.
    given_up: bool = False
    #: Instead of a parked caller: called once, with the job, when it ends
    #: (a job streamed by map/imap; see Pool.submit_nowait). It must not
    #: raise or block: it runs in the task that ended the job.
    on_end: Callable[[Job], None] | None = None
    #: The slot of the worker it was given to (set by its Pipeline).
    book: Book | None = None
    # Trio times. queued_at and started_at are taken only while someone
    # watches events; sent_at (the worker has it whole) and finished_at (its
    # answer came) by the Pipeline, from times it reads anyway.
    queued_at: float | None = None
    started_at: float | None = None
    sent_at: float | None = None
    finished_at: float | None = None
    name: str | None = None

    def function_name(self) -> str:
        """The qualified name of what it runs (map's chunks: the function
        mapped), worked out once."""
        name = self.name
        if name is None:
            fn = self.fn
            if fn in _CHUNK_RUNNERS and self.args:
                fn = self.args[0]
            name = self.name = qualified_name(fn)
        return name


@attrs.define(eq=False)
class Jobs:
    """The queue of waiting jobs, the idle takers, and the task counters."""

    waiting: deque[Job] = attrs.field(factory=deque)
    #: Idle takers, the most recently idle last (it is handed the next job).
    idle: list[Taker] = attrs.field(factory=list)
    #: Tasks in each counter: waiting (WAITING or SENT), running, completed,
    #: failed, cancelled.
    counts: list[int] = attrs.field(factory=lambda: [0, 0, 0, 0, 0])
    submitted: int = 0
    #: Runs started again after a failure (``tasks_retried``).
    retried: int = 0
    #: Set once the pool is broken: a job put back then fails with this.
    broken: BrokenPoolError | None = None
    #: The pool's block is over: idle workers stop once the queue is empty.
    closing: bool = False
    #: Where task events go while someone is subscribed (see ``_events``).
    feed: Feed | None = None
    #: Called when a job is queued for want of an idle taker (an elastic
    #: pool starts a worker then; see Slots._wanted).
    queued: Callable[[], None] | None = None

    def broken_error(self) -> BrokenPoolError:
        """A fresh instance of the pool's broken error, to raise."""
        assert self.broken is not None
        return _fresh(self.broken)

    def move(self, job: Job, move: Move) -> None:
        """Change the job's state by the table, and the counters with it."""
        old = job.state
        new = _EDGES[move][old]
        if new is None:
            raise AssertionError(f"a {old.name} job cannot {move.value}")
        job.state = new
        counts = self.counts
        counts[_COUNTER[old]] -= 1
        counts[_COUNTER[new]] += 1
        if self.feed is not None:
            self._publish(job, _KIND[new])

    def _publish(self, job: Job, kind: TaskKind | None) -> None:
        """Tell the subscribers what just happened to ``job``."""
        if kind is None:
            return
        assert self.feed is not None
        now = trio.current_time()
        book = job.book
        if kind == "queued":
            book = None  # (again) in the queue: at no worker
            if job.queued_at is None:
                job.queued_at = now
        elif kind == "started":
            job.started_at = now
        elif job.finished_at is None:
            job.finished_at = now
        # The fields of a TaskEvent, which a reader builds only when it takes
        # it: one dropped from a full buffer costs no object.
        self.feed.publish(
            (
                kind,
                job.id,
                job.function_name(),
                None if book is None else book.pid,
                None if book is None else book.index,
                now,
                job.queued_at,
                job.started_at,
                job.sent_at,
                job.finished_at,
            )
        )

    def submit(self, job: Job) -> None:
        """A new job: hand it to an idle taker, or queue it."""
        self.submitted += 1
        job.id = self.submitted
        self.counts[0] += 1
        if self.feed is not None:
            self._publish(job, "queued")
        self.dispatch(job, first=False)

    def dispatch(self, job: Job, *, first: bool) -> None:
        """Hand a waiting job to an idle taker, or queue it (at the front if
        ``first``: it was taken once already and goes before newer ones)."""
        if self.idle:
            self.idle.pop().take(job)
        else:
            if first:
                self.waiting.appendleft(job)
            else:
                self.waiting.append(job)
            if self.queued is not None:
                self.queued()

    def next_job(self) -> Job | None:
        """The first waiting job of the queue (cancelled ones are dropped)."""
        waiting = self.waiting
        while waiting:
            job = waiting.popleft()
            if job.state is JobState.WAITING:
                return job
        return None

    def put_back(self, job: Job) -> None:
        """A job whose worker went before it started: it waits again, first
        in line (or fails, once the pool is broken: nothing would run it)."""
        if job.state not in (JobState.WAITING, JobState.RUNNING, JobState.SENT):
            return  # ended already: its caller was cancelled and is gone
        job.link = None
        if job.given_up and job.state is JobState.RUNNING:
            # Its caller gave up while it was being written (it waited on,
            # kill_on_cancel=False): it never started, so, like a waiting
            # job whose caller gave up, it never runs.
            self.move(job, Move.CANCEL)
            wake(job)
            return
        if self.broken is not None:
            self.fail(job, self.broken_error())
            return
        if job.state is not JobState.WAITING:
            # It never started there: times and worker of that try go.
            job.book = None
            job.started_at = job.sent_at = None
            self.move(job, Move.PUT_BACK)
        self.dispatch(job, first=True)

    def end(self, job: Job, move: Move, now: float | None = None) -> None:
        """End a running job (COMPLETE or FAIL) and wake its caller; a job
        ended already (its caller cancelled it) stays as it is. ``now``: the
        time, if the caller has it."""
        if job.state is JobState.RUNNING:
            self.move(job, move)
            book = job.book
            if book is not None:
                book.task_ended(job, now)
            wake(job)

    def answered(
        self,
        job: Job,
        frame: _protocol.Frame,
        worker_pid: int,
        now: float | None = None,
    ) -> None:
        """The worker answered the running job with ``frame`` (read at
        ``now``): it completes, fails, or (a task error named in its
        ``retry_on``) runs again."""
        job.link = None
        if frame.kind == _protocol.RESULT:
            job.frame = frame
            self.end(job, Move.COMPLETE, now)
        elif job.retry_errors and frame.kind == _protocol.ERROR:
            # Decoded here to tell its class, and kept: the caller raises it.
            self.run_failed(job, _messages.task_exception(frame), worker_pid)
        else:
            job.frame = frame
            self.end(job, Move.FAIL, now)

    def run_failed(
        self,
        job: Job,
        error: BaseException,
        worker_pid: int,
        *,
        requeue: bool = True,
    ) -> bool:
        """A run of the job failed with ``error`` (its worker died, was
        killed for its time limit, or the task raised). Retry it if ``error``
        is one of its ``retry_on`` and it has retries left: to the front of
        the queue, its caller still asleep; else end it with ``error``, whose
        message then says how many runs were tried. Returns True if it will
        run again.

        With ``requeue`` false the job waits (RETRY) but is queued only by a
        later :meth:`put_back`: the caller does that once the run is over for
        certain (a killed worker has exited), so that it never runs twice at
        once."""
        if job.state is not JobState.RUNNING:
            return False  # ended already: its caller cancelled it
        job.failed_runs += 1
        if job.retries > 0 and not job.given_up and isinstance(error, job.retry_on):
            job.retries -= 1
            job.link = None
            job.deadline = math.inf
            job.fatal_cause = None
            if self.feed is not None:
                # Why, with the worker of the failed run; then "queued".
                self._publish(job, "retried")
                job.finished_at = None
            job.book = None
            job.started_at = job.sent_at = None
            self.move(job, Move.RETRY)
            self.retried += 1
            _log.info(
                "task run %d failed (%s: %s); running it again",
                job.failed_runs,
                type(error).__name__,
                error,
                extra={
                    "event": "retried",
                    "worker_pid": worker_pid,
                    "reason": type(error).__name__,
                    "runs": job.failed_runs,
                    "retries_left": job.retries,
                },
            )
            if requeue:
                self.put_back(job)
            return True
        if job.failed_runs > 1:
            _say_runs(error, job.failed_runs)
        job.error = error
        self.end(job, Move.FAIL)  # counted in its worker's book
        return False

    def fail(self, job: Job, error: BaseException) -> None:
        """End a job that has not ended with ``error``, and wake its caller."""
        if job.state in (JobState.WAITING, JobState.SENT, JobState.RUNNING):
            job.error = error
            self.move(job, Move.FAIL)
            wake(job)

    def cancelled_ahead(self, job: Job) -> None:
        """A job written ahead whose caller gave up never ran: wake the
        caller, which raises its pending Cancelled."""
        job.link = None
        self.move(job, Move.CANCEL)
        wake(job)

    def abandon(self, job: Job, *, kill: bool) -> bool:
        """The caller stops waiting. Returns False if it must wait on: for
        the outcome (``kill`` is false and the task runs), or for the worker's
        verdict on a job written ahead (a SKIP is asked for)."""
        job.given_up = True
        state = job.state
        if state is JobState.SENT:
            if not job.skip:
                job.skip = True
                assert job.link is not None
                job.link.skip(job)
            return False
        if state is JobState.WAITING:
            self.move(job, Move.CANCEL)
            return True
        if not kill:
            return False
        if state is JobState.RUNNING:
            self.move(job, Move.CANCEL)
            if job.link is not None:
                job.link.stop_running(job)  # its worker's service kills it
        return True

    def fail_waiting(
        self, make_error: Callable[[], BaseException], handed: Iterable[Job] = ()
    ) -> None:
        """Fail every waiting job: the queue's, and ``handed`` ones."""
        jobs = [*self.waiting, *handed]
        self.waiting.clear()
        for job in jobs:
            if job.state is JobState.WAITING:
                self.fail(job, make_error())


def qualified_name(fn: object) -> str:
    """``fn``'s qualified name; a partial's function's, a callable object's
    class's."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None)
    if not isinstance(name, str):
        name = type(fn).__qualname__
    return name


def wake(job: Job) -> None:
    """Wake the job's parked caller (see Pool.run_sync), or call its
    ``on_end``, once."""
    caller = job.caller
    if caller is not None:
        job.caller = None
        trio.lowlevel.reschedule(caller)
        return
    on_end = job.on_end
    if on_end is not None:
        job.on_end = None
        on_end(job)


def _say_runs(error: BaseException, runs: int) -> None:
    """Mark the last failure of a retried task with the number of runs."""
    text = f"{runs} runs tried"
    if isinstance(error, BrokenWorkerError | TimeLimitExceeded):
        error.runs = runs
        error.args = (f"{error.args[0]} ({text})", *error.args[1:])
    else:
        # The task's own exception: its message is its own business.
        error.add_note(f"triopool: {text}")


def _fresh(error: BrokenPoolError) -> BrokenPoolError:
    """A fresh instance of the pool's broken error: one exception object
    raised in several tasks at once would have its traceback garbled."""
    copy = type(error)(*error.args)
    copy.__cause__ = error.__cause__
    return copy

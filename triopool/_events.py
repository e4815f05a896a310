"""What a pool does, as a live feed: :class:`TaskEvent`, :class:`WorkerEvent`
and the subscriptions of :meth:`Pool.events`.

The pool publishes task events from the one place a job changes state
(``_jobs.Jobs``, by its transition table) and worker events from its slots
(``_slots``). Both publish only while someone is subscribed: with nobody,
``Jobs.feed`` is None and a transition pays one None check.

Invariants:

- Publishing never blocks, never raises and never waits for a subscriber: a
  subscription's buffer holds at most ``buffer`` events, and when it is full
  the oldest one is dropped and counted in :attr:`EventStream.lost`.
- A subscription ends (its iteration stops once the buffer is drained) when
  its ``async with`` is left or the pool has closed, whichever comes first.
- Times are ``trio.current_time()`` of the run that opened the pool.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final, Literal

import attrs
import trio

if TYPE_CHECKING:
    from typing import Self, TypeAlias

#: What happened to a task (see :class:`TaskEvent`).
TaskKind = Literal["queued", "started", "finished", "failed", "cancelled", "retried"]
#: What happened to a worker process (see :class:`WorkerEvent`).
WorkerKind = Literal["started", "up", "recycled", "lost", "start_failed", "stopped"]

#: How many events a subscription keeps for its reader by default.
DEFAULT_BUFFER: Final = 1000

#: The fields of a TaskEvent, in order: what the pool publishes for a task
#: (building the object is left to the reader that takes it).
TaskFields: TypeAlias = tuple[
    TaskKind,
    int,
    str,
    "int | None",
    "int | None",
    float,
    "float | None",
    "float | None",
    "float | None",
    "float | None",
]


# Without slots, attrs sets a frozen instance's fields straight in its
# __dict__: building one costs about half (a draining reader builds three per
# task).
@attrs.frozen(slots=False)
class TaskEvent:
    """Something that happened to one task, from :meth:`Pool.events`.

    Times are seconds on Trio's clock (:func:`trio.current_time` in the run
    that opened the pool); a time the pool had not recorded (the task was
    submitted before the subscription began, or has not got there yet) is
    ``None``. From them: the time a task waited for a worker is ``started_at
    - queued_at``; the time its arguments took to reach the worker is
    ``sent_at - started_at``; the time it ran (with its result's way back)
    is ``finished_at - sent_at`` (see :attr:`wait_time`,
    :attr:`transfer_time`, :attr:`run_time`).

    Attributes:
        kind: ``"queued"`` (submitted, or back in the queue because the
            worker it was given to went before it started), ``"started"``
            (a worker took it: the pool writes it to a free worker, or a
            busy worker it was written to ahead moved on to it),
            ``"finished"`` (returned a value), ``"failed"`` (raised, or its
            worker died, or it hit its time limit), ``"cancelled"`` (its
            caller gave up), ``"retried"`` (runs again after a failure).
        task: The task's number in this pool, from 1 in order of
            submission.
        function: The qualified name of the function (for a chunk of
            :meth:`Pool.map`, the mapped function's).
        worker_pid: The pid of the worker that took it, once one has.
        worker_index: That worker's slot, ``0 <= worker_index < workers``.
        at: When this event happened.
        queued_at: When the task was submitted.
        started_at: When a worker took it.
        sent_at: When the worker had the whole task: its last byte was
            written to a free worker or, for a task written ahead to a busy
            worker, when that worker moved on to it (the transfer then
            overlapped the wait).
        finished_at: When its outcome reached the pool (or it was
            cancelled).
    """

    kind: TaskKind
    task: int
    function: str
    worker_pid: int | None
    worker_index: int | None
    at: float
    queued_at: float | None = None
    started_at: float | None = None
    sent_at: float | None = None
    finished_at: float | None = None

    @property
    def wait_time(self) -> float | None:
        """Seconds from submission until a worker took the task."""
        if self.queued_at is None or self.started_at is None:
            return None
        return self.started_at - self.queued_at

    @property
    def transfer_time(self) -> float | None:
        """Seconds the task's bytes took to reach its worker once it was
        taken (0 for a task written ahead)."""
        if self.started_at is None or self.sent_at is None:
            return None
        return max(0.0, self.sent_at - self.started_at)

    @property
    def run_time(self) -> float | None:
        """Seconds from the worker having the task to its outcome reaching
        the pool: the run, plus the result's way back."""
        if self.sent_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.sent_at


@attrs.frozen
class WorkerEvent:
    """Something that happened to one worker process, from :meth:`Pool.events`.

    Attributes:
        kind: ``"started"`` (its process exists), ``"up"`` (it ran its
            initializer and takes tasks), ``"recycled"`` (retired by
            ``max_tasks_per_child``, ``max_memory_per_child`` or
            ``max_lifetime_per_child``), ``"lost"``
            (died, or was killed for a time limit, a cancellation or a broken
            protocol), ``"start_failed"`` (see ``reason``), ``"stopped"``
            (exited because the pool closed or broke, or idle for
            ``idle_timeout`` above ``min_workers``). Each start ends in
            exactly one of the last four, as the ``workers_*`` counters of
            :meth:`Pool.statistics` count them; a start that could not
            create a process (``"no_process"``, or a fork server that failed)
            has a ``"start_failed"`` event only.
        pid: Its process id; ``None`` if no process could be created.
        index: Its slot, ``0 <= index < workers``; ``None`` for the fork
            server (``start_method="forkserver"``), whose failures count as
            start failures.
        at: When this event happened (Trio's clock, as for
            :class:`TaskEvent`).
        exitcode: For ``"recycled"``, ``"lost"``, ``"stopped"`` and an
            ``"exited"`` start failure: how it exited, negative for the
            signal that ended it; ``None`` if unknown.
        reason: Why: for ``"start_failed"``, one of ``"timeout"``,
            ``"exited"``, ``"initializer"``, ``"bad_frame"``,
            ``"no_process"``, ``"forkserver"``; for ``"recycled"``,
            ``"max_tasks_per_child"``, ``"max_memory_per_child"`` or
            ``"max_lifetime_per_child"``; for ``"stopped"``,
            ``"idle_timeout"`` for an idle worker the pool let go (else
            ``None``: the pool closed); for ``"lost"``, ``"broke_protocol"``
            when it was killed for that; otherwise ``None``.
    """

    kind: WorkerKind
    pid: int | None
    index: int | None
    at: float
    exitcode: int | None = None
    reason: str | None = None


class EventStream:
    """One subscription to a pool's events; get it from :meth:`Pool.events`.

    Iterate over it with ``async for``. It keeps at most ``buffer`` events
    that its reader has not taken yet; when a new event comes and the buffer
    is full, the oldest one is dropped and :attr:`lost` grows by one, so a
    slow reader never slows the pool. The iteration ends, once the buffer is
    drained, when the pool has closed (after its workers' last events) or the
    ``async with`` of :meth:`Pool.events` is left.

    Only one task may iterate it at a time.
    """

    def __init__(self, buffer: int) -> None:
        self._events: deque[TaskFields | WorkerEvent] = deque(maxlen=buffer)
        self._reader: trio.lowlevel.Task | None = None
        self._ended = False
        #: Events dropped because the buffer was full.
        self.lost = 0

    def __repr__(self) -> str:
        state = "ended" if self._ended else "live"
        return (
            f"<triopool.EventStream {state} buffered={len(self._events)} "
            f"lost={self.lost}>"
        )

    @property
    def buffer(self) -> int:
        """How many events it keeps at most for its reader."""
        maxlen = self._events.maxlen
        assert maxlen is not None
        return maxlen

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> TaskEvent | WorkerEvent:
        events = self._events
        if events:
            await trio.lowlevel.checkpoint()
        # Parking is a checkpoint too: a reader that keeps up yields once per
        # event, not twice.
        while not events:
            if self._ended:
                await trio.lowlevel.checkpoint()
                raise StopAsyncIteration
            await self._park()
        event = events.popleft()
        if type(event) is tuple:
            return TaskEvent(*event)
        return event  # type: ignore[return-value]

    async def _park(self) -> None:
        if self._reader is not None:
            raise trio.BusyResourceError(
                "another task is already iterating over this EventStream"
            )
        self._reader = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._reader = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _wake(self) -> None:
        reader = self._reader
        if reader is not None:
            self._reader = None
            trio.lowlevel.reschedule(reader)

    def _push(self, event: TaskFields | WorkerEvent) -> None:
        events = self._events
        if len(events) == events.maxlen:
            self.lost += 1  # the deque drops the oldest as it appends
        events.append(event)
        self._wake()

    def _end(self) -> None:
        self._ended = True
        self._wake()


@attrs.define(eq=False)
class Feed:
    """A pool's subscriptions, and the one way to publish to them."""

    streams: list[EventStream] = attrs.field(factory=list)
    closed: bool = False

    def publish(self, event: TaskFields | WorkerEvent) -> None:
        for stream in self.streams:
            stream._push(event)

    def subscribe(self, buffer: int) -> EventStream:
        stream = EventStream(buffer)
        if self.closed:
            stream._end()
        else:
            self.streams.append(stream)
        return stream

    def unsubscribe(self, stream: EventStream) -> None:
        if stream in self.streams:
            self.streams.remove(stream)
        stream._end()

    def close(self) -> None:
        """The pool has closed: end every subscription."""
        self.closed = True
        streams = self.streams
        self.streams = []
        for stream in streams:
            stream._end()


def check_buffer(buffer: object) -> int:
    """``buffer`` of :meth:`Pool.events`, checked."""
    if isinstance(buffer, bool) or not isinstance(buffer, int):
        raise TypeError(f"buffer must be an int, got {buffer!r}")
    if buffer < 1:
        raise ValueError(f"buffer must be >= 1, got {buffer}")
    return buffer

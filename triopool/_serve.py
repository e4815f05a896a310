"""One up worker's service, inside the ``async with`` of the task that owns it.

Three tasks serve a worker, all inside its owner's block (so the fd rule of
``_worker`` holds): the *reader* (the owning task itself) receives every frame
the worker sends, delivers each answer and writes the next queued job; the
*feeder* parks while the worker idles and writes the job a caller hands it,
and the SKIP frames callers ask for; the *watcher* waits for the process to
exit, so that a death is settled even while a process the task started holds
the worker's pipes.

Invariants:

- Only these tasks touch the worker, and only inside its owner's block.
- One frame is written at a time, through the worker's
  :class:`~triopool._outbox.Outbox`, whether it starts a task on a free
  worker, goes ahead of need to a busy one, or carries SKIPs; a write cut
  short kills the worker, whose stream to us is then out of sync.
- Whatever ends a wait of the reader or a write early goes through
  :meth:`Service.interrupt`, which records why before it cancels; the one
  other cause is the running job's deadline, the reader's wait's own.
- The feeder is woken only through :meth:`Service._wake_feeder`, which wakes
  it only if it is parked: whoever sets work for it (``handed``, ``skips``,
  ``recheck``) calls it, and a feeder already awake finds the work before it
  parks again. A wake-up never happens twice.
- A job changes state only through :class:`~triopool._jobs.Jobs`.
"""

from __future__ import annotations

import enum
import logging
import math
import signal
from typing import TYPE_CHECKING, Final

import attrs
import trio

from . import _logs, _protocol, _settle
from ._errors import BrokenWorkerError
from ._hooks import Hooks, Trace, TraceKind
from ._hooks import current as current_hooks
from ._jobs import Job, JobState, Move, wake
from ._outbox import Outbox
from ._pipeline import Pipeline

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._config import PoolConfig
    from ._jobs import Jobs
    from ._worker import Worker

_log = logging.getLogger("triopool")

# How long the rest of an answer that had begun to arrive may take before a
# cancellation or a deadline is acted on after all (see Service.hear_first).
_HEAR_FIRST: Final = 1.0

# The frames that answer a task.
_ANSWERS = frozenset({_protocol.RESULT, _protocol.ERROR, _protocol.SERIAL_ERROR})


class End(enum.Enum):
    """Why a worker's service ended (what its slot counts)."""

    CLOSED = "stopped"
    RETIRED = "retired"
    LOST = "lost"


class Ended(enum.Enum):
    """How a worker's service ended before it is settled (see Service._ended)."""

    EOF = "its pipe reached EOF"
    FATAL = "a task ended it"


class Next(enum.Enum):
    """What a free worker does next (see Service._next_or_idle)."""

    SENT = "runs the next queued job"
    IDLE = "idles"
    STOP = "stops"


class Why(enum.Flag):
    """Why the reader's wait was cut short (see :meth:`Service.interrupt`).

    The running job's deadline is the one cause not recorded here: it is the
    wait's own, and the reader checks it against the job that runs then.
    """

    #: The caller of the running job gave up on it (kill_on_cancel).
    CANCELLED = enum.auto()
    #: The pool closes, or broke, while the worker idles with nothing to run.
    STOP = enum.auto()
    #: The worker went with its fork server: no task may reach it any more.
    GONE = enum.auto()
    #: The process exited: its pipes give what it wrote, then EOF at once.
    EXITED = enum.auto()


@attrs.define(eq=False)
class Service:
    """One up worker and the jobs at it, shared by its reader, feeder and
    watcher tasks (see the module docstring)."""

    worker: Worker
    _jobs: Jobs
    _config: PoolConfig
    #: The test suite's seams (see ``_hooks``).
    _hooks: Hooks = attrs.field(factory=current_hooks)
    # The feeder task. It parks whenever it has nothing to do: no SKIP to
    # write, no job ``handed`` to it, no ``recheck``. The service is in
    # Jobs.idle while its worker idles with nothing handed.
    feeder: trio.lowlevel.Task | None = None
    handed: Job | None = None
    # The write-ahead conversation's books: the job running, those ahead.
    pipeline: Pipeline = attrs.field(factory=Pipeline)
    # The feeder is parked and nobody has woken it yet.
    parked: bool = False
    # The one way frames go out to the worker, and the write in progress.
    outbox: Outbox = attrs.field(
        default=attrs.Factory(
            lambda self: Outbox(self.worker, self._hooks), takes_self=True
        )
    )
    # The worker was killed for its current job but had jobs ahead: its
    # answers are read to its end, to learn which of them it started.
    killed: bool = False
    # The scope of the reader's wait for a frame. Only interrupt() cancels
    # it (and the outbox's scope of a write that waits for room).
    read_scope: trio.CancelScope | None = None
    # Why the reader's wait must end, until the reader acts on it.
    why: Why = attrs.field(default=Why(0))
    # The feeder must take the next queued job or stop: the pool closed or
    # broke while the worker idled (see Slots.wake_idle).
    recheck: bool = False
    # The running job was cancelled, or ran out of time, while bytes from the
    # worker were waiting: they are read first, for they may be its answer
    # (and the worker busy with the next job, which a kill would hit). Set
    # once per job (``heard``), for at most _HEAR_FIRST seconds.
    hear_first: bool = False
    heard: Job | None = None
    # A FATAL frame from the running job, until the worker's exit is seen.
    fatal_frame: _protocol.Frame | None = None
    tasks_done: int = 0
    # The job this worker was killed under for its time limit, to run again:
    # it waits (so nothing here touches it any more) and is queued once the
    # worker has exited (see _requeue_retried).
    retried: Job | None = None
    # The worker serves no more: the feeder must not touch it.
    finished: bool = False
    # When the worker reported up (trio time), for max_lifetime_per_child.
    up_at: float = attrs.field(factory=trio.current_time)
    # Ended while idle by the slots' timer (see dismiss): why.
    dismissed: End | None = None
    # The limit it retired for ("memory", "tasks", "lifetime"; see _retire).
    retired_for: str | None = None

    # Elasticity and age (see _slots.Slots.run_timer): small, and apart from
    # the reading and writing below.

    def past_age(self, now: float | None = None) -> bool:
        """Whether the worker is past ``max_lifetime_per_child`` (at ``now``,
        else the clock's time): it takes no more tasks, and retires at its
        first idle moment."""
        lifetime = self._config.max_lifetime_per_child
        if lifetime is None:
            return False
        if now is None:
            now = trio.current_time()
        return now >= self.up_at + lifetime

    def idle_since(self) -> float | None:
        """When the worker last became idle; None unless it idles now, with
        nothing running, written ahead or handed to it."""
        pipeline = self.pipeline
        if (
            self.finished
            or self.dismissed is not None
            or pipeline.current is not None
            or pipeline.ahead
            or self.handed is not None
            or self.outbox.writing
            or self not in self._jobs.idle
        ):
            return None
        if pipeline.numbered == 0:
            return self.up_at
        return pipeline.started_at + pipeline.last_duration

    def dismiss(self, end: End) -> bool:
        """End an idle worker's service: stopped (``End.CLOSED``, idle too
        long) or retired (``End.RETIRED``, too old). Returns False, doing
        nothing, if the worker is not idle."""
        if self.idle_since() is None:
            return False
        self._jobs.idle.remove(self)  # no caller can hand it a job now
        self.dismissed = end
        self.interrupt(Why.STOP)
        return True

    # What callers, the queue and the slots call (see _jobs.Taker, _jobs.Link).

    def take(self, job: Job) -> None:
        """An idle worker is handed a waiting job by its caller."""
        self.handed = job
        self._wake_feeder()

    def skip(self, job: Job) -> None:
        """The caller of a job written ahead to this worker gives up on it."""
        self.pipeline.ask_skip(job)
        self._wake_feeder()

    def stop_running(self, job: Job) -> None:
        """The caller of the running job gives up on it: kill the worker."""
        self.interrupt(Why.CANCELLED, job)

    def wake_to_recheck(self) -> None:
        """The pool closed or broke while this worker idled."""
        self.recheck = True
        self._wake_feeder()

    def interrupt(self, why: Why, job: Job | None = None) -> None:
        """End the waits that ``why`` concerns, and record it for the reader.

        A job cancelled while it is being written cuts its write (the worker
        is then killed: see :meth:`Outbox.write_rest`); every other cause ends the
        reader's wait, now or as soon as its next one begins, and the reader
        acts on ``self.why`` (see :meth:`_interrupted`).
        """
        if job is not None and self.outbox.cut(job):
            return
        self.why |= why
        if why is Why.EXITED:
            self.outbox.cut()
        if self.read_scope is not None:
            self.read_scope.cancel()

    def _wake_feeder(self) -> None:
        if self.parked:
            self.parked = False
            assert self.feeder is not None
            trio.lowlevel.reschedule(self.feeder)

    def _trace(self, kind: TraceKind, job: Job, unread: int = 0) -> None:
        trace = self._hooks.trace
        if trace is not None:
            trace(Trace(kind, self.worker.pid, job.number, job.pieces, 0, unread))

    def _unsend(self, job: Job, error: BaseException | None = None) -> None:
        """A job written ahead that the worker never started: back to the
        front of the queue, or failed with ``error`` (or as its caller asked,
        cancelled)."""
        if job.skip:
            self._jobs.cancelled_ahead(job)
        elif error is not None:
            job.link = None
            self._jobs.fail(job, error)
        else:
            self._jobs.put_back(job)

    def _unsend_all(self, error: BaseException | None = None) -> None:
        """:meth:`_unsend` every job the worker holds, in order."""
        while self.pipeline.ahead:
            # From the back: each goes to the front of the queue.
            self._unsend(self.pipeline.ahead.pop(), error)

    async def run(self, retiring: Callable[[], None]) -> End:
        """Run jobs on an up worker until it must go; say why it went.

        This task, the worker's owner, reads every frame the worker sends,
        delivers each answer and sends the next queued job itself, so a busy
        worker needs no hand-off between tasks. A feeder task parks while the
        worker is idle and sends the job a caller hands over: waking a parked
        task costs far less than cancelling a wait on the pipe. Both tasks
        live inside the worker's ``async with``, which alone closes its fds.

        Calls ``retiring()`` once the worker is done serving and only needs to
        exit, so that the slot can start its replacement meanwhile.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self._feed)
            nursery.start_soon(self._watch)
            try:
                return await self._read(retiring)
            finally:
                self.finished = True
                # Left behind by a worker killed for breaking the protocol.
                self._unsend_all()
                if self in self._jobs.idle:
                    self._jobs.idle.remove(self)
                handed = self.handed
                self.handed = None
                if handed is not None and handed.state is JobState.WAITING:
                    # Handed over just as the worker went: it never started.
                    self._jobs.put_back(handed)
                nursery.cancel_scope.cancel()  # the feeder, parked or sending
                await self._requeue_retried()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _requeue_retried(self) -> None:
        """Queue the job killed here for its time limit for its next run,
        once the worker has exited: never two runs of it at once."""
        job = self.retried
        if job is None:
            return
        self.retried = None
        with trio.CancelScope(shield=True) as scope:
            # It was sent SIGKILL; the bound only guards against a kernel
            # that never lets it go.
            scope.deadline = trio.current_time() + self._config.shutdown_timeout
            await self.worker.process.wait()
        self._jobs.put_back(job)

    async def _watch(self) -> None:
        """Notice the worker's exit even while its pipes stay open.

        A process that a task started (or forked) may hold the worker's pipe
        ends after the worker died, so EOF may come late or never. Once the
        process has exited, the worker's pipes give what it wrote and then
        EOF without waiting (see ``Worker.receive``), so the reader settles
        the worker at once.
        """
        process = self.worker.process
        await process.wait()
        if process.exited:  # else orphaned: its pipes say when it is gone
            self.interrupt(Why.EXITED)

    async def _feed(
        self,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send the jobs callers hand to the slot while its worker is idle,
        and the SKIP frames callers that gave up on jobs sent ahead ask for."""

        def abort(_: object) -> trio.lowlevel.Abort:
            self.parked = False
            if self in self._jobs.idle:
                self._jobs.idle.remove(self)
            return trio.lowlevel.Abort.SUCCEEDED

        self.feeder = trio.lowlevel.current_task()
        task_status.started()
        try:
            while not self.finished:
                if self.pipeline.skips:
                    await self._send_skips()
                    continue
                if self.handed is None and not self.recheck:
                    # Nothing to do: park until _wake_feeder.
                    self.parked = True
                    await trio.lowlevel.wait_task_rescheduled(abort)
                    continue
                job = self.handed
                self.handed = None
                self.recheck = False
                if job is not None and job.state is JobState.WAITING:
                    await self._send(job)
                elif await self._next_or_idle() is Next.STOP:
                    # Woken for the pool's close (or the caller was cancelled
                    # before this task woke), and nothing is left to run.
                    self.interrupt(Why.STOP)
                    return
        finally:
            self.feeder = None

    async def _next_or_idle(self) -> Next:
        """Send the next queued job to the free worker, or make it idle, or
        say that it must stop: the pool closes (with nothing left to run) or
        broke."""
        job = self._jobs.next_job()
        if job is not None:
            await self._send(job)
            return Next.SENT
        if self._jobs.closing or self._jobs.broken is not None:
            return Next.STOP
        self._jobs.idle.append(self)  # the feeder is parked: callers wake it
        return Next.IDLE

    async def _send(self, job: Job) -> None:
        """Start a waiting job on the free worker: write it whole.

        If the worker is gone, or the write is cut (see :meth:`Outbox.write_rest`), the
        reader sees EOF and settles the job.
        """
        worker = self.worker
        if worker.known_dead:
            # Known dead before its pipe says so: a forked worker whose fork
            # server died is settled as killed at once (PR_SET_PDEATHSIG), but
            # may still read a task before the signal lands. The job goes to
            # another worker; the reader sees EOF and ends this one.
            self._jobs.put_back(job)
            self.interrupt(Why.GONE)
            return
        job.link = self
        self.pipeline.sending(job)
        self._jobs.move(job, Move.START)
        faults = self._hooks.faults
        if faults is not None:
            await self.outbox.fault_before_send(faults, job, self.tasks_done + 1)
            if job.state is JobState.CANCELLED:
                worker.kill()
                return
        rest = self.outbox.write(job.pieces, ahead=False)
        if rest is None or (rest and not await self.outbox.write_rest(rest, job)):
            return
        now = trio.current_time()
        self.pipeline.written(job, worker.bytes_written, now)
        if self._hooks.trace is not None:
            self._trace("written", job)
        if job.time_limit is not None:
            # Counted from the moment the worker has the task.
            job.deadline = now + job.time_limit
            if self.read_scope is not None:
                self.read_scope.deadline = job.deadline

    def _send_ahead(self) -> None:
        """Pipelining: while callers queue up, write more small jobs to this
        busy worker, so that it finds the next one waiting when it answers.

        Only behind a job that is short (by the last one's time), so that a
        job never waits long behind another while a worker may be free; only
        as many as ``max_tasks_per_child`` leaves room for; only frames the
        pipe takes whole at once. Each stays cancellable (a SKIP).
        """
        pipeline = self.pipeline
        if (
            not pipeline.may_write_ahead(self._hooks.ahead_after)
            or self.outbox.writing
            or self.worker.known_dead  # see _send
            or self.past_age()  # it takes no more
        ):
            return
        current = pipeline.current
        if current is None or current.state is not JobState.RUNNING:
            return  # its caller gave up on it: the worker may be killed
        room = pipeline.room(self._config.max_tasks_per_child, self.tasks_done)
        while room > 0:
            job = self._jobs.next_job()
            if job is None:
                return
            pieces = job.pieces
            if (
                not Outbox.fits_ahead(pieces)
                or self.outbox.write(pieces, ahead=True) is None
            ):
                self._jobs.waiting.appendleft(job)
                return
            self._jobs.move(job, Move.SEND_AHEAD)
            pipeline.written_ahead(job, self.worker.bytes_written)
            job.link = self
            if self._hooks.trace is not None:
                self._trace("written ahead", job)
            room -= 1

    async def _send_skips(self) -> None:
        """Ask the worker to drop jobs sent ahead whose callers gave up, and
        signal it so that it does so even in the middle of a long task."""
        data = b"".join(
            [
                _protocol.number_frame(_protocol.SKIP, number)
                for number in self.pipeline.take_skips()
            ]
        )
        rest = self.outbox.write([data], ahead=False)
        if rest is not None and (not rest or await self.outbox.write_rest(rest, None)):
            self.worker.process.signal(signal.SIGURG)

    async def _read(self, retiring: Callable[[], None]) -> End:
        """Receive and deliver the worker's answers until it must go.

        The waits for answers run in one cancel scope, ``self.read_scope``,
        kept across answers (entering a scope per answer costs more than the
        rest of a round trip's bookkeeping). Its deadline is the running
        job's time limit; anything else that must end the wait goes through
        :meth:`interrupt`, which records why first.
        """
        worker = self.worker
        end: End | Ended | None = None
        try:
            following = await self._next_or_idle()
            if following is Next.STOP:
                end = End.CLOSED
            elif following is Next.IDLE:
                end = self._stray()
            while end is None:
                with trio.CancelScope() as scope:
                    self.read_scope = scope
                    job = self.pipeline.current
                    if self.why or (job is None and worker.known_dead):
                        scope.cancel()  # interrupted between two waits
                    elif (
                        job is not None
                        and self.pipeline.sent
                        and not self.killed
                        and not worker.process.exited
                    ):
                        scope.deadline = (
                            trio.current_time() + _HEAR_FIRST
                            if self.hear_first
                            else job.deadline
                        )
                    end = await self._answers()
                self.read_scope = None
                if end is None:
                    end = self._interrupted()
            return await self._ended(end, retiring)
        except BaseException:
            # The pool is being torn down around the running job.
            job = self.pipeline.current
            if job is not None:
                job.error = trio.ClosedResourceError(
                    "the pool closed while the task ran"
                )
                self._jobs.end(job, Move.FAIL)
            self._unsend_all(
                trio.ClosedResourceError("the pool closed before the task ran")
            )
            raise

    def _interrupted(self) -> End | Ended | None:
        """The reader's wait was cut short: act on why (``self.why``, or the
        running job's deadline). None: read on."""
        why = self.why
        self.why = Why(0)  # nothing recorded
        self.hear_first = False
        worker = self.worker
        if self.killed or worker.process.exited:
            # Read its answers to the end. Once it has exited, EOF comes at
            # once, even if a process it started holds its pipe.
            return None
        job = self.pipeline.current
        if job is None:
            if Why.STOP in why:
                return self.dismissed or End.CLOSED
            if Why.GONE in why or worker.known_dead:
                # Went with its fork server: lost, even if its pipe has not
                # said so yet (see _send).
                return Ended.EOF
            return None  # meant for a job answered meanwhile: idle on
        if not self.pipeline.sent:
            # Interrupted while the reader itself wrote the job: the stream
            # is out of sync.
            worker.kill()
            return Ended.EOF
        if job.state is not JobState.CANCELLED and trio.current_time() < job.deadline:
            return None  # meant for a job answered meanwhile: serve on
        if self.heard is not job and worker.answer_waiting():
            self.heard = job
            self.hear_first = True
            return None
        if _settle.stop_job(self._jobs, worker, job):
            # To run again: queued once the worker has exited (see
            # _requeue_retried).
            self.retried = job
            worker.kill()
        if not self.pipeline.ahead:
            return End.LOST  # killed as its block ends
        # Jobs sent ahead: the worker may have started the next one already.
        # Kill it and read its answers to the end.
        worker.kill()
        self.killed = True
        return None

    def _stray(self) -> End | None:
        """Ask the stray-frame hook, as the worker goes idle (see _hooks)."""
        stray = self._hooks.stray_frame
        if stray is not None:
            frame = stray(self.worker.pid, "idle")
            if frame is not None:
                return self._idle_frame(frame)
        return None

    async def _answers(self) -> End | Ended | None:
        """The reader's loop inside its scope: take an answer, deliver it,
        send the next job (and more ahead), again. Returns why it stopped
        (None: the scope was cancelled); what takes time after that runs
        outside the scope."""
        worker = self.worker
        limit = self._config.max_tasks_per_child
        while True:
            # The next answer cannot be there before a job went out: wait for
            # the pipe rather than try a read that would fail.
            frame = await worker.receive(wait_first=True)
            if frame is None:
                return Ended.EOF
            trace = self._hooks.trace
            if trace is not None:
                trace(Trace("received", worker.pid, frame_kind=frame.kind))
            kind = frame.kind
            if kind == _protocol.LOG or kind == _protocol.SKIPPED:
                # Never an answer: a log record (see _logs), or a job sent
                # ahead that the worker dropped.
                if kind == _protocol.LOG:
                    _logs.handle(frame, worker.pid, worker.index)
                elif not self._skipped(frame):
                    return End.LOST
                if self.hear_first and not worker.answer_waiting():
                    return None  # no answer came: act on the cancellation now
                continue
            job = self.pipeline.current
            if job is not None and kind == _protocol.FATAL:
                self.fatal_frame = frame
                return Ended.FATAL
            if job is None or not self.pipeline.sent:
                return self._idle_frame(frame)
            now = trio.current_time()
            self.pipeline.answered(now)
            scope = self.read_scope
            if scope is not None and scope.deadline != math.inf:
                scope.deadline = math.inf
            self.hear_first = False
            if kind not in _ANSWERS:
                job.error = BrokenWorkerError(
                    f"worker {worker.pid} broke the protocol: it sent {frame!r}",
                    worker.pid,
                    None,
                )
                self._jobs.end(job, Move.FAIL)
                return End.LOST
            self._jobs.answered(job, frame, worker.pid, now)
            self.tasks_done += 1
            flags = frame.flags
            if flags & _protocol.OVER_MEMORY:
                # The worker starts nothing more; _ended puts back what it holds.
                return self._retire("memory", "over max_memory_per_child")
            if self.pipeline.ahead:
                self._start_ahead(now, sure=bool(flags & _protocol.AHEAD))
            elif flags & _protocol.AHEAD:
                _log.error(
                    "worker %d started a task it was not sent; killing it",
                    worker.pid,
                    extra=_settle.fields(worker, "protocol_error"),
                )
                return End.LOST
            if limit is not None and self.tasks_done >= limit:
                return self._retire("tasks", f"after {self.tasks_done} tasks")
            if self.killed:
                continue  # read on to its end
            if self.pipeline.current is None:
                if self.past_age(now):
                    return self._retire("lifetime", "over max_lifetime_per_child")
                following = await self._next_or_idle()
                if following is Next.STOP:
                    return End.CLOSED
                if following is Next.IDLE:
                    stray = self._stray()
                    if stray is not None:
                        return stray
                    continue
            if self._jobs.waiting:
                self._send_ahead()

    def _retire(self, reason: str, text: str) -> End:
        """The worker is done: it reached a limit ``reason`` names (memory,
        tasks, lifetime), said in ``text``."""
        worker = self.worker
        self.retired_for = reason
        _log.info(
            "worker %d retired %s",
            worker.pid,
            text,
            extra=_settle.fields(worker, "retired", reason=reason),
        )
        return End.RETIRED

    def _start_ahead(self, now: float, *, sure: bool) -> None:
        """The worker answered its current job and now runs the first job
        sent ahead: it said so (``sure``), or it starts it once read."""
        job = self.pipeline.start_next(now, sure=sure)
        self._jobs.move(job, Move.START)
        if job.time_limit is not None:
            job.deadline = now + job.time_limit
        scope = self.read_scope
        if self.killed or scope is None:
            return
        if job.time_limit is not None:
            scope.deadline = job.deadline
        if job.skip and self._jobs.abandon(job, kill=job.kill_on_cancel):
            # Given up while ahead, but started before the worker saw the
            # SKIP: cancelled like a running task (the worker is killed).
            wake(job)

    def _idle_frame(self, frame: _protocol.Frame) -> End:
        """A frame from a worker that was sent nothing to answer."""
        _log.error(
            "idle worker %d sent %r; killing it",
            self.worker.pid,
            frame,
            extra=_settle.fields(self.worker, "protocol_error"),
        )
        return End.LOST

    def _skipped(self, frame: _protocol.Frame) -> bool:
        """The worker dropped a job sent ahead, as its caller asked."""
        (number,) = _protocol.TASK_NUMBER.unpack(frame.payload)
        job = self.pipeline.dropped(number)
        if job is not None:
            self._jobs.cancelled_ahead(job)
            return True
        _log.error(
            "worker %d dropped task %d it was not asked to; killing it",
            self.worker.pid,
            number,
            extra=_settle.fields(self.worker, "protocol_error"),
        )
        return False

    async def _ended(self, end: End | Ended, retiring: Callable[[], None]) -> End:
        """Finish the worker's service for the reason ``end``."""
        worker = self.worker
        timeout = self._config.shutdown_timeout
        if end is End.RETIRED:
            self._unsend_all()
            retiring()
            await worker.stop(timeout)
            return end
        if end is End.CLOSED:
            await worker.stop(timeout)
            return end
        if end is Ended.FATAL:
            job = self.pipeline.current
            assert job is not None
            assert self.fatal_frame is not None
            job.fatal_cause = await _settle.fatal_cause(
                worker, self.fatal_frame, timeout
            )
            self.fatal_frame = None
        if end is End.LOST:
            job = self.pipeline.current
            if job is None or job.state is not JobState.RUNNING:
                return end  # killed as its block ends; its job settled already
            # It broke the protocol while running ``job``: settled like any
            # death under a running job, once it has exited.
            worker.kill()
        # Its pipe is at EOF, or it is ending.
        exitcode = await worker.reap_after_eof()
        # Read after the wait: the feeder may have sent a job meanwhile.
        job = self.pipeline.current
        # Jobs sent ahead never started: the worker starts one only after
        # it has answered the one before, and every answer has been read.
        self._unsend_all()
        started = job is not None and self.pipeline.current_started(
            worker.task_bytes_read()
        )
        _settle.lost(
            self._jobs, worker, job, exitcode, started=started, killed=self.killed
        )
        return End.LOST

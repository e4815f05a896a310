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
- One frame is written at a time (``writing``); an interrupted write kills
  the worker, whose stream to us is out of sync.
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

from . import _faults, _logs, _messages, _pipes, _protocol
from ._errors import BrokenWorkerError, TimeLimitExceeded
from ._hooks import Hooks, Trace, TraceKind
from ._hooks import current as current_hooks
from ._jobs import Job, JobState, Move, wake
from ._pipeline import Pipeline
from ._spawn import describe_exit

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
    # The feeder is in the middle of a frame: nothing else may be written.
    writing: bool = False
    # The worker was killed for its current job but had jobs ahead: its
    # answers are read to its end, to learn which of them it started.
    killed: bool = False
    # The scope of the reader's wait for a frame.
    read_scope: trio.CancelScope | None = None
    # The scope of a write that waits for room in the pipe (reader or feeder).
    write_scope: trio.CancelScope | None = None
    # The feeder must take the next queued job or stop: the pool closed or
    # broke while the worker idled (see Slots.wake_idle).
    recheck: bool = False
    # The running job was cancelled, or ran out of time, while bytes from the
    # worker were waiting: they are read first, for they may be its answer
    # (and the worker busy with the next job, which a kill would hit). Set
    # once per job (``heard``), for at most _HEAR_FIRST seconds.
    hear_first: bool = False
    heard: Job | None = None
    stop_requested: bool = False
    # A FATAL frame from the running job, until the worker's exit is seen.
    fatal_frame: _protocol.Frame | None = None
    tasks_done: int = 0
    # The worker serves no more: the feeder must not touch it.
    finished: bool = False

    # What callers and the queue call (see _jobs.Taker and _jobs.Link).

    def take(self, job: Job) -> None:
        """An idle worker is handed a waiting job by its caller."""
        self.handed = job
        self._wake_feeder()

    def skip(self, job: Job) -> None:
        """The caller of a job written ahead to this worker gives up on it."""
        self.pipeline.ask_skip(job)
        self._wake_feeder()

    def wake_to_recheck(self) -> None:
        """The pool closed or broke while this worker idled."""
        self.recheck = True
        self._wake_feeder()

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
        raise AssertionError("unreachable")  # pragma: no cover

    async def _watch(self) -> None:
        """Notice the worker's exit even while its pipes stay open.

        A process that a task started (or forked) may hold the worker's pipe
        ends after the worker died, so EOF may come late or never. Once the
        process has exited, the worker's pipes give what it wrote and then
        EOF without waiting (see ``Worker.receive``); the waits under way are
        cancelled here, so the reader settles the worker at once.
        """
        process = self.worker.process
        await process.wait()
        if not process.exited:
            return  # orphaned: its pipes say when it is gone (see ForkedProcess)
        for scope in (self.read_scope, self.write_scope):
            if scope is not None:
                scope.cancel()

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
                if job is None or job.state is not JobState.WAITING:
                    # Woken for the pool's close, or the caller was cancelled
                    # before this task woke.
                    job = self._jobs.next_job()
                    if job is None:
                        if self._jobs.closing or self._jobs.broken is not None:
                            self.stop_requested = True
                            if self.read_scope is not None:
                                self.read_scope.cancel()
                            return
                        self._jobs.idle.append(self)
                        continue
                await self._send(job)
        finally:
            self.feeder = None

    async def _send_skips(self) -> None:
        """Ask the worker to drop jobs sent ahead whose callers gave up, and
        signal it so that it does so even in the middle of a long task."""
        data = b"".join(
            [
                _protocol.number_frame(_protocol.SKIP, number)
                for number in self.pipeline.take_skips()
            ]
        )
        worker = self.worker
        self.writing = True
        try:
            rest = worker.write_now([data])
            if rest:
                with trio.CancelScope() as scope:
                    self.write_scope = scope
                    await worker.send(rest)
                self.write_scope = None
                if scope.cancelled_caught:
                    worker.kill()  # out of sync: the reader sees EOF
                    return
        except trio.BrokenResourceError:
            return  # dead: the reader sees EOF and settles the jobs
        finally:
            self.writing = False
        worker.process.signal(signal.SIGURG)

    async def _next_or_idle(self) -> bool:
        """Send the next queued job to the free worker, or make the slot idle.

        Returns False if the worker must stop: the pool closes (and has
        nothing left to run) or broke.
        """
        job = self._jobs.next_job()
        if job is not None:
            await self._send(job)
            return True
        if self._jobs.closing or self._jobs.broken is not None:
            return False
        self._jobs.idle.append(self)  # the feeder is parked: callers wake it
        return True

    async def _send(self, job: Job) -> None:
        """Start a waiting job on the link's free worker: write it whole.

        If the worker is gone, or the write is cancelled halfway (the stream
        is then out of sync, so the worker is killed), the reader sees EOF and
        settles the job.
        """
        worker = self.worker
        if worker.known_dead:
            # Known dead before its pipe says so: a forked worker whose fork
            # server died is settled as killed at once (PR_SET_PDEATHSIG), but
            # may still read a task before the signal lands. The job goes to
            # another worker; the reader sees EOF and ends this one.
            self._jobs.put_back(job)
            if self.read_scope is not None:
                self.read_scope.cancel()
            return
        self._jobs.move(job, Move.START)
        self.pipeline.sending(job)
        faults = self._hooks.faults
        if faults is not None:
            with trio.CancelScope() as job.scope:
                await parent_fault(faults, worker, "before_send", self.tasks_done + 1)
            job.scope = None
            if job.state is JobState.CANCELLED:
                worker.kill()
                return
        try:
            rest = worker.write_now(job.pieces)
            if rest:
                # The pipe is full (a large task): the caller may give up
                # while the rest is written.
                with trio.CancelScope() as scope:
                    job.scope = self.write_scope = scope
                    await worker.send(rest)
                job.scope = self.write_scope = None
                if scope.cancelled_caught:
                    worker.kill()
                    self._trace("write cut", job, unread=worker.unread_task_bytes())
                    return
        except trio.BrokenResourceError:
            return  # the worker is dead: the reader sees EOF
        now = trio.current_time()
        self.pipeline.written(job, worker.bytes_written, now)
        if self._hooks.trace is not None:
            self._trace("written", job)
        if job.time_limit is not None:
            # Counted from the moment the worker has the task.
            job.deadline = now + job.time_limit
        read_scope = self.read_scope
        if read_scope is not None:
            # Arm the reader's wait for the answer.
            job.scope = read_scope
            if job.time_limit is not None:
                read_scope.deadline = job.deadline

    async def _read(self, retiring: Callable[[], None]) -> End:
        """Receive and deliver the worker's answers until it must go.

        The waits for answers run in one cancel scope, ``self.read_scope``,
        kept across answers (entering a scope per answer costs more than the
        rest of a round trip's bookkeeping). It is cancelled by a caller that
        gives up on the running job, by the running job's time limit (its
        deadline) and by the feeder when an idle worker must stop. A
        cancellation can land late (a deadline that expired just as the
        answer came in), so when it arrives the reason is checked against the
        current job and, if none holds, the scope is simply renewed.
        """
        worker = self.worker
        if not await self._next_or_idle():
            return await self._ended(End.CLOSED, retiring)
        stray = self._hooks.stray_frame
        if stray is not None and self.pipeline.current is None:
            frame = stray(worker.pid, "idle")
            if frame is not None:
                return await self._ended(self._idle_frame(frame), retiring)
        try:
            while True:
                end: End | Ended | None = None
                with trio.CancelScope() as scope:
                    self.read_scope = scope
                    job = self.pipeline.current
                    if job is None:
                        if worker.known_dead:
                            scope.cancel()  # known dead: see below
                    elif (
                        self.pipeline.sent
                        and not self.killed
                        and not worker.process.exited
                    ):
                        job.scope = scope
                        if self.hear_first:
                            scope.deadline = trio.current_time() + _HEAR_FIRST
                        else:
                            scope.deadline = job.deadline
                            if job.state is JobState.CANCELLED:
                                scope.cancel()
                    end = await self._answers()
                self.read_scope = None
                job = self.pipeline.current
                if job is not None:
                    job.scope = None
                if end is not None:
                    return await self._ended(end, retiring)
                # The scope was cancelled: find out why.
                self.hear_first = False
                if self.killed or worker.process.exited:
                    # Read its answers to the end. Once it has exited, EOF
                    # comes at once, even if a process it started holds its
                    # pipe.
                    continue
                if job is None:
                    if self.stop_requested:
                        return await self._ended(End.CLOSED, retiring)
                    if worker.known_dead:
                        # Went with its fork server: lost, even if its pipe
                        # has not said so yet (see _send).
                        return await self._ended(Ended.EOF, retiring)
                    continue  # a stray cancellation: the worker idles on
                if not self.pipeline.sent:
                    # Cancelled while the reader itself wrote the job: the
                    # stream is out of sync.
                    worker.kill()
                    return await self._ended(Ended.EOF, retiring)
                if (
                    job.state is JobState.CANCELLED
                    or trio.current_time() >= job.deadline
                ):
                    if self.heard is not job and worker.answer_waiting():
                        self.heard = job
                        self.hear_first = True
                        continue
                    self._stop_job(worker, job)
                    if not self.pipeline.ahead:
                        return End.LOST  # killed as its block ends
                    # Jobs sent ahead: the worker may have started the next
                    # one already. Kill it and read its answers to the end.
                    worker.kill()
                    self.killed = True
                # Else a late cancellation meant for an earlier job: serve on.
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
            if kind == _protocol.LOG:  # never an answer: see _logs
                _logs.handle(frame, worker.pid, worker.index)
                if self.hear_first and not worker.answer_waiting():
                    return None  # no answer came: act on the cancellation now
                continue
            if kind == _protocol.SKIPPED:
                if not self._skipped(frame):
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
            job.scope = None
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
            job.frame = frame
            job.link = None
            self._jobs.end(
                job, Move.COMPLETE if kind == _protocol.RESULT else Move.FAIL
            )
            self.tasks_done += 1
            flags = frame.flags
            if flags & _protocol.OVER_MEMORY:
                # The worker starts nothing more; _ended puts back what it holds.
                _log.info(
                    "worker %d retired over max_memory_per_child",
                    worker.pid,
                    extra={
                        "event": "retired",
                        "worker_pid": worker.pid,
                        "worker_index": worker.index,
                    },
                )
                return End.RETIRED
            if self.pipeline.ahead:
                self._start_ahead(now, sure=bool(flags & _protocol.AHEAD))
            elif flags & _protocol.AHEAD:
                _log.error(
                    "worker %d started a task it was not sent; killing it",
                    worker.pid,
                    extra={
                        "event": "protocol_error",
                        "worker_pid": worker.pid,
                        "worker_index": worker.index,
                    },
                )
                return End.LOST
            if limit is not None and self.tasks_done >= limit:
                _log.info(
                    "worker %d retired after %d tasks",
                    worker.pid,
                    self.tasks_done,
                    extra={
                        "event": "retired",
                        "worker_pid": worker.pid,
                        "worker_index": worker.index,
                    },
                )
                return End.RETIRED
            if self.killed:
                continue  # read on to its end
            if self.pipeline.current is None:
                job = self._jobs.next_job()
                if job is not None:
                    await self._send(job)
                elif self._jobs.closing or self._jobs.broken is not None:
                    return End.CLOSED
                else:
                    self._jobs.idle.append(
                        self
                    )  # the feeder is parked: callers wake it
                    stray = self._hooks.stray_frame
                    if stray is not None:
                        frame = stray(worker.pid, "idle")
                        if frame is not None:
                            return self._idle_frame(frame)
                    continue
            if self._jobs.waiting:
                self._send_ahead()

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
        job.scope = scope
        if job.time_limit is not None:
            scope.deadline = job.deadline
        if job.skip and self._jobs.abandon(job, kill=job.kill_on_cancel):
            # Given up while ahead, but started before the worker saw the
            # SKIP: cancelled like a running task (the worker is killed).
            wake(job)

    def _send_ahead(self) -> None:
        """Pipelining: while callers queue up, write more small jobs to this
        busy worker, so that it finds the next one waiting when it answers.

        Only behind a job that is short (by the last one's time), so that a
        job never waits long behind another while a worker may be free; only
        as many as ``max_tasks_per_child`` leaves room for; only frames the
        pipe takes whole at once. Each stays cancellable (see _abandon).
        """
        pipeline = self.pipeline
        if (
            not pipeline.may_write_ahead(self._hooks.ahead_after)
            or self.writing
            or self.worker.known_dead  # see _send
        ):
            return
        current = pipeline.current
        if current is None or current.state is not JobState.RUNNING:
            return  # its caller gave up on it: the worker may be killed
        room = pipeline.room(self._config.max_tasks_per_child, self.tasks_done)
        worker = self.worker
        while room > 0:
            job = self._jobs.next_job()
            if job is None:
                return
            pieces = job.pieces
            if len(pieces) != 1 or len(pieces[0]) > _pipes.ATOMIC_WRITE:
                self._jobs.waiting.appendleft(job)
                return
            try:
                written = worker.write_whole(pieces[0])  # type: ignore[arg-type]
            except trio.BrokenResourceError:
                written = False  # dead: the reader sees EOF
            if not written:
                self._jobs.waiting.appendleft(job)
                return
            self._jobs.move(job, Move.SEND_AHEAD)
            pipeline.written_ahead(job, worker.bytes_written)
            job.link = self
            if self._hooks.trace is not None:
                self._trace("written ahead", job)
            room -= 1

    def _idle_frame(self, frame: _protocol.Frame) -> End:
        """A frame from a worker that was sent nothing to answer."""
        pid = self.worker.pid
        _log.error(
            "idle worker %d sent %r; killing it",
            pid,
            frame,
            extra={
                "event": "protocol_error",
                "worker_pid": pid,
                "worker_index": self.worker.index,
            },
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
            extra={
                "event": "protocol_error",
                "worker_pid": self.worker.pid,
                "worker_index": self.worker.index,
            },
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
            await self._fatal(worker, job, self.fatal_frame)
            self.fatal_frame = None
            end = Ended.EOF
        if end is Ended.EOF:
            await self._lost(worker)
        return End.LOST

    def _stop_job(self, worker: Worker, job: Job) -> None:
        """The job's caller gave up on it, or its time limit expired: the
        worker is killed (when its owner's block ends)."""
        if job.state is JobState.CANCELLED:
            _log.info(
                "worker %d killed: its task was cancelled",
                worker.pid,
                extra={
                    "event": "killed_for_cancel",
                    "worker_pid": worker.pid,
                    "worker_index": worker.index,
                },
            )
            return
        assert job.time_limit is not None
        # On purpose, and the caller gets TimeLimitExceeded: not a warning.
        _log.info(
            "worker %d killed: task exceeded its time limit of %g s",
            worker.pid,
            job.time_limit,
            extra={
                "event": "killed_for_time_limit",
                "worker_pid": worker.pid,
                "worker_index": worker.index,
            },
        )
        job.error = TimeLimitExceeded(
            f"the task exceeded its time limit of {job.time_limit:g} s; "
            f"worker {worker.pid} was killed",
            job.time_limit,
        )
        self._jobs.end(job, Move.FAIL)

    async def _fatal(self, worker: Worker, job: Job, frame: _protocol.Frame) -> None:
        """A task raised a BaseException that ends its worker: keep it as
        the job's error's cause and wait for the worker to exit."""
        try:
            job.fatal_cause = _messages.decode_remote_exception(frame).rebuild()
        except Exception as exc:
            # Not what a FATAL frame holds; the worker is ending (or gets
            # killed below) all the same.
            job.fatal_cause = exc
        with trio.move_on_after(self._config.shutdown_timeout):
            while (later := await worker.receive()) is not None:
                if not _logs.is_log(later):  # a thread of its may still log
                    worker.kill()
                    break
                _logs.handle(later, worker.pid, worker.index)

    async def _lost(self, worker: Worker) -> None:
        """The worker's pipe is at EOF (or it exited): it died, was killed,
        or broke its pipe (then it is killed now). Settle its jobs."""
        exitcode = await worker.reap_after_eof()
        job = self.pipeline.current
        # Jobs sent ahead never started: the worker starts one only after it
        # has answered the one before, and every answer has been read.
        self._unsend_all()
        if job is None:
            if self.killed:
                # Killed for a task of its own (cancelled, or over its time
                # limit), whose answers were read to the end: on purpose.
                _log.info(
                    "worker %d killed (%s)",
                    worker.pid,
                    exit_text(worker, exitcode),
                    extra={
                        "event": "killed",
                        "worker_pid": worker.pid,
                        "worker_index": worker.index,
                    },
                )
            else:
                _log.warning(
                    "idle worker %d died (%s)",
                    worker.pid,
                    exit_text(worker, exitcode),
                    extra={
                        "event": "lost",
                        "worker_pid": worker.pid,
                        "worker_index": worker.index,
                        "broke_protocol": worker.protocol_error is not None,
                    },
                )
            return
        if job.state is not JobState.RUNNING:
            return  # settled already: killed for its cancellation or time limit
        if not self.pipeline.current_started(worker.task_bytes_read()):
            # The worker died before it read the whole task, so the task never
            # started: like a task handed to a worker that died, it runs on
            # another worker (API.md).
            _log.warning(
                "worker %d died before it read its task (%s); the task goes "
                "to another worker",
                worker.pid,
                exit_text(worker, exitcode),
                extra={
                    "event": "lost",
                    "worker_pid": worker.pid,
                    "worker_index": worker.index,
                    "broke_protocol": worker.protocol_error is not None,
                },
            )
            self._jobs.put_back(job)
            return
        _log.warning(
            "worker %d died running a task (%s)",
            worker.pid,
            exit_text(worker, exitcode),
            extra={
                "event": "lost",
                "worker_pid": worker.pid,
                "worker_index": worker.index,
                "broke_protocol": worker.protocol_error is not None,
            },
        )
        job.error = BrokenWorkerError(
            f"worker {worker.pid} died while running the task "
            f"({exit_text(worker, exitcode)})",
            worker.pid,
            exitcode,
        )
        job.error.__cause__ = job.fatal_cause
        self._jobs.end(job, Move.FAIL)


async def parent_fault(
    plan: _faults.Plan, worker: Worker, stage: str, task: int | None = None
) -> None:
    """Inject a test's fault at a parent-side stage (see ``_faults``)."""
    fault = plan.due(stage, task)
    if fault is None:
        return
    _log.debug(
        "fault injected at %s: %r (worker %d)",
        stage,
        fault,
        worker.pid,
        extra={
            "event": "fault_injected",
            "worker_pid": worker.pid,
            "worker_index": worker.index,
        },
    )
    if fault.action == "sleep":
        await trio.sleep(fault.argument)
    else:
        # Kill and reap, so the worker's pipe ends are closed for certain.
        worker.kill()
        await worker.process.wait()


def exit_text(worker: Worker, exitcode: int | None) -> str:
    """How a worker's process ended, for messages."""
    if worker.protocol_error is not None:
        return f"killed for breaking the protocol: {worker.protocol_error}"
    return describe_exit(exitcode)

"""The parent's half of the write-ahead conversation with one worker, sans-io.

A busy worker may hold a few small tasks written ahead of the one it runs
(see ``_child._Pipes`` for the worker's half). Tasks are numbered per worker
from 1, in writing order. A caller who gives up on a task written ahead asks
the worker to drop it (SKIP); the worker answers SKIPPED, or, if it had
started it already, the task's answer. An answer carries the AHEAD flag when
the worker started the next task it held at once.

This object only keeps the books: which job runs, which are ahead and in
what order, their numbers, the SKIPs to write, and what a worker that died
had started. It does no I/O and changes no job's state (that is
``_jobs.Jobs``' business); ``_serve.Service`` does both. It tags each job it
is given with its worker's slot (``book``) and the times it reads anyway
(``sent_at``, ``finished_at``), for events and per-worker insight.

Invariant: a task written ahead never started unless the worker said so (an
answer with AHEAD, or it answered the one before it and has read it whole).
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from ._jobs import Book, Job

#: At most this many jobs written ahead to one busy worker.
MAX_AHEAD: Final = 8


@attrs.define(eq=False)
class Pipeline:
    #: The job the worker runs (or is being written to it).
    current: Job | None = None
    #: ``current`` was written whole (else it never started, whatever came).
    sent: bool = False
    #: The worker said it started ``current`` (an answer with AHEAD);
    #: otherwise it starts it once it has read it whole.
    sure_started: bool = False
    #: Jobs written ahead behind ``current``, oldest first.
    ahead: deque[Job] = attrs.field(factory=deque)
    #: Tasks numbered on this worker so far.
    numbered: int = 0
    #: When ``current`` started, and how long the last job took (trio time).
    started_at: float = 0.0
    last_duration: float = math.inf
    #: Numbers of jobs ahead to write SKIP frames for.
    skips: list[int] = attrs.field(factory=list)
    #: The worker's slot, set by the slot that runs it (None in tests).
    book: Book | None = None

    def _number(self, job: Job, bytes_written: int) -> None:
        self.numbered += 1
        job.number = self.numbered
        job.end = bytes_written

    def sending(self, job: Job) -> None:
        """``job`` is about to be written to the free worker."""
        self.current = job
        self.sent = False
        job.book = self.book

    def written(self, job: Job, bytes_written: int, now: float) -> None:
        """``job`` (the current one) is written whole: the worker starts it
        once it has read it."""
        self.sent = True
        self._number(job, bytes_written)
        self.sure_started = False
        self.started_at = job.sent_at = now

    def written_ahead(self, job: Job, bytes_written: int) -> None:
        self._number(job, bytes_written)
        self.ahead.append(job)

    def may_write_ahead(self, ahead_after: float) -> bool:
        """Whether jobs may go ahead now: the current one is written whole
        and the last one was short (a job must never wait long behind
        another while a worker may be free)."""
        return (
            self.current is not None and self.sent and self.last_duration <= ahead_after
        )

    def room(self, max_tasks: int | None, tasks_done: int) -> int:
        """How many more jobs may go ahead (``max_tasks_per_child`` counts
        what was written, so it is never exceeded)."""
        room = MAX_AHEAD - len(self.ahead)
        if max_tasks is not None:
            room = min(room, max_tasks - tasks_done - 1 - len(self.ahead))
        return room

    def answered(self, now: float) -> Job:
        """The worker answered the current job; returns it."""
        job = self.current
        assert job is not None
        self.current = None
        self.last_duration = now - self.started_at
        job.finished_at = now
        return job

    def start_next(self, now: float, *, sure: bool) -> Job:
        """The worker moved on to the first job ahead: it said so (``sure``),
        or it starts it once it has read it."""
        job = self.ahead.popleft()
        self.current = job
        self.sent = True
        self.sure_started = sure
        self.started_at = job.sent_at = now
        job.book = self.book
        return job

    def ask_skip(self, job: Job) -> None:
        self.skips.append(job.number)

    def take_skips(self) -> list[int]:
        skips = self.skips
        self.skips = []
        return skips

    def dropped(self, number: int) -> Job | None:
        """The worker dropped job ``number`` (SKIPPED): the job, taken out of
        those ahead, or None if it was not ahead with a SKIP asked for."""
        for job in self.ahead:
            if job.number == number:
                if not job.skip:
                    return None
                self.ahead.remove(job)
                return job
        return None

    def current_started(self, task_bytes_read: int) -> bool:
        """After the worker's death: whether the current job had started,
        given how many bytes of the task pipe it had read. Jobs ahead never
        had: it starts one only after it answered the one before, and every
        answer it sent has been read."""
        job = self.current
        assert job is not None
        return self.sent and (self.sure_started or task_bytes_read >= job.end)

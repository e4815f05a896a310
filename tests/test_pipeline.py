"""The parent's half of the write-ahead conversation, synchronously (see
``triopool._pipeline``): numbering, room, a SKIP answered before and after the
worker started the job, and what a worker that died had started."""

from __future__ import annotations

import pytest

from triopool._jobs import Job, Jobs, JobState, Move
from triopool._pipeline import MAX_AHEAD, Pipeline

TASK_BYTES = 100


class Conversation:
    """A pipeline and the jobs it books, with the bytes written so far."""

    def __init__(self) -> None:
        self.jobs = Jobs()
        self.pipeline = Pipeline()
        self.bytes_written = 0

    def job(self) -> Job:
        job = Job([b"x" * TASK_BYTES], None, True)
        self.jobs.submit(job)
        assert self.jobs.next_job() is job
        return job

    def write(self, now: float = 0.0) -> Job:
        """Write a job to the free worker."""
        job = self.job()
        self.jobs.move(job, Move.START)
        self.pipeline.sending(job)
        self.bytes_written += TASK_BYTES
        self.pipeline.written(job, self.bytes_written, now)
        return job

    def write_ahead(self) -> Job:
        job = self.job()
        self.jobs.move(job, Move.SEND_AHEAD)
        self.bytes_written += TASK_BYTES
        self.pipeline.written_ahead(job, self.bytes_written)
        return job


def test_jobs_are_numbered_in_writing_order_and_remember_their_end() -> None:
    talk = Conversation()
    first = talk.write()
    ahead = [talk.write_ahead() for _ in range(3)]
    assert [job.number for job in (first, *ahead)] == [1, 2, 3, 4]
    assert [job.end for job in (first, *ahead)] == [100, 200, 300, 400]
    assert list(talk.pipeline.ahead) == ahead


def test_jobs_go_ahead_only_behind_a_short_job_written_whole() -> None:
    pipeline = Pipeline()
    assert not pipeline.may_write_ahead(0.002)  # nothing runs
    talk = Conversation()
    talk.write(now=10.0)
    # The last job's duration is not known yet: none goes ahead.
    assert not talk.pipeline.may_write_ahead(0.002)
    talk.pipeline.answered(10.001)
    talk.write(now=10.001)
    assert talk.pipeline.may_write_ahead(0.002)
    talk.pipeline.answered(10.5)
    talk.write(now=10.5)
    assert not talk.pipeline.may_write_ahead(0.002)


@pytest.mark.parametrize(
    ("max_tasks", "tasks_done", "already_ahead", "room"),
    [
        (None, 0, 0, MAX_AHEAD),
        (None, 50, 3, MAX_AHEAD - 3),
        (10, 0, 0, MAX_AHEAD),
        (10, 5, 0, 4),  # the running one counts
        (10, 7, 1, 1),
        (10, 8, 1, 0),
        (1, 0, 0, 0),
    ],
)
def test_room_never_lets_max_tasks_per_child_be_exceeded(
    max_tasks: int | None, tasks_done: int, already_ahead: int, room: int
) -> None:
    talk = Conversation()
    talk.write()
    for _ in range(already_ahead):
        talk.write_ahead()
    assert talk.pipeline.room(max_tasks, tasks_done) == room


def test_the_worker_moves_on_to_the_first_job_ahead() -> None:
    talk = Conversation()
    first = talk.write(now=1.0)
    second, third = talk.write_ahead(), talk.write_ahead()
    assert talk.pipeline.answered(1.25) is first
    assert talk.pipeline.last_duration == 0.25
    assert talk.pipeline.start_next(1.25, sure=True) is second
    assert talk.pipeline.current is second
    assert talk.pipeline.sure_started
    assert list(talk.pipeline.ahead) == [third]


def test_a_skip_answered_before_the_job_started_drops_it() -> None:
    talk = Conversation()
    talk.write()
    ahead = talk.write_ahead()
    ahead.link = Link(talk.pipeline)
    assert not talk.jobs.abandon(ahead, kill=True)  # waits for the verdict
    assert talk.pipeline.take_skips() == [ahead.number]
    assert talk.pipeline.take_skips() == []
    assert talk.pipeline.dropped(ahead.number) is ahead
    talk.jobs.cancelled_ahead(ahead)
    assert ahead.state is JobState.CANCELLED
    assert not talk.pipeline.ahead


def test_a_skip_that_came_after_the_worker_started_the_job() -> None:
    talk = Conversation()
    first = talk.write()
    ahead = talk.write_ahead()
    ahead.link = Link(talk.pipeline)
    talk.jobs.abandon(ahead, kill=False)
    # The worker had started it already: it answers the first job with AHEAD
    # and later the job itself, never SKIPPED.
    talk.pipeline.answered(0.0)
    talk.jobs.end(first, Move.COMPLETE)
    assert talk.pipeline.start_next(0.0, sure=True) is ahead
    talk.jobs.move(ahead, Move.START)
    assert talk.pipeline.dropped(ahead.number) is None  # a late SKIPPED is a lie
    assert ahead.state is JobState.RUNNING


def test_a_skipped_that_was_never_asked_for_is_refused() -> None:
    talk = Conversation()
    talk.write()
    ahead = talk.write_ahead()
    assert talk.pipeline.dropped(ahead.number) is None
    assert talk.pipeline.dropped(99) is None
    assert list(talk.pipeline.ahead) == [ahead]


@pytest.mark.parametrize(
    ("bytes_read", "sure", "started"),
    [
        (0, False, False),  # died before it read the task
        (50, False, False),  # half of it
        (100, False, True),  # read whole: it started it
        (400, False, True),  # and the jobs ahead too, which it never starts
        (0, True, True),  # it said so (an answer with AHEAD)
    ],
)
def test_what_a_worker_that_died_had_started(
    bytes_read: int, sure: bool, started: bool
) -> None:
    talk = Conversation()
    first = talk.write()
    talk.write_ahead()
    talk.write_ahead()
    talk.pipeline.answered(0.0)
    talk.jobs.end(first, Move.COMPLETE)
    second = talk.pipeline.start_next(0.0, sure=sure)
    talk.jobs.move(second, Move.START)
    # The second job ends at byte 200: the worker has read 100 + bytes_read.
    assert talk.pipeline.current_started(100 + bytes_read) is started


def test_a_job_not_written_whole_never_started() -> None:
    talk = Conversation()
    job = talk.job()
    talk.jobs.move(job, Move.START)
    talk.pipeline.sending(job)
    assert not talk.pipeline.current_started(10**9)


class Link:
    """Stands for the worker's service: it books the SKIP to write."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def skip(self, job: Job) -> None:
        self.pipeline.ask_skip(job)

    def stop_running(self, job: Job) -> None:
        raise AssertionError("no job runs to be stopped here")

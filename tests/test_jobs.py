"""The job state table and the queue, synchronously (see ``triopool._jobs``):
every edge of the table, every edge it lacks, the counters it keeps, and the
queue's hand-off to idle takers. No Trio run: jobs here have no caller."""

from __future__ import annotations

import itertools

import pytest
import trio

from triopool import BrokenPoolError
from triopool._jobs import TRANSITIONS, Job, Jobs, JobState, Move


def new_job() -> Job:
    return Job([b"task"], None, True)


def job_in(jobs: Jobs, state: JobState) -> Job:
    """A submitted job brought to ``state`` by legal moves."""
    job = new_job()
    jobs.submit(job)
    if state is not JobState.WAITING:
        assert jobs.next_job() is job  # taken from the queue
    path = {
        JobState.WAITING: [],
        JobState.SENT: [Move.SEND_AHEAD],
        JobState.RUNNING: [Move.START],
        JobState.COMPLETED: [Move.START, Move.COMPLETE],
        JobState.FAILED: [Move.START, Move.FAIL],
        JobState.CANCELLED: [Move.CANCEL],
    }[state]
    for move in path:
        jobs.move(job, move)
    return job


def state_of(job: Job) -> JobState:
    # A call, so that type checkers do not carry an earlier check over.
    return job.state


def counters_add_up(jobs: Jobs) -> bool:
    return sum(jobs.counts) == jobs.submitted


class Taker:
    def __init__(self) -> None:
        self.taken: list[Job] = []

    def take(self, job: Job) -> None:
        self.taken.append(job)


class Link:
    """Stands for the service of the worker a job was written to."""

    def __init__(self) -> None:
        self.skipped: list[Job] = []
        self.stopped: list[Job] = []

    def skip(self, job: Job) -> None:
        self.skipped.append(job)

    def stop_running(self, job: Job) -> None:
        self.stopped.append(job)


@pytest.mark.parametrize(("state", "move"), sorted(TRANSITIONS, key=str))
def test_every_edge_of_the_table_moves_the_job_and_its_counters(
    state: JobState, move: Move
) -> None:
    jobs = Jobs()
    job = job_in(jobs, state)
    before = list(jobs.counts)
    jobs.move(job, move)
    assert job.state is TRANSITIONS[state, move]
    assert counters_add_up(jobs)
    assert jobs.counts != before or _counter(state) == _counter(job.state)


def _counter(state: JobState) -> int:
    return {0: 0, 1: 0, 2: 1, 3: 2, 4: 3, 5: 4}[int(state)]


@pytest.mark.parametrize(
    ("state", "move"),
    [pair for pair in itertools.product(JobState, Move) if pair not in TRANSITIONS],
)
def test_a_move_the_table_lacks_is_refused(state: JobState, move: Move) -> None:
    jobs = Jobs()
    job = job_in(jobs, state)
    before = list(jobs.counts)
    with pytest.raises(AssertionError, match=move.value):
        jobs.move(job, move)
    assert job.state is state
    assert jobs.counts == before


def test_ended_states_have_no_way_out() -> None:
    ended = {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
    assert not [pair for pair in TRANSITIONS if pair[0] in ended]


def test_a_job_goes_to_the_most_recently_idle_taker_else_waits_in_order() -> None:
    jobs = Jobs()
    first, second = Taker(), Taker()
    jobs.idle += [first, second]
    a, b, c, d = (new_job() for _ in range(4))
    for job in (a, b, c, d):
        jobs.submit(job)
    assert (second.taken, first.taken) == ([a], [b])
    assert list(jobs.waiting) == [c, d]
    assert jobs.next_job() is c
    # A job put back goes before the rest.
    jobs.put_back(a)
    assert jobs.next_job() is a
    assert jobs.next_job() is d
    assert jobs.next_job() is None


def test_cancelled_jobs_are_skipped_by_the_queue() -> None:
    jobs = Jobs()
    a, b = new_job(), new_job()
    jobs.submit(a)
    jobs.submit(b)
    assert jobs.abandon(a, kill=True)
    assert a.state is JobState.CANCELLED
    assert jobs.next_job() is b
    assert jobs.counts == [1, 0, 0, 0, 1]


def test_a_running_job_is_put_back_first_in_line_and_counted_waiting() -> None:
    jobs = Jobs()
    running = job_in(jobs, JobState.RUNNING)
    queued = job_in(jobs, JobState.WAITING)
    jobs.put_back(running)
    assert running.state is JobState.WAITING
    assert list(jobs.waiting) == [running, queued]
    assert jobs.counts[:2] == [2, 0]


def test_a_job_put_back_fails_once_the_pool_is_broken() -> None:
    jobs = Jobs()
    job = job_in(jobs, JobState.SENT)
    cause = RuntimeError("the last start failure")
    jobs.broken = BrokenPoolError("5 worker starts failed in a row")
    jobs.broken.__cause__ = cause
    jobs.put_back(job)
    assert job.state is JobState.FAILED
    assert isinstance(job.error, BrokenPoolError)
    assert job.error is not jobs.broken  # a fresh instance per raise
    assert job.error.__cause__ is cause
    assert counters_add_up(jobs)


def test_abandoning_by_state() -> None:
    jobs = Jobs()
    waiting = job_in(jobs, JobState.WAITING)
    assert jobs.abandon(waiting, kill=False)
    assert waiting.state is JobState.CANCELLED

    running = job_in(jobs, JobState.RUNNING)
    # kill_on_cancel=False: the caller waits on for the outcome.
    assert not jobs.abandon(running, kill=False)
    assert running.state is JobState.RUNNING
    running_at = Link()
    running.link = running_at
    assert running_at.stopped == []
    assert jobs.abandon(running, kill=True)
    assert state_of(running) is JobState.CANCELLED
    assert running_at.stopped == [running]  # its worker's service kills it

    link = Link()
    sent = job_in(jobs, JobState.SENT)
    sent.link = link
    # Written ahead: a SKIP is asked for once, and the caller waits for it.
    assert not jobs.abandon(sent, kill=True)
    assert not jobs.abandon(sent, kill=True)
    assert link.skipped == [sent]
    assert sent.state is JobState.SENT
    jobs.cancelled_ahead(sent)
    assert state_of(sent) is JobState.CANCELLED
    assert counters_add_up(jobs)
    assert jobs.counts == [0, 0, 0, 0, 3]


def test_end_leaves_a_job_its_caller_cancelled_as_it_is() -> None:
    jobs = Jobs()
    job = job_in(jobs, JobState.RUNNING)
    jobs.abandon(job, kill=True)
    jobs.end(job, Move.COMPLETE)
    assert job.state is JobState.CANCELLED
    assert jobs.counts == [0, 0, 0, 0, 1]


def test_fail_waiting_fails_queued_and_handed_jobs_only() -> None:
    jobs = Jobs()
    queued, handed, running = new_job(), new_job(), new_job()
    for job in (queued, handed, running):
        jobs.submit(job)
    jobs.waiting.remove(handed)  # as if handed to an idle taker
    jobs.waiting.remove(running)
    jobs.move(running, Move.START)
    jobs.fail_waiting(lambda: trio.ClosedResourceError("closed"), [handed])
    assert (queued.state, handed.state) == (JobState.FAILED, JobState.FAILED)
    assert isinstance(queued.error, trio.ClosedResourceError)
    assert queued.error is not handed.error
    assert running.state is JobState.RUNNING
    assert not jobs.waiting
    assert jobs.counts == [0, 1, 0, 2, 0]

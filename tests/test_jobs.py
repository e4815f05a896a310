"""The job state table and the queue, synchronously (see ``triopool._jobs``):
every edge of the table, every edge it lacks, the counters it keeps, and the
queue's hand-off to idle takers. No Trio run: jobs here have no caller."""

from __future__ import annotations

import itertools

import pytest
import trio

from triopool import (
    BrokenPoolError,
    BrokenWorkerError,
    TimeLimitExceeded,
    _messages,
    _protocol,
)
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


# Retries (see Jobs.run_failed): a RETRY is a move of the table like any other.


def retrying_job(
    jobs: Jobs, retries: int, retry_on: tuple[type[BaseException], ...]
) -> Job:
    job = job_in(jobs, JobState.RUNNING)
    job.retries = retries
    job.retry_on = retry_on
    job.retry_errors = any(
        not issubclass(cls, BrokenWorkerError | TimeLimitExceeded) for cls in retry_on
    )
    return job


def died(pid: int = 123) -> BrokenWorkerError:
    return BrokenWorkerError(f"worker {pid} died", pid, -9)


def test_a_retried_job_goes_first_in_line_and_counts_as_waiting() -> None:
    jobs = Jobs()
    job = retrying_job(jobs, 1, (BrokenWorkerError,))
    queued = job_in(jobs, JobState.WAITING)
    assert jobs.run_failed(job, died(), 123)
    assert job.state is JobState.WAITING
    assert list(jobs.waiting) == [job, queued]
    assert (job.retries, job.failed_runs, jobs.retried) == (0, 1, 1)
    assert jobs.counts == [2, 0, 0, 0, 0]
    assert job.error is None


def test_a_retried_job_goes_to_an_idle_taker_at_once() -> None:
    jobs = Jobs()
    taker = Taker()
    job = retrying_job(jobs, 2, (BrokenWorkerError,))
    jobs.idle.append(taker)
    assert jobs.run_failed(job, died(), 123)
    assert taker.taken == [job]
    assert not jobs.waiting


def test_the_last_failure_says_how_many_runs_were_tried() -> None:
    jobs = Jobs()
    job = retrying_job(jobs, 2, (BrokenWorkerError,))
    for pid in (1, 2):
        assert jobs.run_failed(job, died(pid), pid)
        assert jobs.next_job() is job
        jobs.move(job, Move.START)
    last = died(3)
    assert not jobs.run_failed(job, last, 3)
    assert job.state is JobState.FAILED
    assert job.error is last
    assert str(last) == "worker 3 died (3 runs tried)"
    assert (last.runs, last.pid, last.exitcode) == (3, 3, -9)
    assert jobs.retried == 2
    assert jobs.counts == [0, 0, 0, 1, 0]


def test_a_failure_not_named_in_retry_on_ends_the_job_after_one_run() -> None:
    jobs = Jobs()
    job = retrying_job(jobs, 3, (BrokenWorkerError,))
    error = TimeLimitExceeded("over its 1 s", 1.0)
    assert not jobs.run_failed(job, error, 123)
    assert job.state is JobState.FAILED
    # One run: nothing to say about runs.
    assert (str(error), error.runs, jobs.retried) == ("over its 1 s", 1, 0)


def test_a_task_error_is_retried_when_named_and_marked_with_a_note() -> None:
    jobs = Jobs()
    job = retrying_job(jobs, 1, (KeyError,))
    assert jobs.run_failed(job, KeyError("first"), 1)
    assert jobs.next_job() is job
    jobs.move(job, Move.START)
    last = KeyError("second")
    assert not jobs.run_failed(job, last, 1)
    assert job.error is last
    assert last.args == ("second",)  # the task's own message is left alone
    assert last.__notes__ == ["triopool: 2 runs tried"]


def test_a_job_its_caller_cancelled_is_not_retried() -> None:
    jobs = Jobs()
    job = retrying_job(jobs, 1, (BrokenWorkerError,))
    assert jobs.abandon(job, kill=True)
    assert not jobs.run_failed(job, died(), 123)
    assert job.state is JobState.CANCELLED
    assert jobs.retried == 0
    assert not jobs.waiting


def test_a_retry_fails_once_the_pool_is_broken() -> None:
    jobs = Jobs()
    job = retrying_job(jobs, 1, (BrokenWorkerError,))
    jobs.broken = BrokenPoolError("5 worker starts failed in a row")
    assert jobs.run_failed(job, died(), 123)
    assert job.state is JobState.FAILED
    assert isinstance(job.error, BrokenPoolError)
    assert counters_add_up(jobs)


def error_frame(error: BaseException) -> _protocol.Frame:
    try:
        raise error  # a task's exception has a traceback
    except BaseException as exc:
        kind, payload, buffers = _messages.error_answer(exc)
    decoder = _protocol.Decoder()
    pieces = _protocol.encode_frame(kind, payload, buffers)
    decoder.receive_data(b"".join(bytes(piece) for piece in pieces))
    frame = decoder.next_frame()
    assert isinstance(frame, _protocol.Frame)
    return frame


def test_an_answer_is_decoded_for_retry_on_only_when_it_may_name_task_errors() -> None:
    jobs = Jobs()
    # retry_on names only the pool's errors: the frame is left for the caller.
    plain = retrying_job(jobs, 1, (BrokenWorkerError,))
    frame = error_frame(KeyError("k"))
    jobs.answered(plain, frame, 1)
    assert plain.state is JobState.FAILED
    assert (plain.frame, plain.error) == (frame, None)
    # A task error named: decoded here, once, and retried.
    named = retrying_job(jobs, 1, (KeyError,))
    jobs.answered(named, error_frame(KeyError("k")), 1)
    assert named.state is JobState.WAITING
    assert jobs.retried == 1
    # Not named: decoded here all the same, and kept for the caller to raise.
    jobs = Jobs()
    other = retrying_job(jobs, 1, (KeyError,))
    jobs.answered(other, error_frame(ValueError("v")), 1)
    assert other.state is JobState.FAILED
    assert other.frame is None
    assert isinstance(other.error, ValueError)
    assert other.error.args == ("v",)


def test_a_retry_held_back_waits_unqueued_until_put_back() -> None:
    # Killed for its time limit: queued only once its worker has exited.
    jobs = Jobs()
    job = retrying_job(jobs, 1, (TimeLimitExceeded,))
    queued = job_in(jobs, JobState.WAITING)
    assert jobs.run_failed(job, TimeLimitExceeded("over", 1.0), 1, requeue=False)
    assert job.state is JobState.WAITING
    assert list(jobs.waiting) == [queued]
    assert jobs.counts[0] == 2  # it waits all the same
    jobs.put_back(job)
    assert list(jobs.waiting) == [job, queued]

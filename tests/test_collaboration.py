"""Collaboration tests: the pool against scripted fake workers.

Each fake (tests/fakeworker.py) speaks the real wire protocol from a Trio task
of the test, so a test decides exactly when a worker answers, holds a task
written ahead, dies or misbehaves, with no process to start and no timing to
hope for. test_pipelining and test_faults check the same rules against real
processes.

Tasks go ahead only to a busy worker, once it answered, while callers wait:
so the scripts here answer a first task once the test has queued callers up
behind it (``go``), and then find the second task running and the third one
held.
"""

from __future__ import annotations

import logging
import operator
import signal
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from triopool import BrokenWorkerError, TimeLimitExceeded, _protocol, _stats

from .fakeworker import FakeWorker, SpawnOnlyError, fake_pool

if TYPE_CHECKING:
    from triopool import Pool

# Generous: every step here is in-process and takes milliseconds.
_BOUND = 10.0


def no_identity_problems(pool: Pool) -> None:
    assert _stats.identity_problems(pool.statistics()) == []


def events(caplog: pytest.LogCaptureFixture, pid: int) -> list[str]:
    """The structured ``event`` fields logged about worker ``pid``."""
    return [
        record.__dict__["event"]
        for record in caplog.records
        if record.__dict__.get("worker_pid") == pid and "event" in record.__dict__
    ]


class Callers:
    """Callers of ``operator.add`` on one pool, by name, and what each got."""

    def __init__(self, pool: Pool, nursery: trio.Nursery) -> None:
        self._pool = pool
        self._nursery = nursery
        self.outcomes: dict[str, Any] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.done: dict[str, trio.Event] = {}

    async def start(self, name: str, *args: int) -> None:
        """Start a caller and wait until every task is blocked (it is
        running, or queued)."""
        self.done[name] = trio.Event()
        self.scopes[name] = trio.CancelScope()
        self._nursery.start_soon(self._call, name, args)
        await trio.testing.wait_all_tasks_blocked()

    async def queue_three(self, go: trio.Event) -> None:
        """The callers of FakeWorker.answer_first_then_hold: "first" runs,
        "running" and "held" queue behind it; then ``go``."""
        await self.start("first", 1, 1)
        await self.start("running", 2, 2)
        await self.start("held", 3, 3)
        go.set()

    async def _call(self, name: str, args: tuple[int, ...]) -> None:
        with self.scopes[name]:
            try:
                self.outcomes[name] = await self._pool.run_sync(operator.add, *args)
            except (BrokenWorkerError, TimeLimitExceeded) as exc:
                self.outcomes[name] = exc
            except trio.Cancelled:
                self.outcomes[name] = "cancelled"
                raise
            finally:
                self.done[name].set()


async def test_a_result_reaches_its_caller() -> None:
    with trio.fail_after(_BOUND):
        async with fake_pool(workers=1) as (pool, launcher):
            assert await pool.run_sync(operator.add, 2, 3) == 5
            assert await pool.run_sync(operator.mul, 4, 5) == 20
            (worker,) = launcher.workers
            assert worker.started_tasks == [1, 2]
            stats = pool.statistics()
            assert (stats.tasks_completed, stats.workers_lost) == (2, 0)
            no_identity_problems(pool)
        assert worker.returncode == 0  # stopped by EOF on its task pipe


@pytest.mark.parametrize("max_tasks_per_child", [None, 3])
async def test_a_task_held_ahead_runs_elsewhere_when_its_worker_dies(
    max_tasks_per_child: int | None,
) -> None:
    """The worker dies running one task while it holds the next: that
    caller gets BrokenWorkerError, the held task runs on the replacement."""
    go = trio.Event()

    async def die_holding(worker: FakeWorker) -> None:
        await worker.answer_first_then_hold(go)
        worker.die(3)

    with trio.fail_after(_BOUND):
        async with fake_pool(
            die_holding, workers=1, max_tasks_per_child=max_tasks_per_child
        ) as (pool, launcher):
            async with trio.open_nursery() as nursery:
                callers = Callers(pool, nursery)
                await callers.queue_three(go)
            first, second = launcher.workers
            assert callers.outcomes["first"] == 2
            error = callers.outcomes["running"]
            assert isinstance(error, BrokenWorkerError)
            assert (error.pid, error.exitcode) == (first.pid, 3)
            assert callers.outcomes["held"] == 6
            # The dead worker held the third task but never started it.
            assert first.started_tasks == [1, 2]
            assert [number for number, _ in first.held] == [3]
            assert second.started_tasks == [1]
            stats = pool.statistics()
            assert (stats.tasks_completed, stats.tasks_failed) == (2, 1)
            assert stats.workers_lost == 1
            no_identity_problems(pool)


@pytest.mark.parametrize("hears_sigurg", [True, False])
async def test_a_task_skipped_while_held_is_cancelled_and_the_worker_serves_on(
    hears_sigurg: bool,
) -> None:
    """The caller of a held task gives up: the pool writes SKIP (and sends
    SIGURG), the worker drops the task and answers SKIPPED, the caller sees
    Cancelled, and the worker serves on. A worker that heeds SIGURG confirms
    at once, in the middle of its task; otherwise just before its answer."""
    go = trio.Event()
    holding = trio.Event()
    release = trio.Event()
    answers: list[list[bytes | memoryview]] = []

    async def hold_then_answer(worker: FakeWorker) -> None:
        worker.hears_sigurg = hears_sigurg
        task = await worker.answer_first_then_hold(go)
        holding.set()
        await release.wait()
        answers.append(worker.answer_pieces(task[1](*task[2])))
        worker.send(answers[-1])

    with trio.fail_after(_BOUND):
        async with fake_pool(hold_then_answer, workers=1) as (pool, launcher):
            async with trio.open_nursery() as nursery:
                callers = Callers(pool, nursery)
                await callers.queue_three(go)
                await holding.wait()
                callers.scopes["held"].cancel()
                await trio.testing.wait_all_tasks_blocked()
                # Heeding SIGURG, the worker confirmed mid-task; else the
                # caller waits for the worker's verdict, due with the answer.
                assert callers.done["held"].is_set() is hears_sigurg
                assert "running" not in callers.outcomes
                release.set()
            (worker,) = launcher.workers
            assert callers.outcomes == {"first": 2, "running": 4, "held": "cancelled"}
            assert worker.skipped == [3]
            (data,) = answers[0]
            # The first frame's kind: SKIPPED came first with the answer,
            # unless SIGURG had it sent already.
            assert data[0] == (_protocol.RESULT if hears_sigurg else _protocol.SKIPPED)
            # Serving on: the next task, numbered after the dropped one.
            assert await pool.run_sync(operator.add, 4, 4) == 8
            assert worker.started_tasks == [1, 2, 4]
            assert worker.signals == [signal.SIGURG]
            stats = pool.statistics()
            assert (stats.tasks_completed, stats.tasks_cancelled) == (3, 1)
            assert (stats.workers_started, stats.workers_lost) == (1, 0)
            no_identity_problems(pool)


async def test_a_skip_that_comes_after_the_task_started_gets_the_worker_killed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The SKIP crosses the answer that says the worker started the held
    task (AHEAD): the worker ignores it, the task runs, so the pool kills
    the worker for the cancelled task and the caller sees Cancelled."""
    caplog.set_level(logging.INFO, logger="triopool")
    go = trio.Event()
    holding = trio.Event()
    ignored_skip: list[bool] = []

    async def start_before_the_skip(worker: FakeWorker) -> None:
        worker.hears_sigurg = False
        task = await worker.answer_first_then_hold(go)
        holding.set()
        # The SKIP is in the pipe, unread: the answer went out before it.
        await worker.signalled(signal.SIGURG)
        worker.answer(task[1](*task[2]), take_in=False)
        assert await worker.next_task() is not None  # the held one, started
        worker.take_in()
        ignored_skip.append(worker.skipped == [])
        await trio.sleep_forever()  # it runs until it is killed

    with trio.fail_after(_BOUND):
        async with fake_pool(start_before_the_skip, workers=1) as (pool, launcher):
            async with trio.open_nursery() as nursery:
                callers = Callers(pool, nursery)
                await callers.queue_three(go)
                await holding.wait()
                callers.scopes["held"].cancel()
            first = launcher.workers[0]
            assert callers.outcomes == {"first": 2, "running": 4, "held": "cancelled"}
            assert ignored_skip == [True]
            assert first.started_tasks == [1, 2, 3]
            assert first.signals == [signal.SIGURG, signal.SIGKILL]
            assert "killed_for_cancel" in events(caplog, first.pid)
            # The pool goes on with a replacement.
            assert await pool.run_sync(operator.add, 4, 4) == 8
            assert launcher.workers[1].started_tasks == [1]
            stats = pool.statistics()
            assert (stats.tasks_completed, stats.tasks_cancelled) == (3, 1)
            assert stats.workers_lost == 1
            no_identity_problems(pool)


async def test_a_time_limit_gets_the_worker_killed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="triopool")

    async def never_answer(worker: FakeWorker) -> None:
        assert await worker.next_task() is not None
        await trio.sleep_forever()  # until killed

    with trio.fail_after(_BOUND):
        async with fake_pool(never_answer, workers=1) as (pool, launcher):
            with pytest.raises(TimeLimitExceeded) as caught:
                await pool.run_sync(operator.add, 1, 1, time_limit=0.05)
            assert caught.value.time_limit == 0.05
            first = launcher.workers[0]
            assert await first.wait() == -signal.SIGKILL
            assert first.signals == [signal.SIGKILL]
            assert "killed_for_time_limit" in events(caplog, first.pid)
            assert await pool.run_sync(operator.add, 2, 2) == 4
            stats = pool.statistics()
            assert (stats.tasks_completed, stats.tasks_failed) == (1, 1)
            assert stats.workers_lost == 1
            no_identity_problems(pool)


async def test_a_frame_from_an_idle_worker_gets_it_killed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An idle worker that sends a frame nobody asked for is killed, and no
    caller ever sees that frame."""
    caplog.set_level(logging.INFO, logger="triopool")

    async def stray(worker: FakeWorker) -> None:
        worker.answer("stray")
        await trio.sleep_forever()  # until killed

    with trio.fail_after(_BOUND):
        async with fake_pool(stray, workers=1) as (pool, launcher):
            first = await launcher.worker(0)
            assert await first.wait() == -signal.SIGKILL
            assert first.signals == [signal.SIGKILL]
            assert first.started_tasks == []
            assert "protocol_error" in events(caplog, first.pid)
            assert await pool.run_sync(operator.add, 20, 22) == 42
            assert launcher.workers[1].started_tasks == [1]
            stats = pool.statistics()
            assert (stats.workers_lost, stats.tasks_completed) == (1, 1)
            assert stats.tasks_failed == 0
            no_identity_problems(pool)


@pytest.mark.parametrize("keeps_pipes", [False, True])
async def test_answers_written_before_a_death_reach_their_callers(
    caplog: pytest.LogCaptureFixture, keeps_pipes: bool
) -> None:
    """The worker writes two answers (the first with AHEAD) and dies before
    the pool has read them: both callers get their results. Its pipes close
    with it, or a process it started keeps them open (then only its exit
    tells the pool, and what it wrote is read all the same)."""
    caplog.set_level(logging.INFO, logger="triopool")
    go = trio.Event()

    async def answer_twice_then_die(worker: FakeWorker) -> None:
        running = await worker.answer_first_then_hold(go)
        worker.answer(running[1](*running[2]))
        held = await worker.next_task()
        assert held is not None
        worker.answer(held[1](*held[2]))
        if keeps_pipes:
            worker.exit_keeping_pipes(-signal.SIGSEGV)
        else:
            worker.die(-signal.SIGSEGV)

    with trio.fail_after(_BOUND):
        async with fake_pool(answer_twice_then_die, workers=1) as (pool, launcher):
            async with trio.open_nursery() as nursery:
                callers = Callers(pool, nursery)
                await callers.start("first", 1, 1)
                await callers.start("second", 2, 2)
                await callers.start("third", 3, 3)
                go.set()
            first = launcher.workers[0]
            assert callers.outcomes == {"first": 2, "second": 4, "third": 6}
            assert first.started_tasks == [1, 2, 3]
            assert first.signals == []
            await launcher.worker(1)  # the slot has settled the death
            assert "lost" in events(caplog, first.pid)
            stats = pool.statistics()
            assert (stats.tasks_completed, stats.tasks_failed) == (3, 0)
            assert stats.workers_lost == 1
            no_identity_problems(pool)


async def test_an_exit_while_the_pipes_stay_open_fails_the_task_promptly() -> None:
    """The worker exits mid-task but a process it started keeps its pipes
    open: no EOF comes, the pool notices the exit all the same."""

    async def exit_keeping_pipes(worker: FakeWorker) -> None:
        assert await worker.next_task() is not None
        worker.exit_keeping_pipes(5)

    with trio.fail_after(_BOUND):
        async with fake_pool(exit_keeping_pipes, workers=1) as (pool, launcher):
            with pytest.raises(BrokenWorkerError) as caught:
                await pool.run_sync(operator.add, 1, 1)
            first = launcher.workers[0]
            assert (caught.value.pid, caught.value.exitcode) == (first.pid, 5)
            # Its pipes are still open at its end: no EOF told the pool.
            assert first.fd_out >= 0
            # The pool goes on with a replacement.
            assert await pool.run_sync(operator.add, 2, 2) == 4
            stats = pool.statistics()
            assert (stats.workers_lost, stats.tasks_failed) == (1, 1)
            no_identity_problems(pool)


async def test_a_fake_pool_is_a_spawn_pool_only() -> None:
    with pytest.raises(SpawnOnlyError):
        async with fake_pool(start_method="forkserver"):
            pass  # pragma: no cover


async def test_a_running_task_fails_when_its_worker_breaks_the_protocol(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker that, while it runs a task, confirms dropping a task it was
    never sent is killed; the caller of the running task is woken with
    BrokenWorkerError instead of waiting forever."""
    caplog.set_level(logging.INFO, logger="triopool")

    async def drop_unasked(worker: FakeWorker) -> None:
        task = await worker.next_task()
        assert task is not None
        worker.send([_protocol.number_frame(_protocol.SKIPPED, 7)])
        await trio.sleep_forever()  # until killed

    with trio.fail_after(_BOUND):
        async with fake_pool(drop_unasked, workers=1) as (pool, launcher):
            with pytest.raises(BrokenWorkerError) as caught:
                await pool.run_sync(operator.add, 1, 2)
            first = launcher.workers[0]
            assert caught.value.pid == first.pid
            assert first.signals == [signal.SIGKILL]
            assert first.started_tasks == [1]
            assert "protocol_error" in events(caplog, first.pid)
            assert await pool.run_sync(operator.add, 20, 22) == 42
            stats = pool.statistics()
            assert (stats.workers_lost, stats.tasks_failed) == (1, 1)
            assert stats.tasks_completed == 1
            no_identity_problems(pool)


async def test_a_task_given_up_while_it_runs_is_not_run_again() -> None:
    """With kill_on_cancel=False, a caller cancelled while its task runs
    waits for that run's outcome; if the run fails with one of retry_on, the
    task is not run again for a caller that gave up: it gets the failure."""
    go = trio.Event()

    async def die_running(worker: FakeWorker) -> None:
        assert await worker.next_task() is not None
        await go.wait()
        worker.die(3)

    with trio.fail_after(_BOUND):
        async with fake_pool(
            die_running, workers=1, retries=1, kill_on_cancel=False
        ) as (pool, launcher):
            async with trio.open_nursery() as nursery:
                callers = Callers(pool, nursery)
                await callers.start("given up", 1, 2)
                callers.scopes["given up"].cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert not callers.done["given up"].is_set()  # shielded
                go.set()
            error = callers.outcomes["given up"]
            assert isinstance(error, BrokenWorkerError)
            first = launcher.workers[0]
            assert (error.pid, error.exitcode) == (first.pid, 3)
            assert all(w.started_tasks == [] for w in launcher.workers[1:])
            stats = pool.statistics()
            assert (stats.tasks_retried, stats.tasks_failed) == (0, 1)
            no_identity_problems(pool)


async def test_a_task_given_up_before_it_started_does_not_run_elsewhere() -> None:
    """With kill_on_cancel=False, a caller cancelled while its task is still
    being written waits; if the worker then dies before it has the whole
    task, the task never started, and it is not run on another worker for a
    caller that gave up: the caller is cancelled."""
    go = trio.Event()
    big = b"x" * (1 << 20)  # more than a pipe holds: its write waits

    async def die_unread(worker: FakeWorker) -> None:
        await go.wait()
        worker.die(3)

    outcome: list[object] = []
    given_up = trio.CancelScope()

    async def call(pool: Pool) -> None:
        with given_up:
            try:
                outcome.append(await pool.run_sync(len, big))
            except trio.Cancelled:
                outcome.append("cancelled")
                raise

    with trio.fail_after(_BOUND):
        async with fake_pool(
            die_unread, workers=1, retries=1, kill_on_cancel=False
        ) as (pool, launcher):
            await launcher.worker(0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, pool)
                await trio.testing.wait_all_tasks_blocked()
                assert pool.statistics().tasks_running == 1
                given_up.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert outcome == []  # shielded: it waits on
                go.set()
            assert outcome == ["cancelled"]
            assert all(w.started_tasks == [] for w in launcher.workers)
            stats = pool.statistics()
            assert (stats.tasks_cancelled, stats.tasks_completed) == (1, 0)
            no_identity_problems(pool)

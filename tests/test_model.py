"""A stateful model test: hypothesis drives a pool with random submissions,
cancellations, external kills and waits, and checks each task's ending
against a model of what it may end as, plus the counters and fds after
every step.

The pool lives in a Trio run on a thread of its own for the length of one
example; the rules reach it through ``trio.from_thread``. Workers are started
by that thread, which lives as long as the pool (``PR_SET_PDEATHSIG`` fires
when the starting thread exits).

It runs once per start method. With ``forkserver`` the killable processes
include the fork server, whose death takes its workers along. What the pool
only logs is checked as in the storm (``tests.storm.LogWatch``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

import triopool
from tests import hostilefuncs as hf
from tests import workerfuncs as wf
from tests.conftest import open_fds
from tests.storm import (
    Grandchildren,
    LogWatch,
    check_counters,
    descendants,
    fd_bound,
    pool_processes,
    watch_log,
)

if TYPE_CHECKING:
    from collections.abc import Callable

if TYPE_CHECKING:
    from tests.conftest import StartMethod

WORKERS = 2
EXIT_CODE = 3
TIMEOUT = 60
# What a task may be: a plain echo, a slow one, one that exits with
# EXIT_CODE, and the hostile ones (tests/hostilefuncs.py, see
# tests.storm.HOSTILE_ACTIONS): fork and let the copy come back into the
# worker, leave a grandchild holding the worker's pipes and exit or return,
# dup2 /dev/null over the result pipe.
KINDS = ("echo", "slow", "exit", "fork", "grandchild-exit", "grandchild-return", "dup2")
HOSTILE_KINDS = ("fork", "grandchild-exit", "grandchild-return", "dup2")
ECHOING_KINDS = ("echo", "slow", "fork", "grandchild-return")


@dataclass
class ModelTask:
    """One submitted task and what the model allows it to end as."""

    nonce: str
    kind: str  # one of KINDS
    kill_on_cancel: bool
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)
    cancel_requested: bool = False
    # A worker was killed while this task was in flight: it may have run there.
    may_break: bool = False
    # Some worker was killed before this task ended. Kills of starting workers
    # are start failures, and max_start_failures of them in a row break the
    # pool (the model keeps the default, so that path is exercised too).
    may_find_broken: bool = False
    done: bool = False
    # Whether the pool took it (a broken pool refuses new tasks at once).
    submitted: bool = False
    outcome: str = ""  # "result", "cancelled" or the error type name

    def check(self, result: Any, error: BaseException | None) -> str | None:
        """Record the ending; return what is wrong with it, if anything."""
        self.done = True
        where = f"{self.kind} task {self.nonce}"
        if error is None and result is None:
            self.outcome = "cancelled"
            if not self.cancel_requested:
                return f"{where} was cancelled, but nobody cancelled it"
            return None
        if error is None:
            self.outcome = "result"
            if self.kind not in ECHOING_KINDS:
                return f"{where} returned {result!r}"
            if result[0] != self.nonce:
                return f"cross-talk: {where} got the result of {result[0]}"
            return None
        self.outcome = type(error).__name__
        if isinstance(error, triopool.BrokenPoolError):
            if not self.may_find_broken:
                return f"{where}: {error!r} though no worker was killed"
            return None
        if isinstance(error, triopool.BrokenWorkerError):
            allowed = {-signal.SIGKILL} if self.may_break else set()
            if self.kind == "exit":
                allowed.add(EXIT_CODE)
            if self.kind == "grandchild-exit":
                allowed.add(hf.GRANDCHILD_EXIT)
            if self.kind == "dup2":
                # The pool kills a worker that broke its result pipe; it
                # exits by itself with BROKE_PIPE_EXIT only if left alone.
                allowed.add(-signal.SIGKILL)
            if error.exitcode not in allowed:
                return f"{where}: {error!r} (exitcode {error.exitcode})"
            return None
        return f"{where}: unexpected {error!r}"


SETTINGS = settings(
    max_examples=10,
    stateful_step_count=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class PoolModel(RuleBasedStateMachine):
    start_method: ClassVar[StartMethod] = "spawn"
    # Over all examples of a run: the test checks that every kind ran.
    kinds_submitted: ClassVar[Counter[str]] = Counter()

    def __init__(self) -> None:
        super().__init__()
        # Before the baselines: its leader and our pipe to it stay until the
        # end of the example.
        self.grandchildren = Grandchildren()
        self.fds_before = open_fds()
        self.processes_before = descendants()
        self.tasks: list[ModelTask] = []
        self.violations: list[str] = []
        self.killed = False
        self.failure: BaseException | None = None
        # Kills of starting workers are start failures, and enough of them
        # break the pool, which logs an ERROR: expected only after kills.
        self.log = LogWatch(
            self.start_method,
            allow=lambda record: (
                (self.killed and getattr(record, "event", None) == "broken")
                or self.grandchildren.broke_pipe(record)
            ),
        )
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._thread_main, daemon=True)
        self.log_watch = watch_log(self.log)
        self.log_watch.__enter__()
        self.thread.start()
        assert self.ready.wait(TIMEOUT), "the pool did not open"
        if self.failure is not None:
            raise self.failure

    # The Trio side.

    def _thread_main(self) -> None:
        try:
            trio.run(self._trio_main)
        except BaseException as exc:
            self.failure = exc
            self.ready.set()

    async def _trio_main(self) -> None:
        # The Trio run's own fds are part of the baseline for the bound.
        self.trio_fds = len(open_fds())
        self.stop = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        async with (
            triopool.open_pool(
                WORKERS,
                start_method=self.start_method,
                max_tasks_per_child=3,
                start_timeout=30,
            ) as pool,
            trio.open_nursery() as nursery,
        ):
            self.pool = pool
            self.nursery = nursery
            self.ready.set()
            await self.stop.wait()

    async def _run_task(self, task: ModelTask) -> None:
        fn: Callable[..., object]
        args: tuple[object, ...]
        if task.kind == "fork":
            # What the forked copy does, by the task's number.
            child_does = ("return", "raise", "exit")[len(self.tasks) % 3]
            fn, args = hf.fork_and_return, (task.nonce, child_does)
        elif task.kind.startswith("grandchild-"):
            then = task.kind.removeprefix("grandchild-")
            group, pid_dir = self.grandchildren.group, self.grandchildren.pid_dir
            fn, args = hf.leave_grandchild, (task.nonce, then, group, pid_dir)
        elif task.kind == "dup2":
            fn, args = hf.break_result_pipe, (task.nonce, self.grandchildren.pid_dir)
        else:
            action = "exit" if task.kind == "exit" else "echo"
            argument = {"exit": float(EXIT_CODE), "slow": 0.2}.get(task.kind, 0.0)
            fn, args = wf.storm_task, (task.nonce, action, argument)
        result: Any = None
        error: BaseException | None = None
        with task.scope:
            try:
                result = await self.pool.run_sync(
                    fn, *args, kill_on_cancel=task.kill_on_cancel
                )
            except Exception as exc:
                error = exc
        problem = task.check(result, error)
        if problem is not None:
            self.violations.append(problem)
        if (
            task.kind == "grandchild-exit"
            and isinstance(error, triopool.BrokenWorkerError)
            and error.exitcode == hf.GRANDCHILD_EXIT
            and not self.grandchildren.running(task.nonce)
        ):
            self.violations.append(
                f"{task.kind} task {task.nonce}: the caller heard of its worker's "
                "exit only once the grandchild holding the worker's pipes had "
                f"ended ({error!r})"
            )
        task.finished.set()

    async def _submit(self, task: ModelTask) -> None:
        before = self.pool.statistics().tasks_submitted
        self.nursery.start_soon(self._run_task, task)
        # Until the new task waits in run_sync, so the counters include it.
        await trio.testing.wait_all_tasks_blocked()
        task.submitted = self.pool.statistics().tasks_submitted == before + 1
        if not task.submitted and task.outcome != "BrokenPoolError":
            self.violations.append(f"task {task.nonce} was not submitted")

    async def _settle(self) -> None:
        with trio.fail_after(TIMEOUT):
            for task in self.tasks:
                await task.finished.wait()

    def _call(self, fn: Any, *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def _call_sync(self, fn: Any, *args: Any) -> Any:
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    # Rules.

    @rule(
        kind=st.sampled_from(["echo", "echo", "slow", "exit", *HOSTILE_KINDS]),
        kill_on_cancel=st.booleans(),
    )
    def submit(self, kind: str, kill_on_cancel: bool) -> None:
        self.kinds_submitted[kind] += 1
        task = ModelTask(f"m{len(self.tasks)}", kind, kill_on_cancel)
        task.may_find_broken = self.killed
        self.tasks.append(task)
        self._call(self._submit, task)

    # Choices among tasks or workers are plain integers taken modulo what
    # exists at that moment, so that what hypothesis draws never depends on
    # timing (it replays examples to shrink them).

    @rule(which=st.integers(min_value=0, max_value=63))
    def cancel(self, which: int) -> None:
        pending = [task for task in self.tasks if not task.done]
        if not pending:
            return
        task = pending[which % len(pending)]
        task.cancel_requested = True
        self._call_sync(task.scope.cancel)

    @rule(which=st.integers(min_value=0, max_value=63))
    def kill_worker(self, which: int) -> None:
        # A worker, or with forkserver possibly the server (and so its
        # workers); not a process a task started.
        pids = sorted(pool_processes(self.start_method) - self.processes_before)
        if not pids:
            return
        self.killed = True
        for task in self.tasks:
            if not task.done:
                task.may_break = task.may_find_broken = True
        pid = pids[which % len(pids)]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # Until the pool has reaped it, a task submitted now may still be
        # written to it, and a dying process can still read it from the pipe
        # (then the task fails like any task its worker died running). Wait,
        # so that only tasks in flight at the kill may break.
        self._call(self._reaped, pid)

    async def _reaped(self, pid: int) -> None:
        with trio.fail_after(TIMEOUT):
            while pid in descendants():  # noqa: ASYNC110 - nothing to wait on
                await trio.sleep(0.005)
            # A forked worker is reaped by the fork server, which then tells
            # the pool: let the pool take in its EOF and that report.
            await trio.testing.wait_all_tasks_blocked()

    @rule(seconds=st.sampled_from([0.0, 0.05, 0.3]))
    def wait(self, seconds: float) -> None:
        self._call(trio.sleep, seconds)

    @rule()
    def settle(self) -> None:
        self._call(self._settle)
        stats = self._call_sync(self.pool.statistics)
        assert not self._counter_problems(stats, settled=False)
        assert stats.tasks_waiting == stats.tasks_running == 0

    def _counter_problems(
        self, stats: triopool.PoolStatistics, *, settled: bool
    ) -> list[str]:
        return check_counters(stats, settled=settled)

    # Invariants, after every step.

    def _snapshot(self) -> tuple[triopool.PoolStatistics, int, int, int]:
        # Taken in the Trio thread, so that the pool's counters and the
        # model's tally describe the same moment.
        done = sum(task.done and task.submitted for task in self.tasks)
        results = sum(task.outcome == "result" for task in self.tasks)
        return self.pool.statistics(), done, results, len(open_fds())

    @invariant()
    def model_holds(self) -> None:
        assert not self.violations, self.violations
        assert not self.log.violations, self.log.violations
        stats, done, results, fds = self._call_sync(self._snapshot)
        problems = self._counter_problems(stats, settled=False)
        assert not problems, problems
        assert stats.tasks_submitted == sum(task.submitted for task in self.tasks)
        ended = stats.tasks_completed + stats.tasks_failed + stats.tasks_cancelled
        assert done <= ended, stats
        assert results <= stats.tasks_completed, stats
        # The storm's bound (see tests.storm.fd_bound): a slot holds its
        # worker's pipes and, while a worker retires (max_tasks_per_child
        # here too), the leaving worker's pipe and pidfd besides.
        bound = fd_bound(self.trio_fds, WORKERS, self.start_method)
        assert fds <= bound, (fds, bound)

    def teardown(self) -> None:
        try:
            self._teardown()
        finally:
            # Whatever failed: nothing a task started outlives the example.
            problems = self.grandchildren.close()
        assert not problems, problems

    def _teardown(self) -> None:
        try:
            if self.failure is None and self.thread.is_alive():
                self._call(self._settle)
                self._call_sync(self.stop.set)
        finally:
            self.thread.join(TIMEOUT)
            self.log_watch.__exit__(None, None, None)
        if self.thread.is_alive():
            import sys
            import traceback

            stack = sys._current_frames().get(self.thread.ident or 0)
            where = "".join(traceback.format_stack(stack)) if stack else "?"
            raise AssertionError(f"the pool did not close; its thread is at:\n{where}")
        if self.failure is not None:
            raise self.failure
        assert not self.violations, self.violations
        assert not self.log.violations, self.log.violations
        stats = self.pool.statistics()
        problems = self._counter_problems(stats, settled=True)
        assert not problems, problems
        assert stats.tasks_submitted == sum(task.submitted for task in self.tasks)
        assert open_fds() == self.fds_before
        assert descendants() == self.processes_before


def test_pool_model(start_method: StartMethod) -> None:
    kinds: Counter[str] = Counter()
    model = type(
        f"PoolModel_{start_method}",
        (PoolModel,),
        {"start_method": start_method, "kinds_submitted": kinds},
    )
    run_state_machine_as_test(model, settings=SETTINGS)
    # The examples are derandomized: every kind of task is among them.
    assert set(kinds) == set(KINDS), kinds


def test_model_fails_on_an_error_the_pool_only_logs() -> None:
    # The model's log watch is live: an ERROR record during an example (here
    # logged by the pool's own logger, as the pool would) fails it.
    class LoggingModel(PoolModel):
        @rule()
        def log_an_error(self) -> None:
            logging.getLogger("triopool").error("something went wrong")

    with pytest.raises(AssertionError, match="something went wrong"):
        run_state_machine_as_test(
            LoggingModel,
            settings=settings(SETTINGS, max_examples=3, stateful_step_count=5),
        )

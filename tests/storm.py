"""The recycling storm: a pool whose workers are replaced as fast as possible
while tasks are cancelled and workers killed, with every invariant of the fd
guarantee checked as it runs.

Used small by ``tests/test_storm.py`` and large by ``nox -s stress``
(``python -m tests.storm --minutes N``).

Every task carries a nonce; the worker echoes it with its pid. The pool's
trace hook (``triopool._hooks``) records which worker each task was written
to, tasks written ahead included. A result that carries another task's nonce, or the
pid of a worker the task was not sent to, is cross-talk: what a mixed-up fd
would produce.

The pool absorbs some symptoms of a mix-up without any caller seeing them: a
frame on an idle worker's pipe costs only that worker, a bad handshake frame
is one more start failure. It logs them, so the storm watches the
``"triopool"`` logger too (:class:`LogWatch`): an ERROR record, a record that
reports a protocol violation, or a start failure the storm did not cause is a
violation like any other.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import trio

import triopool
from tests import workerfuncs as wf
from tests.conftest import is_running, open_fds
from triopool import _hooks, _messages, _protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.conftest import StartMethod

START_METHODS = ("spawn", "forkserver")


def descendants() -> set[int]:
    """Pids of this process's descendants, running or zombie.

    With ``start_method="forkserver"`` the workers are the fork server's
    children, not ours: only the whole tree shows them.
    """
    found: set[int] = set()
    parents = [os.getpid()]
    while parents:
        parent = parents.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue  # reaped meanwhile
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    children = [int(pid) for pid in f.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            for child in children:
                if child not in found:
                    found.add(child)
                    parents.append(child)
    return found


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None once reaped; with
    the pid it names one process, whatever process reuses the number later."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rpartition(")")[2].split()[19])
    except (FileNotFoundError, ProcessLookupError):
        return None


def fd_bound(baseline: int, workers: int, start_method: str) -> int:
    """The most fds the pool's process may hold with ``workers`` slots.

    Per slot: the serving (or starting) worker's two pipe ends and, while it
    waits for an exit, a pidfd; a retiring worker's result pipe and pidfd
    while it exits (a slot starts the replacement meanwhile); plus one spare.
    A forked worker has no pidfd here (the server reaps it), so the same six
    cover it. The fork server adds its socket and, while the pool waits for
    it to exit, its pidfd. Anything above means fds are piling up somewhere.
    The storm and the model check the same bound.
    """
    server = 2 if start_method == "forkserver" else 0
    return baseline + 6 * workers + server


def process_bound(workers: int, start_method: str) -> int:
    """The most processes (zombies included) the pool may have at once.

    A slot has at most its serving worker and one retiring worker being
    reaped; a fork server that died is reaped while its replacement starts.
    """
    servers = 2 if start_method == "forkserver" else 0
    return 2 * workers + servers


# A start failure the storm causes: a start timeout or a SIGKILL. With a fork
# server, killing it takes its workers along, and a fork request may meet the
# dying server (EPIPE on its socket).
_EXPECTED_START_FAILURES = {
    "spawn": ("did not report up within", "SIGKILL"),
    "forkserver": ("did not report up within", "SIGKILL", "fork server", "Broken pipe"),
}


class LogWatch(logging.Handler):
    """Turn what the pool logs about itself into violations.

    The pool only logs some failures that no caller sees (see the module
    docstring). A record is a violation if it is an ERROR (or worse), if it
    reports a protocol violation (a frame the pool did not expect, bytes that
    are not frames), or if it is a start failure with a cause the test did
    not inject. ``allow(record)`` may excuse a record the test expects (the
    model's broken pool after kills of starting workers); the storm's own
    faults only produce WARNING records of expected causes (the storm's
    self-tests check both ways).
    """

    def __init__(
        self,
        start_method: StartMethod = "spawn",
        allow: Callable[[logging.LogRecord], bool] | None = None,
    ) -> None:
        super().__init__(logging.DEBUG)
        self.expected_start_failures = _EXPECTED_START_FAILURES[start_method]
        self.allow = allow
        self.violations: list[str] = []
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        problem = self.problem(record)
        if problem is not None and not (self.allow and self.allow(record)):
            self.violations.append(problem)

    def problem(self, record: logging.LogRecord) -> str | None:
        """What is wrong with a ``"triopool"`` log record, if anything."""
        message = record.getMessage()
        where = f"logged {record.levelname}: {message}"
        if record.levelno >= logging.ERROR:
            return where
        if "protocol" in message or "instead of reporting up" in message:
            return f"protocol violation {where}"
        if message.startswith("worker failed to start") and not any(
            cause in message for cause in self.expected_start_failures
        ):
            return f"unexpected start failure {where}"
        return None


@contextlib.contextmanager
def watch_log(watch: LogWatch) -> Iterator[LogWatch]:
    """Attach ``watch`` to the ``"triopool"`` logger for the block.

    The logger passes WARNING records at least meanwhile (the soak quiets it
    otherwise), so start failures reach the watch.
    """
    logger = logging.getLogger("triopool")
    level = logger.level
    if level == logging.NOTSET or level > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(level)


@contextlib.contextmanager
def record_sends(
    sent: dict[str, list[int]],
    pid_of: Callable[[int], int] = lambda pid: pid,
) -> Iterator[None]:
    """Record, per task nonce, the pids of the workers the task was written to.

    Through the pool's trace hook (``triopool._hooks``), which sees every task
    frame written, ahead ones included, for the pools opened in the block.
    ``pid_of`` lets the storm's self-test record a wrong pid, to show that
    the pid checks can fail.
    """

    def trace(event: _hooks.Trace) -> None:
        if event.kind not in ("written", "written ahead"):
            return
        decoder = _protocol.Decoder()
        decoder.receive_data(b"".join(bytes(piece) for piece in event.pieces))
        frame = decoder.next_frame()
        assert isinstance(frame, _protocol.Frame)
        _fn, args, _soft = _messages.decode_task(frame, None)
        sent.setdefault(args[0], []).append(pid_of(event.worker_pid))

    with _hooks.installed(trace=trace):
        yield


@dataclass
class StormConfig:
    """What the storm does; defaults are the small, default-suite storm."""

    workers: int = 8
    tasks: int = 200  # total tasks (ignored if duration is set)
    duration: float | None = None  # seconds of submitting, instead of a count
    in_flight: int = 200  # tasks waiting or running at once, at most
    start_method: StartMethod = "spawn"
    start_timeout: float = 1.0
    quick_start: float = 0.9  # share of workers that report up at once
    kill_interval: float = 1.0  # mean seconds between external SIGKILLs
    seed: int | None = None
    task_timeout: float = 120.0  # a task taking longer than this "hangs"


@dataclass
class StormReport:
    """What happened, and every invariant that did not hold."""

    seed: int
    start_method: StartMethod = "spawn"
    violations: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    peak_fds: int = 0
    peak_children: int = 0
    fd_bound: int = 0
    baseline_fds: int = 0
    samples: int = 0
    elapsed: float = 0.0
    stats: triopool.PoolStatistics | None = None
    log_counts: Counter[str] = field(default_factory=Counter)

    @property
    def tasks_done(self) -> int:
        return sum(self.outcomes.values())

    def summary(self) -> str:
        stats = self.stats
        lines = [
            f"seed {self.seed}, {self.start_method}, {self.elapsed:.1f} s",
            f"tasks done: {self.tasks_done} ({dict(sorted(self.outcomes.items()))})",
        ]
        if stats is not None:
            lines += [
                f"workers cycled: {stats.workers_started} started, "
                f"{stats.workers_recycled} recycled, {stats.workers_lost} lost, "
                f"{stats.workers_stopped} stopped",
                f"start failures: {stats.start_failures}",
            ]
        lines += [
            f"external SIGKILLs: {self.kills}",
            f"peak fds: {self.peak_fds} (baseline {self.baseline_fds}, "
            f"bound {self.fd_bound}, {self.samples} samples)",
            f"peak pool processes: {self.peak_children}",
            f"log records: {dict(sorted(self.log_counts.items()))}",
            f"violations: {len(self.violations)}",
            *(f"  {v}" for v in self.violations[:20]),
        ]
        return "\n".join(lines)


def check_counters(stats: triopool.PoolStatistics, *, settled: bool) -> list[str]:
    """The identities PoolStatistics documents; ``settled``: nothing in flight."""
    problems = []
    workers = (
        stats.workers_alive
        + stats.workers_recycled
        + stats.workers_lost
        + stats.start_failures
        + stats.workers_stopped
    )
    if stats.workers_started != workers:
        problems.append(f"worker counters do not add up: {stats}")
    in_flight = stats.tasks_waiting + stats.tasks_running
    ended = stats.tasks_completed + stats.tasks_failed + stats.tasks_cancelled
    if stats.tasks_submitted != ended + in_flight:
        problems.append(f"task counters do not add up: {stats}")
    if min(stats.tasks_waiting, stats.tasks_running, stats.workers_alive) < 0:
        problems.append(f"negative counter: {stats}")
    # A slot starts a retiring worker's replacement while the old process
    # exits: at most two processes per slot, the one serving and one leaving.
    if stats.workers_alive > 2 * stats.workers:
        problems.append(f"more than two workers alive per slot: {stats}")
    if settled and (in_flight or stats.workers_alive):
        problems.append(f"something still in flight after the block: {stats}")
    return problems


async def run_storm(config: StormConfig) -> StormReport:
    """Run one storm and report; never raises for a violated invariant."""
    seed = config.seed if config.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    report = StormReport(seed=seed, start_method=config.start_method)
    violations = report.violations
    sent: dict[str, list[int]] = {}
    fds_before = open_fds()
    processes_before = descendants()
    # Every pool process seen, with its start time: none may run after the
    # block, even one the fork server's death left to init.
    seen: dict[int, int | None] = {}
    report.baseline_fds = len(fds_before)
    report.fd_bound = fd_bound(len(fds_before), config.workers, config.start_method)
    processes_allowed = process_bound(config.workers, config.start_method)
    start = time.monotonic()
    timeout = config.start_timeout
    log = LogWatch(config.start_method)

    def counter_problems(stats: triopool.PoolStatistics, *, settled: bool) -> list[str]:
        return check_counters(stats, settled=settled)

    def pool_processes() -> list[int]:
        pids = sorted(descendants() - processes_before)
        for pid in pids:
            if pid not in seen:
                seen[pid] = start_time(pid)
        return pids

    def sample(pool: triopool.Pool) -> None:
        count = len(open_fds())
        report.samples += 1
        report.peak_fds = max(report.peak_fds, count)
        if count > report.fd_bound:
            violations.append(f"{count} fds open, above the bound {report.fd_bound}")
        processes = len(pool_processes())
        report.peak_children = max(report.peak_children, processes)
        if processes > processes_allowed:
            violations.append(
                f"{processes} pool processes for {config.workers} slots "
                f"(at most {processes_allowed})"
            )
        violations.extend(counter_problems(pool.statistics(), settled=False))

    async def monitor(pool: triopool.Pool) -> None:
        while True:
            sample(pool)
            await trio.sleep(0.01)

    async def killer() -> None:
        # The first kill comes early, so that every storm has one (a small
        # storm lasts a few seconds: at random intervals alone, about one in
        # thirty had none); then at random intervals.
        delay = rng.uniform(0.1, 0.5)
        while True:
            await trio.sleep(delay)
            # Our descendants are the pool's processes only (with forkserver,
            # the server is among them: killing it takes its workers along).
            # A listed pid is not reaped yet, so it cannot belong to anyone
            # else.
            pids = pool_processes()
            delay = 0.05  # try again soon if nothing was killed
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    report.kills += 1
                    delay = rng.expovariate(1 / config.kill_interval)

    async def one_task(pool: triopool.Pool, number: int, done: trio.Semaphore) -> None:
        nonce = f"t{number}-{rng.randrange(10**9)}"
        roll = rng.random()
        options: dict[str, Any] = {"kill_on_cancel": rng.random() < 0.8}
        if roll < 0.70:
            action, argument = "echo", rng.choice((0.0, 0.0, 0.005, 0.05))
        elif roll < 0.82:
            action, argument = "exit", float(rng.randrange(1, 100))
        elif roll < 0.90:
            action, argument = "kill", 0.0
        else:
            action, argument = "hang", 60.0
            options["time_limit"] = 0.3
        cancel_after = rng.uniform(0, 0.5) if rng.random() < 0.15 else None
        outcome: object = None
        error: BaseException | None = None
        with trio.move_on_after(config.task_timeout) as hang_scope:
            with trio.CancelScope() as cancel_scope:
                if cancel_after is not None:
                    cancel_scope.deadline = trio.current_time() + cancel_after
                try:
                    outcome = await pool.run_sync(
                        wf.storm_task,
                        nonce,
                        "echo" if action == "hang" else action,
                        argument,
                        **options,
                    )
                except triopool.TriopoolError as exc:
                    error = exc
                except Exception as exc:
                    error = exc
        done.release()
        where = f"task {nonce} ({action})"
        if hang_scope.cancelled_caught:
            violations.append(f"{where} hung for {config.task_timeout} s")
            return
        if outcome is None and error is None:
            if cancel_scope.cancelled_caught:
                report.outcomes["cancelled"] += 1
            else:
                violations.append(f"{where} ended with neither result nor error")
            return
        if error is None:
            report.outcomes["result"] += 1
            if action != "echo":
                violations.append(f"{where} returned {outcome!r}")
                return
            got_nonce, got_pid = cast("tuple[str, int]", outcome)
            if got_nonce != nonce:
                violations.append(f"cross-talk: {where} got the result of {got_nonce}")
            elif not sent.get(nonce) or got_pid != sent[nonce][-1]:
                violations.append(
                    f"cross-talk: {where} answered by {got_pid}, sent to "
                    f"{sent.get(nonce)}"
                )
            return
        name = type(error).__name__
        report.outcomes[name] += 1
        pids = sent.get(nonce, [])
        if isinstance(error, triopool.BrokenWorkerError):
            allowed = {-signal.SIGKILL}
            if action == "exit":
                allowed.add(int(argument))
            if error.exitcode not in allowed:
                violations.append(f"{where}: {error!r} with exitcode {error.exitcode}")
            if not pids or error.pid != pids[-1]:
                violations.append(
                    f"cross-talk: {where} failed in worker {error.pid}, sent to {pids}"
                )
        elif isinstance(error, triopool.TimeLimitExceeded):
            if action != "hang":
                violations.append(f"{where}: unexpected {error!r}")
        else:
            violations.append(f"{where}: unexpected {error!r}")

    async def submit_all(pool: triopool.Pool) -> None:
        done = trio.Semaphore(config.in_flight)
        deadline = None if config.duration is None else start + config.duration
        async with trio.open_nursery() as tasks:
            number = 0
            while (
                time.monotonic() < deadline
                if deadline is not None
                else number < config.tasks
            ):
                await done.acquire()
                tasks.start_soon(one_task, pool, number, done)
                number += 1
                if rng.random() < 0.3:
                    await trio.sleep(rng.uniform(0, 0.01))

    pool: triopool.Pool | None = None
    with record_sends(sent), watch_log(log):
        async with triopool.open_pool(
            config.workers,
            start_method=config.start_method,
            max_tasks_per_child=1,
            initializer=wf.initializer_random_delay,
            initargs=(config.quick_start, 0.5 * timeout, 1.5 * timeout),
            start_timeout=timeout,
            # Starts time out on purpose here; the pool must not give up.
            max_start_failures=10**9,
            shutdown_timeout=5.0,
        ) as pool:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(monitor, pool)
                nursery.start_soon(killer)
                await submit_all(pool)
                nursery.cancel_scope.cancel()
            sample(pool)
    report.elapsed = time.monotonic() - start
    report.log_counts = log.counts
    violations.extend(log.violations)
    stats = report.stats = pool.statistics()
    violations.extend(counter_problems(stats, settled=True))
    if report.tasks_done != stats.tasks_submitted:
        violations.append(
            f"{report.tasks_done} tasks ended, {stats.tasks_submitted} submitted"
        )
    if report.outcomes["result"] > stats.tasks_completed:
        violations.append(f"more results than completed tasks: {stats}")
    fds_after = open_fds()
    if fds_after != fds_before:
        violations.append(
            f"fd set changed: +{sorted(fds_after - fds_before)} "
            f"-{sorted(fds_before - fds_after)}"
        )
    left = descendants() - processes_before
    if left:
        violations.append(f"processes left: {sorted(left)}")
    outlived = sorted(
        pid
        for pid, started in seen.items()
        if started is not None and start_time(pid) == started and is_running(pid)
    )
    if outlived:
        violations.append(f"pool processes still running after the block: {outlived}")
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.storm --minutes N``: the long storm, with its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=8)
    # Hundreds of tasks waiting or running at once, as in the small storm.
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--start-method", choices=START_METHODS, default="spawn")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    # Nothing is printed as it happens: the storm's LogWatch takes the pool's
    # records (start failures and deaths are the point here) and reports the
    # ones that are violations with the rest.
    config = StormConfig(
        workers=args.workers,
        duration=args.minutes * 60,
        in_flight=args.in_flight,
        start_method=args.start_method,
        seed=args.seed,
    )
    report = trio.run(run_storm, config)
    print(report.summary())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())

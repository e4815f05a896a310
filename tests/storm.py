"""The recycling storm: a pool whose workers are replaced as fast as possible
while tasks are cancelled and workers killed, with every invariant of the fd
guarantee checked as it runs.

Used small by ``tests/test_storm.py`` and large by ``nox -s stress``
(``python -m tests.storm --minutes N``).

Every task carries a nonce; the worker echoes it with its pid. A test hook
(a wrapper around ``Worker.send``, installed only here) records which worker
each task was written to. A result that carries another task's nonce, or the
pid of a worker the task was not sent to, is cross-talk: what a mixed-up fd
would produce.
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
from typing import TYPE_CHECKING, cast

import trio

import triopool
from tests import workerfuncs as wf
from tests.conftest import child_processes, open_fds
from triopool import _protocol, _worker

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def record_sends(sent: dict[str, list[int]]) -> Iterator[None]:
    """Record, per task nonce, the pids of the workers the task was written to.

    A test hook: it wraps ``Worker.send`` for the duration of the block, so
    the pool itself carries no tracing code.
    """
    original = _worker.Worker.send

    async def send(self: _worker.Worker, pieces: list[bytes | memoryview]) -> None:
        if pieces and bytes(pieces[0][:1]) == bytes([_protocol.TASK]):
            decoder = _protocol.Decoder()
            decoder.receive_data(b"".join(bytes(piece) for piece in pieces))
            frame = decoder.next_frame()
            assert isinstance(frame, _protocol.Frame)
            _fn, args, _soft = _protocol.loads(frame.payload, frame.buffers)
            sent.setdefault(args[0], []).append(self.pid)
        await original(self, pieces)

    _worker.Worker.send = send  # type: ignore[method-assign]
    try:
        yield
    finally:
        _worker.Worker.send = original  # type: ignore[method-assign]


@dataclass
class StormConfig:
    """What the storm does; defaults are the small, default-suite storm."""

    workers: int = 8
    tasks: int = 200  # total tasks (ignored if duration is set)
    duration: float | None = None  # seconds of submitting, instead of a count
    in_flight: int = 200  # tasks waiting or running at once, at most
    start_timeout: float = 1.0
    quick_start: float = 0.9  # share of workers that report up at once
    kill_interval: float = 1.0  # mean seconds between external SIGKILLs
    seed: int | None = None
    task_timeout: float = 120.0  # a task taking longer than this "hangs"


@dataclass
class StormReport:
    """What happened, and every invariant that did not hold."""

    seed: int
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

    @property
    def tasks_done(self) -> int:
        return sum(self.outcomes.values())

    def summary(self) -> str:
        stats = self.stats
        lines = [
            f"seed {self.seed}, {self.elapsed:.1f} s",
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
            f"peak worker processes: {self.peak_children}",
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
    report = StormReport(seed=seed)
    violations = report.violations
    sent: dict[str, list[int]] = {}
    fds_before = open_fds()
    children_before = child_processes()
    report.baseline_fds = len(fds_before)
    # Per slot: the serving worker's two pipe ends and, while it waits for an
    # exit, a pidfd; a retiring worker's result pipe and pidfd while it exits;
    # plus one spare. Anything above means fds are piling up somewhere.
    report.fd_bound = len(fds_before) + 6 * config.workers
    start = time.monotonic()
    timeout = config.start_timeout

    def sample(pool: triopool.Pool) -> None:
        count = len(open_fds())
        report.samples += 1
        report.peak_fds = max(report.peak_fds, count)
        if count > report.fd_bound:
            violations.append(f"{count} fds open, above the bound {report.fd_bound}")
        # A slot has at most its serving worker and one retiring worker that
        # is being reaped, so never more than two processes (zombies
        # included) per slot.
        children = len(child_processes() - children_before)
        report.peak_children = max(report.peak_children, children)
        if children > 2 * config.workers:
            violations.append(f"{children} worker processes for {config.workers} slots")
        violations.extend(check_counters(pool.statistics(), settled=False))

    async def monitor(pool: triopool.Pool) -> None:
        while True:
            sample(pool)
            await trio.sleep(0.01)

    async def killer() -> None:
        while True:
            await trio.sleep(rng.expovariate(1 / config.kill_interval))
            # Our children are the pool's workers only; a listed pid is not
            # reaped yet, so it cannot belong to anyone else.
            pids = sorted(child_processes() - children_before)
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    report.kills += 1

    async def one_task(pool: triopool.Pool, number: int, done: trio.Semaphore) -> None:
        nonce = f"t{number}-{rng.randrange(10**9)}"
        roll = rng.random()
        options: dict[str, object] = {"kill_on_cancel": rng.random() < 0.8}
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
                        **options,  # type: ignore[arg-type]
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
    with record_sends(sent):
        async with triopool.open_pool(
            config.workers,
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
    stats = report.stats = pool.statistics()
    violations.extend(check_counters(stats, settled=True))
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
    left = child_processes() - children_before
    if left:
        violations.append(f"processes left: {sorted(left)}")
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.storm --minutes N``: the long storm, with its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    # Start failures and deaths are the point here: log only real trouble.
    logging.getLogger("triopool").setLevel(logging.ERROR)
    # Fewer tasks queued than in the small storm, so that the end of the run
    # is not a long drain of the queue.
    config = StormConfig(
        workers=args.workers,
        duration=args.minutes * 60,
        in_flight=8 * args.workers,
        seed=args.seed,
    )
    report = trio.run(run_storm, config)
    print(report.summary())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())

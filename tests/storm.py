"""The recycling storm: a pool whose workers are replaced as fast as possible
while tasks are cancelled and workers killed, with every invariant of the fd
guarantee checked as it runs.

Used small by ``tests/test_storm.py`` and large by ``nox -s stress``
(``python -m tests.storm --minutes N``).

A fifth of the storm's tasks are hostile (``tests/hostilefuncs.py``): they
fork and let the copy come back into the worker loop (returning a value that
is not the caller's, raising, or calling ``sys.exit``), leave a ``sleep``
grandchild holding the worker's pipes and then exit or return, or ``dup2``
/dev/null over their result pipe. Their callers must get their own echo, or
a ``BrokenWorkerError`` that the pool reported while the grandchild still ran
(not once it let go of the pipes), or that the pool caused by killing the
worker that broke its pipe (not the exit code the worker leaves with by
itself much later). The grandchildren join a process group of the storm's,
killed at the end (:class:`Grandchildren`).

Profiles (``--profile``):

- ``recycle`` (the default): the recycling storm above, for ``--minutes``.
- ``ahead-kills``: the write-ahead storm (:data:`AHEAD_KILLS`), for
  ``--minutes``: workers serve 20 tasks each, so that short tasks are
  written ahead to busy workers, while the storm and some tasks kill
  workers. A task written ahead to a worker that died before starting it
  must run elsewhere and succeed, one whose worker died running it fails
  with a ``BrokenWorkerError`` naming that worker, and no task may start
  twice (each notes where it starts); plus every check of the recycling
  storm. The trace hook counts the task frames written ahead.
- ``elastic``: the same with idle shrink on (``min_workers=1``, a tiny
  ``idle_timeout``) and tasks in bursts with pauses, so that workers exit
  while idle and start again for the next burst (:func:`elastic_storm`).
- ``cancel``: cancellation storms (:func:`run_cancel_storm`), ``burst`` and
  ``mixed`` taking turns, one Trio run each, until ``--minutes`` (or
  ``--rounds``) are up or one fails; ``cancel-burst`` and ``cancel-mixed``
  run one kind; ``cancel-small`` is what the default suite runs (``burst``,
  then ``mixed`` cut to 4,000 callers). Thousands of trivial callers, most
  giving up within a millisecond, against a pool that writes tasks ahead:
  every caller must get its own echo or ``Cancelled``, Trio must not crash
  (``TrioInternalError``), the pool must close within a generous bound, and
  afterwards the statistics identities hold and no fd or process is left.

Every task carries a nonce; the worker echoes it with its pid. The pool's
trace hook (``triopool._hooks``) records which worker each task was written
to, tasks written ahead included. A result that carries another task's
nonce, or the
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
import dataclasses
import errno
import faulthandler
import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import trio

import triopool
from tests import hostilefuncs as hf
from tests import workerfuncs as wf
from tests.conftest import is_running, open_fds
from triopool import _hooks, _messages, _protocol
from triopool._stats import identity_problems

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from tests.conftest import StartMethod

    #: How the storm calls a pool: ``run(pool, fn, *args, **options)``.
    Run = Callable[..., Awaitable[object]]

START_METHODS = ("spawn", "forkserver")


def descendants(depth: int | None = None) -> set[int]:
    """Pids of this process's descendants, running or zombie; only those at
    most ``depth`` generations down, if given.

    With ``start_method="forkserver"`` the workers are the fork server's
    children, not ours: only the tree shows them.
    """
    found: set[int] = set()
    parents = [(os.getpid(), 0)]
    while parents:
        parent, generation = parents.pop()
        if depth is not None and generation >= depth:
            continue
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
                    parents.append((child, generation + 1))
    return found


# How far down the pool's own processes are: a spawned worker is our child; a
# forked worker is the fork server's. Below them are the processes tasks
# start (the hostile tasks' forks and grandchildren), which are not the
# pool's: they are neither counted against its bound nor killed as its.
POOL_DEPTH = {"spawn": 1, "forkserver": 2}


def pool_processes(start_method: str) -> set[int]:
    """Pids of the pool's processes (and any other child we have)."""
    return descendants(POOL_DEPTH[start_method])


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


class Grandchildren:
    """Where hostile tasks put the processes they leave behind
    (:func:`tests.hostilefuncs.leave_grandchild`), so that nothing they start
    outlives the test.

    The grandchildren join a process group of their own, led by a ``cat`` of
    ours that reads a pipe from us (so that it ends with us, whatever
    happens), and each writes its pid and start time to ``pid_dir``, named by
    its task's nonce; so does a worker whose task breaks its result pipe.
    :meth:`close` kills the whole group: orphans that the pool's workers left
    to init included.
    """

    def __init__(self) -> None:
        self.pid_dir = tempfile.mkdtemp(prefix="triopool-storm-")
        self.leader = subprocess.Popen(
            ["cat"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            process_group=0,
        )
        self.group = self.leader.pid

    def _read(self, name: str) -> tuple[int, int] | None:
        try:
            with open(os.path.join(self.pid_dir, name)) as f:
                pid, started = (int(word) for word in f.read().split())
        except FileNotFoundError:
            return None
        return pid, started

    def running(self, nonce: str) -> bool | None:
        """Whether the grandchild of task ``nonce`` still runs; None if the
        task left no pid file (it died before writing it)."""
        found = self._read(f"grandchild-{nonce}")
        if found is None:
            return None
        pid, started = found
        return start_time(pid) == started and is_running(pid)

    def broke_pipe(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is about a worker that broke its own result pipe
        (:func:`tests.hostilefuncs.break_result_pipe`), known by its
        ``record.worker_pid``. Such a worker did break the protocol: a report
        of that (below ERROR) is no mix-up."""
        if record.levelno >= logging.ERROR:
            return False
        pid = getattr(record, "worker_pid", None)
        return pid is not None and any(
            found[0] == pid
            for name in os.listdir(self.pid_dir)
            if name.startswith("worker-") and not name.endswith(".tmp")
            if (found := self._read(name)) is not None
        )

    def members(self) -> list[int]:
        """The processes of the group that still run (zombies that init has
        not reaped yet do not count)."""
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as stat:
                        fields = stat.read().rpartition(")")[2].split()
                except (FileNotFoundError, ProcessLookupError):
                    continue
                if int(fields[2]) == self.group and fields[0] not in ("Z", "X"):
                    found.append(int(name))
        return found

    def close(self, timeout: float = 30.0) -> list[str]:
        """Kill the group, reap our leader, remove the pid files; return the
        problems (a grandchild that would not die)."""
        problems = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.group, signal.SIGKILL)
        assert self.leader.stdin is not None
        self.leader.stdin.close()
        self.leader.wait()
        deadline = time.monotonic() + timeout
        while (left := self.members()) and time.monotonic() < deadline:
            time.sleep(0.01)
        if left:
            problems.append(f"grandchildren still running: {left}")
        shutil.rmtree(self.pid_dir, ignore_errors=True)
        return problems


def expected_start_failure(
    record: logging.LogRecord, start_method: StartMethod
) -> bool:
    """Whether a start-failure record (``record.reason``) has a cause the
    storm injects: a start timeout or a SIGKILL. With a fork server, killing
    it takes its workers along, and a fork request may meet the dying server
    (EPIPE on its socket)."""
    reason = getattr(record, "reason", None)
    if reason == "timeout":
        return True
    if reason == "exited":
        return getattr(record, "exitcode", None) == -signal.SIGKILL and not getattr(
            record, "broke_protocol", True
        )
    if start_method == "forkserver":
        if reason == "forkserver":
            return True
        if reason == "no_process":
            return getattr(record, "errno", None) == errno.EPIPE
    return False


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
        self.start_method = start_method
        self.allow = allow
        self.violations: list[str] = []
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        problem = self.problem(record)
        if problem is not None and not (self.allow and self.allow(record)):
            self.violations.append(problem)

    def problem(self, record: logging.LogRecord) -> str | None:
        """What is wrong with a ``"triopool"`` log record, if anything: judged
        by its structured fields (``record.event`` and the like), never its
        text, which is only quoted."""
        event = getattr(record, "event", None)
        where = (
            f"{event} (worker {getattr(record, 'worker_pid', None)}) logged "
            f"{record.levelname}: {record.getMessage()}"
        )
        if record.levelno >= logging.ERROR:
            return where
        if event == "protocol_error" or getattr(record, "broke_protocol", False):
            return f"protocol violation: {where}"
        if event == "start_failed" and not expected_start_failure(
            record, self.start_method
        ):
            return (
                f"unexpected start failure ({getattr(record, 'reason', None)}): {where}"
            )
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
    ahead: list[str] | None = None,
) -> Iterator[None]:
    """Record, per task nonce, the pids of the workers the task was written to.

    Through the pool's trace hook (``triopool._hooks``), which sees every task
    frame written, ahead ones included, for the pools opened in the block.
    ``pid_of`` lets the storm's self-test record a wrong pid, to show that
    the pid checks can fail. ``ahead`` gets the nonce of each task frame
    written ahead (to a busy worker), once per such write.
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
        if ahead is not None and event.kind == "written ahead":
            ahead.append(args[0])

    with _hooks.installed(trace=trace):
        yield


# What the hostile tasks do to their own worker (tests/hostilefuncs.py): fork,
# and let the copy come back into the worker loop; leave a grandchild holding
# the worker's pipes, then exit or return; dup2 /dev/null over the result pipe.
HOSTILE_ACTIONS = ("fork", "grandchild-exit", "grandchild-return", "dup2")
# The actions whose task echoes its nonce when it returns (a fork's action
# names what its child does: fork-return, fork-raise, fork-exit).
ECHOING_ACTIONS = (
    "echo",
    "fork-return",
    "fork-raise",
    "fork-exit",
    "grandchild-return",
)


@dataclass
class StormConfig:
    """What the storm does; defaults are the small, default-suite storm.

    ``mix="ahead-kills"`` makes it the write-ahead storm (see
    :data:`AHEAD_KILLS`): short tasks that note where they start, some
    killing their worker, no hostile ones, no time limits.
    """

    mix: Literal["recycle", "ahead-kills"] = "recycle"
    max_tasks_per_child: int = 1
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
    hostile: float = 0.2  # share of tasks of the HOSTILE_ACTIONS, evenly
    # More open_pool options (the ``elastic`` profile's idle shrink, say);
    # a profile that adds one, e.g. ``retries=1``, adds it here.
    pool_options: dict[str, Any] = field(default_factory=dict)
    # Submit in bursts of this many tasks; once a burst's tasks have ended,
    # pause this many seconds (random, up to twice as long): long enough for
    # idle workers to exit, so that they start again for the next burst.
    burst: int | None = None
    pause: float = 0.0


# The write-ahead storm ("ahead-kills"): workers serve 20 tasks each, so that
# tasks are written ahead (at most 8 behind the one running, and none past
# a worker's 20th) to busy workers while callers queue up; 100 callers at a time
# against 4 workers keep the queue long. Most tasks echo at once (a task
# goes ahead only behind a short one); every 25th kills its own worker, 3 %
# exit, a few take 20 ms; 5 % are cancelled at a random moment; and the
# killer sends SIGKILL to a pool process every 0.3 s on average. A task
# written ahead to a worker that dies before starting it must run elsewhere
# and succeed; one whose worker died running it fails with that worker's
# BrokenWorkerError; none may run twice (each notes where it starts, in
# the worker: see ``storm_task_noting_start``).
AHEAD_KILLS = StormConfig(
    mix="ahead-kills",
    max_tasks_per_child=20,
    workers=4,
    in_flight=100,
    start_timeout=5.0,
    quick_start=1.0,
    kill_interval=0.3,
    hostile=0.0,
)


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
    actions: Counter[str] = field(default_factory=Counter)  # tasks tried, by kind
    endings: Counter[str] = field(default_factory=Counter)  # by kind and outcome
    mix: str = "recycle"
    # Task frames written ahead to a busy worker (trace hook).
    written_ahead: int = 0
    # Tasks written ahead to a worker, then written to another, that ended
    # with their result: the write-ahead that a death undid.
    rerun_after_ahead: int = 0

    @property
    def tasks_done(self) -> int:
        return sum(self.outcomes.values())

    def summary(self) -> str:
        stats = self.stats
        lines = [
            f"{self.mix} storm, seed {self.seed}, {self.start_method}, "
            f"{self.elapsed:.1f} s",
            f"tasks done: {self.tasks_done} ({dict(sorted(self.outcomes.items()))})",
            f"tasks by kind: {dict(sorted(self.actions.items()))}",
            f"endings by kind: {dict(sorted(self.endings.items()))}",
        ]
        if stats is not None:
            lines += [
                f"workers cycled: {stats.workers_started} started, "
                f"{stats.workers_recycled} recycled, {stats.workers_lost} lost, "
                f"{stats.workers_stopped} stopped",
                f"start failures: {stats.start_failures}",
            ]
        if self.mix == "ahead-kills":
            lines.append(
                f"written ahead: {self.written_ahead} task frames; "
                f"{self.rerun_after_ahead} tasks rerun after it and answered"
            )
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
    """The identities PoolStatistics documents (``triopool._stats``), and
    what the storm adds; ``settled``: nothing in flight."""
    problems = identity_problems(stats)
    in_flight = stats.tasks_waiting + stats.tasks_running
    # A slot starts a retiring worker's replacement while the old process
    # exits: at most two processes per slot, the one serving and one leaving.
    if stats.workers_alive > 2 * stats.workers:
        problems.append(f"more than two workers alive per slot: {stats}")
    if settled and (in_flight or stats.workers_alive):
        problems.append(f"something still in flight after the block: {stats}")
    return problems


async def run_sync(
    pool: triopool.Pool, fn: Callable[..., object], *args: object, **options: Any
) -> object:
    """How the storm calls the pool (see :func:`run_storm`)."""
    return await pool.run_sync(fn, *args, **options)


async def run_storm(
    config: StormConfig,
    run: Run = run_sync,
    pid_of: Callable[[int], int] = lambda pid: pid,
) -> StormReport:
    """Run one storm and report; never raises for a violated invariant.

    ``run(pool, fn, *args, **options)`` makes each of the storm's calls, and
    ``pid_of`` turns the pid of each worker a task is written to into the pid
    the storm records (see :func:`record_sends`): a self-test passes others,
    that simulate a symptom the storm must catch.
    """
    seed = config.seed if config.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    report = StormReport(seed=seed, start_method=config.start_method, mix=config.mix)
    violations = report.violations
    sent: dict[str, list[int]] = {}
    written_ahead: list[str] = []
    # The write-ahead storm: how each task ended ("result", or the name of
    # its error) and the pid its result or BrokenWorkerError names.
    ended: dict[str, tuple[str, int | None]] = {}
    # Made before the baselines: its leader and our pipe to it stay until the
    # checks are done.
    grandchildren = Grandchildren()
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
    log = LogWatch(config.start_method, allow=grandchildren.broke_pipe)

    def counter_problems(stats: triopool.PoolStatistics, *, settled: bool) -> list[str]:
        return check_counters(stats, settled=settled)

    # Tasks in flight whose worker the killer spares: one that breaks its
    # result pipe must be killed by the pool, not by the storm, and one that
    # leaves a grandchild and exits must report its own exit code.
    protected: set[str] = set()

    def pool_pids() -> list[int]:
        pids = sorted(pool_processes(config.start_method) - processes_before)
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
        processes = len(pool_pids())
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
            # Not a worker that runs a task whose check needs it to live on
            # (see protected), nor meanwhile the fork server, whose death
            # takes its workers along: a SIGKILL would mask what the check
            # looks for.
            spared = {sent[nonce][-1] for nonce in protected if sent.get(nonce)}
            if protected and config.start_method == "forkserver":
                spared |= descendants(1)
            pids = [pid for pid in pool_pids() if pid not in spared]
            delay = 0.05  # try again soon if nothing was killed
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    report.kills += 1
                    delay = rng.expovariate(1 / config.kill_interval)

    started_path = os.path.join(grandchildren.pid_dir, "started")

    async def one_task(pool: triopool.Pool, number: int, done: trio.Semaphore) -> None:
        nonce = f"t{number}-{rng.randrange(10**9)}"
        roll = rng.random()
        kill_on_cancel = rng.random() < 0.8
        time_limit: float | None = None
        argument = 0.0
        cancel_share = 0.15
        if config.mix == "ahead-kills":
            cancel_share = 0.05
            # Every 25th task kills its worker, not a random 4 %: a short
            # storm on a loaded machine runs only a few hundred tasks, and
            # must have some.
            if number % 25 == 12:
                action = "kill"
            elif roll < 0.92:
                action = "echo"
            elif roll < 0.95:
                action, argument = "exit", float(rng.randrange(1, 100))
            else:
                action, argument = "echo", 0.02
        elif rng.random() < config.hostile:
            action = rng.choice(HOSTILE_ACTIONS)
        elif roll < 0.70:
            action, argument = "echo", rng.choice((0.0, 0.0, 0.005, 0.05))
        elif roll < 0.82:
            action, argument = "exit", float(rng.randrange(1, 100))
        elif roll < 0.90:
            action = "kill"
        else:
            action, argument = "hang", 60.0
            time_limit = 0.3
        report.actions[action] += 1
        if action in ("dup2", "grandchild-exit"):
            protected.add(nonce)
        fn: Callable[..., object]
        args: tuple[object, ...]
        if action == "fork":
            child_does = rng.choice(("return", "raise", "exit"))
            action = f"fork-{child_does}"
            fn, args = hf.fork_and_return, (nonce, child_does)
        elif action.startswith("grandchild-"):
            then = action.removeprefix("grandchild-")
            group, pid_dir = grandchildren.group, grandchildren.pid_dir
            fn, args = hf.leave_grandchild, (nonce, then, group, pid_dir)
        elif action == "dup2":
            fn, args = hf.break_result_pipe, (nonce, grandchildren.pid_dir)
        elif config.mix == "ahead-kills":
            fn = wf.storm_task_noting_start
            args = (nonce, action, argument, started_path)
        else:
            fn = wf.storm_task
            args = (nonce, "echo" if action == "hang" else action, argument)
        cancel_after = rng.uniform(0, 0.5) if rng.random() < cancel_share else None
        outcome: object = None
        error: BaseException | None = None
        with trio.move_on_after(config.task_timeout) as hang_scope:
            with trio.CancelScope() as cancel_scope:
                if cancel_after is not None:
                    cancel_scope.deadline = trio.current_time() + cancel_after
                try:
                    outcome = await run(
                        pool,
                        fn,
                        *args,
                        kill_on_cancel=kill_on_cancel,
                        time_limit=time_limit,
                    )
                except Exception as exc:
                    error = exc
        done.release()
        protected.discard(nonce)
        where = f"task {nonce} ({action})"
        if hang_scope.cancelled_caught:
            violations.append(f"{where} hung for {config.task_timeout} s")
            return
        if outcome is None and error is None:
            if cancel_scope.cancelled_caught:
                report.outcomes["cancelled"] += 1
                report.endings[f"{action}: cancelled"] += 1
            else:
                violations.append(f"{where} ended with neither result nor error")
            return
        if error is None:
            report.outcomes["result"] += 1
            report.endings[f"{action}: result"] += 1
            if action not in ECHOING_ACTIONS:
                violations.append(f"{where} returned {outcome!r}")
                return
            got_nonce, got_pid = cast("tuple[str, int]", outcome)
            ended[nonce] = ("result", got_pid)
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
        ended[nonce] = (name, getattr(error, "pid", None))
        exitcode = getattr(error, "exitcode", None)
        code = "" if exitcode is None else f"({exitcode})"
        report.endings[f"{action}: {name}{code}"] += 1
        pids = sent.get(nonce, [])
        if isinstance(error, triopool.BrokenWorkerError):
            allowed = {-signal.SIGKILL}
            if action == "exit":
                allowed.add(int(argument))
            if action == "grandchild-exit":
                allowed.add(hf.GRANDCHILD_EXIT)
            if action == "dup2" and error.exitcode == hf.BROKE_PIPE_EXIT:
                violations.append(
                    f"{where}: the pool waited for a worker that broke its result "
                    f"pipe to exit by itself ({error!r})"
                )
            elif error.exitcode not in allowed:
                violations.append(f"{where}: {error!r} with exitcode {error.exitcode}")
            if (
                action == "grandchild-exit"
                and error.exitcode == hf.GRANDCHILD_EXIT
                and not grandchildren.running(nonce)
            ):
                violations.append(
                    f"{where}: the caller heard of its worker's exit only once the "
                    f"grandchild holding the worker's pipes had ended ({error!r})"
                )
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
                if config.burst is not None and number % config.burst == 0:
                    # The burst's tasks end (each releases its permit),
                    # then the workers idle.
                    for _ in range(config.in_flight):
                        await done.acquire()
                    for _ in range(config.in_flight):
                        done.release()
                    await trio.sleep(config.pause * rng.uniform(1, 2))
                if rng.random() < 0.3:
                    await trio.sleep(rng.uniform(0, 0.01))

    pool: triopool.Pool | None = None
    with record_sends(sent, pid_of, written_ahead), watch_log(log):
        async with triopool.open_pool(
            config.workers,
            start_method=config.start_method,
            max_tasks_per_child=config.max_tasks_per_child,
            initializer=wf.initializer_random_delay,
            initargs=(config.quick_start, 0.5 * timeout, 1.5 * timeout),
            start_timeout=timeout,
            # Starts time out on purpose here; the pool must not give up.
            max_start_failures=10**9,
            shutdown_timeout=5.0,
            **config.pool_options,
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
    report.written_ahead = len(written_ahead)
    if config.mix == "ahead-kills":
        violations.extend(check_starts(started_path, ended, sent))
        ahead = set(written_ahead)
        report.rerun_after_ahead = sum(
            1
            for nonce, (how, _pid) in ended.items()
            if how == "result" and nonce in ahead and len(set(sent[nonce])) > 1
        )
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
    violations.extend(grandchildren.close())
    return report


def check_starts(
    started_path: str,
    ended: dict[str, tuple[str, int | None]],
    sent: dict[str, list[int]],
) -> list[str]:
    """What the write-ahead storm's tasks noted as they started (``"nonce
    pid"`` lines, see ``storm_task_noting_start``), against how they ended.

    No task may start twice: one written ahead to a worker that died before
    starting it runs elsewhere, one that started is never run again. A
    result comes from the worker where its task started, and a
    BrokenWorkerError names that worker, if the task got as far as noting
    its start (a worker may die after it read a task, so that the task
    counts as started, and before the task wrote its line).
    """
    problems = []
    starts: dict[str, list[int]] = {}
    with contextlib.suppress(FileNotFoundError), open(started_path) as f:
        for line in f:
            nonce, noted_pid = line.split()
            starts.setdefault(nonce, []).append(int(noted_pid))
    for nonce, pids in starts.items():
        if len(pids) > 1:
            problems.append(
                f"task {nonce} started {len(pids)} times, in {pids} "
                f"(written to {sent.get(nonce)})"
            )
    for nonce, (how, pid) in ended.items():
        where = starts.get(nonce)
        if how == "result" and where != [pid]:
            problems.append(
                f"task {nonce}: result from {pid}, started in {where} "
                f"(written to {sent.get(nonce)})"
            )
        if how == "BrokenWorkerError" and where is not None and where != [pid]:
            problems.append(
                f"task {nonce}: BrokenWorkerError from {pid}, started in {where} "
                f"(written to {sent.get(nonce)})"
            )
    return problems


@dataclass
class CancelStormConfig:
    """One cancellation storm: many trivial callers against a pool that writes
    tasks ahead (``max_tasks_per_child`` unset), most of them giving up after
    a deadline of a fraction of a millisecond. Defaults: the ``burst`` profile.
    """

    workers: int = 1
    callers: int = 3000
    spread: float = 1.5  # seconds over which the callers arrive, at random
    cancel_share: float = 0.7  # callers with a deadline
    deadline: float = 0.0005  # the longest deadline (uniform from 0), seconds
    kill_share: float = 0.0  # callers with kill_on_cancel=True (others False)
    start_method: StartMethod = "spawn"
    seed: int | None = None
    # The callers and the pool's exit together must end within this: some
    # ten times what they take on a busy 2-core machine.
    time_bound: float = 30.0


# The cancellation storms. "burst": one worker; with kill_on_cancel=False a
# caller that gives up on a task written ahead asks the worker to drop it
# (SKIP), while new callers keep handing jobs to the same worker. "mixed":
# two workers and kill_on_cancel both ways, so that workers are also killed
# for cancellations while others drop tasks written ahead; at 2,000 callers a
# second, so that the queue stays short enough for deadlines to land while
# tasks are written ahead. "mixed-small" is "mixed" cut to 2 s for the
# default suite. Before the pool's wake-ups were made single, each failed
# every time in this session's runs (Trio's internal assertion, then a hang).
CANCEL_PROFILES = {
    "burst": CancelStormConfig(),
    "mixed": CancelStormConfig(
        workers=2,
        callers=10_000,
        spread=5.0,
        cancel_share=0.5,
        deadline=0.002,
        kill_share=0.5,
        time_bound=60.0,
    ),
    "mixed-small": CancelStormConfig(
        workers=2,
        callers=4000,
        spread=2.0,
        cancel_share=0.5,
        deadline=0.002,
        kill_share=0.5,
    ),
}


@dataclass
class CancelStormReport:
    """What a cancellation storm did, and every invariant that did not hold."""

    profile: str
    seed: int
    start_method: StartMethod
    violations: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    stats: triopool.PoolStatistics | None = None

    def summary(self) -> str:
        lines = [
            f"cancel storm {self.profile}, seed {self.seed}, {self.start_method}, "
            f"{self.elapsed:.1f} s",
            f"callers: {dict(sorted(self.outcomes.items()))}",
        ]
        if self.stats is not None:
            lines.append(f"statistics: {self.stats}")
        lines += [
            f"violations: {len(self.violations)}",
            *(f"  {v}" for v in self.violations[:20]),
        ]
        return "\n".join(lines)

    def as_json(self) -> dict[str, object]:
        return {
            "profile": self.profile,
            "seed": self.seed,
            "start_method": self.start_method,
            "violations": self.violations,
            "outcomes": dict(self.outcomes),
            "elapsed": round(self.elapsed, 2),
        }


async def run_cancel_storm(
    config: CancelStormConfig, profile: str = "custom"
) -> CancelStormReport:
    """Run one cancellation storm and report; never raises for a violated
    invariant (but a pool that crashes Trio itself ends the run with
    ``TrioInternalError``: :func:`cancel_storm_round` turns that into a
    violation).

    Every caller must end with its own echo (its nonce back) or, if it had a
    deadline, ``Cancelled``; nothing else, but for the SIGKILL of a worker
    killed for another caller's cancellation (see ``killed_for_another``). After the block: the statistics
    identities hold with nothing in flight, the fd set and the descendant
    processes are what they were, and it all ended within ``time_bound``.
    """
    seed = config.seed if config.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    report = CancelStormReport(profile, seed, config.start_method)
    violations = report.violations
    fds_before = open_fds()
    processes_before = descendants()
    start = time.monotonic()

    def killed_for_another(error: Exception) -> bool:
        """A worker killed for a caller that gave up with kill_on_cancel=True
        may already have started the next task written ahead to it: that task
        fails with the SIGKILL (the pool reads the worker's answers to the
        end, and a task it had started is not run again). Allowed only where
        some callers have kill_on_cancel=True; seen once in this session's
        mixed storms, for a caller that never gave up."""
        return (
            config.kill_share > 0
            and isinstance(error, triopool.BrokenWorkerError)
            and error.exitcode == -signal.SIGKILL
        )

    async def caller(pool: triopool.Pool, number: int, arrival: float) -> None:
        await trio.sleep_until(arrival)
        nonce = f"c{number}-{rng.randrange(10**9)}"
        deadline = (
            rng.uniform(0, config.deadline)
            if rng.random() < config.cancel_share
            else math.inf
        )
        kill = rng.random() < config.kill_share
        where = f"caller {nonce} (deadline {deadline}, kill_on_cancel={kill})"
        outcome: object = None
        with trio.move_on_after(deadline) as scope:
            try:
                outcome = await pool.run_sync(
                    wf.echo_with_pid, nonce, kill_on_cancel=kill
                )
            except Exception as exc:
                report.outcomes[type(exc).__name__] += 1
                if not killed_for_another(exc):
                    violations.append(f"{where}: unexpected {exc!r}")
                return
        if outcome is None:
            if scope.cancelled_caught and deadline < math.inf:
                report.outcomes["cancelled"] += 1
            else:
                violations.append(f"{where} ended with neither result nor error")
            return
        report.outcomes["result"] += 1
        got_nonce, _pid = cast("tuple[str, int]", outcome)
        if got_nonce != nonce:
            violations.append(f"misrouted: {where} got the result of {got_nonce}")

    pool: triopool.Pool | None = None
    with trio.move_on_after(config.time_bound) as bound:
        async with (
            triopool.open_pool(
                config.workers, start_method=config.start_method
            ) as pool,
            trio.open_nursery() as callers,
        ):
            # Every caller waits for its moment in a task of its own: those
            # whose moments pass while the loop is busy wake together, as
            # callers of a busy program do.
            begin = trio.current_time()
            for number in range(config.callers):
                arrival = begin + rng.uniform(0, config.spread)
                callers.start_soon(caller, pool, number, arrival)
    report.elapsed = time.monotonic() - start
    if bound.cancelled_caught:
        violations.append(
            f"the callers and the pool's exit took more than {config.time_bound} s"
        )
    if pool is None:
        return report
    stats = report.stats = pool.statistics()
    violations.extend(check_counters(stats, settled=True))
    ended = sum(report.outcomes.values())
    if ended != config.callers:
        violations.append(f"{ended} of {config.callers} callers ended")
    if report.outcomes["result"] > stats.tasks_completed:
        violations.append(f"more results than completed tasks: {stats}")
    if stats.tasks_failed > report.outcomes["BrokenWorkerError"]:
        violations.append(f"tasks failed, though none can: {stats}")
    fds_after = open_fds()
    if fds_after != fds_before:
        violations.append(
            f"fd set changed: +{sorted(fds_after - fds_before)} "
            f"-{sorted(fds_before - fds_after)}"
        )
    left = descendants() - processes_before
    if left:
        violations.append(f"processes left: {sorted(left)}")
    return report


def cancel_storm_round(
    profile: str, start_method: StartMethod, seed: int | None = None
) -> CancelStormReport:
    """One cancellation storm of ``profile`` in a Trio run of its own.

    A pool that crashes Trio itself (``TrioInternalError``) ends the run:
    that is reported as a violation. A pool that hangs shielded cannot be
    cancelled from inside; the caller bounds the round from outside (the
    test runs it in a subprocess, :func:`main` arms ``faulthandler``).
    """
    config = dataclasses.replace(
        CANCEL_PROFILES[profile], start_method=start_method, seed=seed
    )
    if config.seed is None:
        config.seed = random.randrange(2**32)
    try:
        return trio.run(run_cancel_storm, config, profile)
    except trio.TrioInternalError as exc:
        report = CancelStormReport(profile, config.seed, start_method)
        report.violations.append(f"Trio crashed: {exc!r}, from {exc.__cause__!r}")
        return report


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.storm [--profile P] --minutes N``: a long storm, with
    its figures (see the module docstring for the profiles)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, default="recycle")
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="cancellation profiles: stop after this many storms, not minutes",
    )
    # Defaults: the profile's (recycle: 8 workers and hundreds of tasks
    # waiting or running at once, as in the small storm).
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--in-flight", type=int, default=None)
    parser.add_argument("--start-method", choices=START_METHODS, default="spawn")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON line (for the tests)"
    )
    args = parser.parse_args(argv)
    if args.profile not in STORM_PROFILES:
        return cancel_main(args)
    # Nothing is printed as it happens: the storm's LogWatch takes the pool's
    # records (start failures and deaths are the point here) and reports the
    # ones that are violations with the rest.
    profile = STORM_PROFILES[args.profile]
    config = dataclasses.replace(
        profile,
        workers=profile.workers if args.workers is None else args.workers,
        duration=args.minutes * 60,
        in_flight=profile.in_flight if args.in_flight is None else args.in_flight,
        start_method=args.start_method,
        seed=args.seed,
    )
    report = trio.run(run_storm, config)
    print(report.summary())
    return 1 if report.violations else 0


def elastic_storm(min_workers: int = 0, **pool_options: Any) -> StormConfig:
    """The recycling storm with idle shrink on: bursts of tasks with pauses
    several times ``idle_timeout`` long, so that workers exit while idle and
    start again for the next burst (``pool_options`` adds more, e.g.
    ``retries=1``)."""
    return StormConfig(
        pool_options={"min_workers": min_workers, "idle_timeout": 0.05} | pool_options,
        burst=40,
        pause=0.3,
    )


# The storms of one pool each (the others are cancellation storms);
# ``elastic``: idle workers exit above min_workers=1 and come back, and a
# task whose worker dies under it runs once more (retries=1).
STORM_PROFILES = {
    "recycle": StormConfig(),
    "ahead-kills": AHEAD_KILLS,
    "elastic": elastic_storm(1, retries=1),
}


# What --profile names: the recycling storm, or cancellation storms of one
# kind or of two kinds taking turns ("cancel-small": the default suite's).
PROFILES = {
    "recycle": (),
    "ahead-kills": (),
    "elastic": (),
    "cancel": ("burst", "mixed"),
    "cancel-burst": ("burst",),
    "cancel-mixed": ("mixed",),
    "cancel-small": ("burst", "mixed-small"),
}


def cancel_main(args: argparse.Namespace) -> int:
    """Run cancellation storms, one Trio run each, until the time or the
    number of rounds is up or one fails; print each one's summary."""
    kinds = PROFILES[args.profile]
    rng = random.Random(args.seed)
    end = time.monotonic() + args.minutes * 60
    reports = []
    round_number = 0
    while True:
        kind = kinds[round_number % len(kinds)]
        config = CANCEL_PROFILES[kind]
        # A pool that hangs where cancellation cannot reach it (a shielded
        # exit) would hang the soak: print every thread's stack and exit.
        faulthandler.dump_traceback_later(2 * config.time_bound + 30, exit=True)
        try:
            # The first storm takes --seed itself, so that a storm's printed
            # seed replays it (with --profile naming its kind).
            seed = rng.randrange(2**32)
            if round_number == 0 and args.seed is not None:
                seed = args.seed
            report = cancel_storm_round(kind, args.start_method, seed)
        finally:
            faulthandler.cancel_dump_traceback_later()
        reports.append(report)
        print(report.summary(), flush=True)
        round_number += 1
        if report.violations:
            break
        if args.rounds is not None:
            if round_number >= args.rounds:
                break
        elif time.monotonic() >= end:
            break
    failed = sum(bool(report.violations) for report in reports)
    print(f"{len(reports)} cancellation storms, {failed} with violations")
    if args.json:
        print(json.dumps([report.as_json() for report in reports]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

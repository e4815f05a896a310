"""The recycling storm in the default suite, and checks that its detectors
can fail (see ``tests/storm.py``; ``nox -s stress`` runs it for minutes)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import pathlib
import signal
import sys
from typing import TYPE_CHECKING, Any

import pytest
import trio

import triopool
from tests import storm
from tests import workerfuncs as wf
from tests.storm import LogWatch, StormConfig, record_sends, run_storm
from triopool import _hooks, _protocol, _serialize

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.conftest import StartMethod


@pytest.mark.slow
async def test_recycling_storm_keeps_every_invariant(
    start_method: StartMethod, record_property: Callable[[str, object], None]
) -> None:
    with trio.fail_after(600):
        report = await run_storm(StormConfig(start_method=start_method))
    # The issue asks for under 60 s per run on the test machine: recorded
    # (pytest -s, --durations, the junit property), not asserted, so that a
    # loaded machine does not fail the suite.
    record_property("storm_seconds", round(report.elapsed, 1))
    print(f"small storm, {start_method}: {report.elapsed:.1f} s")
    print(report.summary())
    assert not report.violations, report.summary()
    stats = report.stats
    assert stats is not None
    assert stats.tasks_submitted == report.tasks_done == 200
    # The storm did storm: every kind of event happened at least once.
    assert report.outcomes["result"] > 0
    assert report.outcomes["BrokenWorkerError"] > 0
    assert report.outcomes["TimeLimitExceeded"] > 0
    assert report.outcomes["cancelled"] > 0
    assert report.kills > 0
    assert stats.start_failures > 0
    assert stats.workers_recycled > 0
    assert report.peak_fds > report.baseline_fds
    # Every kind of hostile task was among the 200 (each is a twentieth of
    # them: none of a kind is about as likely as 1 in 30,000).
    assert all(report.actions[kind] > 0 for kind in storm.HOSTILE_ACTIONS), (
        report.actions
    )
    # The log watch was attached and saw the storm's deliberate faults (all
    # WARNING records of expected causes, none a violation).
    assert report.log_counts["WARNING"] > 0


@pytest.mark.slow
async def test_write_ahead_storm_with_kills_keeps_every_invariant(
    start_method: StartMethod,
) -> None:
    # The "ahead-kills" profile, cut to 8 s of callers (about 10 s a run
    # here, with the pool's start and exit): tasks written ahead to busy
    # workers while workers are killed, by the storm and by their tasks.
    config = dataclasses.replace(
        storm.AHEAD_KILLS, duration=8.0, start_method=start_method
    )
    with trio.fail_after(300):
        report = await run_storm(config)
    print(report.summary())
    assert not report.violations, report.summary()
    stats = report.stats
    assert stats is not None
    assert stats.tasks_submitted == report.tasks_done > 0
    # Tasks were written ahead, workers died with tasks written ahead to
    # them, and those tasks ran elsewhere and answered (in this session's
    # runs, busy machine included: 160 to 3,300 frames written ahead and 35
    # to 740 such tasks per run, so neither is far from likely).
    assert report.written_ahead > 0, report.summary()
    assert report.rerun_after_ahead > 0, report.summary()
    assert report.kills > 0
    assert report.endings["kill: BrokenWorkerError(-9)"] > 0, report.summary()
    assert report.outcomes["result"] > 0
    assert stats.workers_recycled > 0


@pytest.mark.slow
@pytest.mark.parametrize(("min_workers", "retries"), [(0, 0), (1, 1)])
async def test_elastic_storm_loses_nothing_while_workers_come_and_go(
    start_method: StartMethod, min_workers: int, retries: int
) -> None:
    # Three bursts of 40 tasks with pauses between them: workers exit while
    # idle and start again, amid kills, recycling and hostile tasks; with
    # retries, a task whose worker dies under it runs again.
    config = dataclasses.replace(
        storm.elastic_storm(min_workers, retries=retries),
        workers=4,
        tasks=120,
        in_flight=40,
        start_method=start_method,
        # Pauses of 0.5-1 s: time for a slow start on a busy machine, then
        # idling.
        pause=0.5,
    )
    with trio.fail_after(600):
        report = await run_storm(config)
    print(report.summary())
    assert not report.violations, report.summary()
    stats = report.stats
    assert stats is not None
    assert stats.tasks_submitted == report.tasks_done == 120
    assert report.outcomes["result"] > 0
    # Workers stopped while idle, not only at the pool's close (at most one
    # per slot then).
    assert stats.workers_stopped > config.workers, report.summary()
    # Workers died under tasks (the storm kills them): with retries, those
    # tasks ran again.
    assert (stats.tasks_retried > 0) == (retries > 0), report.summary()


def test_start_checks_catch_a_task_run_twice_or_answered_elsewhere(
    tmp_path: pathlib.Path,
) -> None:
    # What the write-ahead storm's tasks note as they start, against how
    # they ended: each line a symptom the check must report.
    started = tmp_path / "started"
    started.write_text("a 10\nb 10\nb 11\nc 10\nd 12\ne 13\n")
    ended: dict[str, tuple[str, int | None]] = {
        "a": ("result", 10),  # fine
        "b": ("result", 11),  # started twice
        "c": ("result", 11),  # answered by a worker it did not start in
        "d": ("BrokenWorkerError", 14),  # failed in a worker it did not start in
        "e": ("BrokenWorkerError", 13),  # fine
        "f": ("BrokenWorkerError", 15),  # fine: died before it noted its start
        "g": ("result", 16),  # a result, but it never started
    }
    problems = storm.check_starts(str(started), ended, {})
    assert [problem.split()[1].rstrip(":") for problem in problems] == [
        "b",
        "b",
        "c",
        "d",
        "g",
    ]


ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
async def test_cancellation_storm_delivers_every_outcome_to_its_caller(
    start_method: StartMethod,
) -> None:
    # The "cancel-small" profile: thousands of trivial callers, most giving
    # up within a millisecond, against pools that write tasks ahead (see
    # tests/storm.py). In a process of its own: a pool that crashes Trio
    # itself (TrioInternalError) or hangs where no cancellation reaches must
    # fail this test, not end the test run.
    command = [
        sys.executable,
        "-m",
        "tests.storm",
        "--profile",
        "cancel-small",
        "--rounds",
        "2",
        "--start-method",
        start_method,
        "--json",
    ]
    with trio.fail_after(300):
        process = await trio.run_process(
            command, cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False
        )
    out = process.stdout.decode()
    err = process.stderr.decode()[-5000:]
    print(out)
    last = out.splitlines()[-1] if out.strip() else ""
    assert last.startswith("["), f"no report (exit {process.returncode}):\n{out}{err}"
    reports = json.loads(last)
    assert [report["profile"] for report in reports] == ["burst", "mixed-small"], out
    for report in reports:
        assert report["violations"] == [], out
        # The storm did storm: callers got results, and callers gave up.
        assert report["outcomes"].get("result", 0) > 0, out
        assert report["outcomes"].get("cancelled", 0) > 0, out
    assert process.returncode == 0, err


async def test_send_hook_records_the_worker_each_task_went_to() -> None:
    sent: dict[str, list[int]] = {}
    with trio.fail_after(60), record_sends(sent):
        async with triopool.open_pool(2) as pool:
            answers = [
                await pool.run_sync(wf.storm_task, f"n{i}", "echo", 0.0)
                for i in range(6)
            ]
    assert sent == {nonce: [pid] for nonce, pid in answers}


# The detectors: each self-test simulates one symptom of an fd mix-up and
# expects the storm to report it. A small, calm storm suffices.
# No hostile tasks: each simulates one symptom, and must be its only cause.
CALM = StormConfig(
    workers=2, tasks=20, kill_interval=1000.0, quick_start=1.0, hostile=0.0
)


async def test_storm_detects_results_delivered_to_the_wrong_caller() -> None:
    # Simulate the bug the storm hunts: swap the results of two callers, in
    # the storm's own calls (its ``run`` seam).
    held: list[object] = []

    async def swapping_run(
        pool: triopool.Pool, fn: Callable[..., object], *args: object, **options: Any
    ) -> object:
        value = await storm.run_sync(pool, fn, *args, **options)
        if isinstance(value, tuple):
            held.append(value)
            if len(held) > 1:
                return held.pop(0)
        return value

    with trio.fail_after(120):
        report = await run_storm(CALM, run=swapping_run)
    assert any(
        "cross-talk" in v and "got the result of" in v for v in report.violations
    ), report.summary()


async def test_storm_detects_answers_from_a_worker_the_task_was_not_sent_to() -> None:
    # Record every task as sent to a pid no worker has: each result then
    # comes "from another worker", and each worker death names the wrong one.
    # This is what the storm would see if a task were written to one
    # worker's pipe and answered on another's.
    # A fifth of the tasks end their worker: forty make a BrokenWorkerError
    # all but certain, whatever the seed.
    config = StormConfig(
        workers=2, tasks=40, kill_interval=1000.0, quick_start=1.0, hostile=0.0
    )
    with trio.fail_after(120):
        report = await run_storm(config, pid_of=lambda pid: -pid)
    assert report.outcomes["result"] > 0, report.summary()
    assert report.outcomes["BrokenWorkerError"] > 0, report.summary()
    answered = [v for v in report.violations if "answered by" in v]
    failed_in = [v for v in report.violations if "failed in worker" in v]
    assert len(answered) == report.outcomes["result"], report.summary()
    assert len(failed_in) == report.outcomes["BrokenWorkerError"], report.summary()


def fake_frame() -> _protocol.Frame:
    """A well-formed RESULT frame that no task asked for."""
    payload, _ = _serialize.dumps(("nonce of nobody", 0))
    return _protocol.Frame(_protocol.RESULT, 0, payload, [])


@contextlib.contextmanager
def stray_frame(at: _hooks.StrayPoint) -> Iterator[list[int]]:
    """Hand the pool :func:`fake_frame` once, at the point ``at`` of the
    first worker to reach it (through the pool's stray-frame hook): what a
    frame from another worker's pipe would look like to the pool. Yields the
    list of pids it fired for."""
    fired: list[int] = []

    def stray(worker_pid: int, point: _hooks.StrayPoint) -> _protocol.Frame | None:
        if point != at or fired:
            return None
        fired.append(worker_pid)
        return fake_frame()

    with _hooks.installed(stray_frame=stray):
        yield fired


async def test_storm_detects_a_frame_from_an_idle_worker() -> None:
    # A frame on an idle worker's pipe costs the pool only that worker (one
    # more "lost"), and no caller sees it: only the log shows it. The storm's
    # workers serve one task each, so a worker idles only if it comes up
    # while no task waits. One task at a time, so that the second worker
    # idles; that fails to happen in 10 tasks about once in 15 runs here: 40
    # tasks make a miss about as likely as 1 in 30,000.
    config = StormConfig(
        workers=2,
        tasks=40,
        in_flight=1,
        kill_interval=1000.0,
        quick_start=1.0,
        hostile=0.0,
    )
    with trio.fail_after(120), stray_frame("idle") as fired:
        report = await run_storm(config)
    assert len(fired) == 1, "no worker was idle"
    problems = [
        v
        for v in report.violations
        if v.startswith("protocol_error") and str(fired[0]) in v
    ]
    assert len(problems) == 1, report.summary()
    # Nothing else noticed: without the log watch the storm would pass.
    assert len(problems) == len(report.violations), report.summary()


async def test_storm_detects_a_bad_handshake_frame() -> None:
    # A frame other than UP in the handshake is one more start failure, which
    # the storm causes on purpose: only the watch tells this one apart.
    with trio.fail_after(120), stray_frame("handshake") as fired:
        report = await run_storm(CALM)
    assert len(fired) == 1
    problems = [
        v
        for v in report.violations
        if v.startswith("unexpected start failure (bad_frame)")
    ]
    assert len(problems) == 1, report.summary()
    assert len(problems) == len(report.violations), report.summary()


def record(
    level: int, message: str = "text no check reads", **fields: object
) -> logging.LogRecord:
    made = logging.LogRecord("triopool", level, __file__, 0, message, (), None)
    made.__dict__.update(fields)
    return made


KILLED = -signal.SIGKILL


@pytest.mark.parametrize(
    ("start_method", "level", "fields", "violation"),
    [
        ("spawn", logging.ERROR, {"event": "broken"}, True),
        ("spawn", logging.ERROR, {"event": "protocol_error", "worker_pid": 7}, True),
        ("spawn", logging.CRITICAL, {}, True),
        # Killed for bytes that are not frames.
        ("spawn", logging.WARNING, {"event": "lost", "broke_protocol": True}, True),
        (
            "spawn",
            logging.WARNING,
            {"event": "start_failed", "reason": "bad_frame"},
            True,
        ),
        (
            "spawn",
            logging.WARNING,
            {"event": "start_failed", "reason": "initializer"},
            True,
        ),
        (
            "spawn",
            logging.WARNING,
            {"event": "start_failed", "reason": "exited", "exitcode": 3},
            True,
        ),
        (
            "spawn",
            logging.WARNING,
            {
                "event": "start_failed",
                "reason": "exited",
                "exitcode": KILLED,
                "broke_protocol": True,
            },
            True,
        ),
        (
            "spawn",
            logging.WARNING,
            {"event": "start_failed", "reason": "forkserver"},
            True,
        ),
        (
            "spawn",
            logging.WARNING,
            {"event": "start_failed", "reason": "no_process", "errno": errno.EPIPE},
            True,
        ),
        ("spawn", logging.WARNING, {"event": "start_failed"}, True),
        # What the storm does on purpose.
        (
            "spawn",
            logging.WARNING,
            {"event": "start_failed", "reason": "timeout"},
            False,
        ),
        (
            "spawn",
            logging.WARNING,
            {
                "event": "start_failed",
                "reason": "exited",
                "exitcode": KILLED,
                "broke_protocol": False,
            },
            False,
        ),
        (
            "forkserver",
            logging.WARNING,
            {"event": "start_failed", "reason": "forkserver"},
            False,
        ),
        (
            "forkserver",
            logging.WARNING,
            {"event": "start_failed", "reason": "no_process", "errno": errno.EPIPE},
            False,
        ),
        (
            "forkserver",
            logging.WARNING,
            {"event": "start_failed", "reason": "no_process", "errno": errno.EMFILE},
            True,
        ),
        ("spawn", logging.WARNING, {"event": "lost", "broke_protocol": False}, False),
        ("spawn", logging.INFO, {"event": "retired", "worker_pid": 7}, False),
        # The text does not count, only the fields.
        ("spawn", logging.WARNING, {"event": "lost"}, False),
    ],
)
def test_log_watch_flags_errors_and_protocol_violations(
    start_method: StartMethod, level: int, fields: dict[str, object], violation: bool
) -> None:
    watch = LogWatch(start_method)
    message = "worker failed to start: protocol instead of reporting up"
    watch.handle(record(level, message, **fields))
    assert bool(watch.violations) == violation, watch.violations


def test_log_watch_excuses_what_the_test_allows() -> None:
    watch = LogWatch(allow=lambda r: getattr(r, "event", None) == "broken")
    watch.handle(record(logging.ERROR, event="broken"))
    assert not watch.violations
    watch.handle(record(logging.ERROR, event="protocol_error", worker_pid=7))
    assert len(watch.violations) == 1


async def test_storm_detects_an_error_the_pool_only_logs() -> None:
    # An ERROR record during the storm, from wherever in the pool, fails it.
    logger = logging.getLogger("triopool")

    async def log_an_error() -> None:
        await trio.sleep(0.05)
        logger.error("something went wrong inside the pool")

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log_an_error)
            report = await run_storm(CALM)
    assert any("something went wrong" in v for v in report.violations), report.summary()

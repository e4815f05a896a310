"""Lifecycle log records carry structured fields (``record.event``,
``record.worker_pid``) that programs and tests match, never their text."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

import triopool
from tests import workerfuncs as wf

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.usefixtures("start_method")

ROOT = Path(__file__).resolve().parent.parent

# What the pool does on purpose: logged below WARNING.
ON_PURPOSE = (
    "started",
    "up",
    "retired",
    "killed_for_time_limit",
    "killed_for_cancel",
    "killed",
    "stopped",
)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_every_lifecycle_record_names_its_event_and_worker() -> None:
    logger = logging.getLogger("triopool")
    handler = Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with trio.fail_after(60):
            async with triopool.open_pool(1, max_tasks_per_child=2) as pool:
                await pool.run_sync(wf.add, 1, 1)
                await pool.run_sync(wf.add, 1, 1)  # retired after this one
                with pytest.raises(triopool.BrokenWorkerError):
                    await pool.run_sync(wf.exit_with, 3)
                with pytest.raises(triopool.TimeLimitExceeded):
                    await pool.run_sync(wf.sleep, 10.0, time_limit=0.2)
                stats = pool.statistics()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    events = [getattr(record, "event", None) for record in handler.records]
    assert None not in events, [r.getMessage() for r in handler.records]
    for record in handler.records:
        if record.event not in ("broken",):  # type: ignore[attr-defined]
            assert isinstance(record.worker_pid, int)  # type: ignore[attr-defined]
        if not record.event.startswith(("broken", "forkserver")):  # type: ignore[attr-defined]
            assert record.worker_index == 0  # type: ignore[attr-defined]
        if record.event in ON_PURPOSE:  # type: ignore[attr-defined]
            assert record.levelno < logging.WARNING, record.event  # type: ignore[attr-defined]
    lost = [r for r in handler.records if r.event == "lost"]  # type: ignore[attr-defined]
    assert [r.levelno for r in lost] == [logging.WARNING]  # unexpected: a warning
    assert events.count("up") == stats.workers_started
    assert events.count("retired") == stats.workers_recycled == 1
    retired = [r for r in handler.records if r.event == "retired"]  # type: ignore[attr-defined]
    assert [r.reason for r in retired] == ["tasks"]  # type: ignore[attr-defined]
    assert events.count("lost") == 1
    assert events.count("killed_for_time_limit") == 1


@pytest.mark.parametrize(
    ("initializer", "reason"),
    [(wf.initializer_fails, "initializer"), (wf.initializer_exits, "exited")],
)
async def test_start_failure_records_say_why(
    initializer: Callable[[], None], reason: str
) -> None:
    logger = logging.getLogger("triopool")
    handler = Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with trio.fail_after(60):
            async with triopool.open_pool(
                1, initializer=initializer, max_start_failures=2
            ) as pool:
                with pytest.raises(triopool.BrokenPoolError):
                    await pool.run_sync(wf.add, 1, 1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    failed = [r for r in handler.records if getattr(r, "event", None) == "start_failed"]
    assert len(failed) == 2
    for record in failed:
        assert record.reason == reason  # type: ignore[attr-defined]
        assert isinstance(record.worker_pid, int)  # type: ignore[attr-defined]
    if reason == "exited":
        assert [r.exitcode for r in failed] == [3, 3]  # type: ignore[attr-defined]


def test_a_program_without_logging_prints_nothing_for_what_it_asked_for(
    start_method: str,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.quiet_program", start_method],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    stats = json.loads(done.stdout)
    # It did go through a recycling, a time limit and a cancellation.
    assert stats["recycled"] >= 1
    assert stats["lost"] == 2
    assert stats["cancelled"] == 1

"""Lifecycle log records carry structured fields (``record.event``,
``record.worker_pid``) that programs and tests match, never their text."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
import trio

import triopool
from tests import workerfuncs as wf

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.usefixtures("start_method")


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
    assert events.count("up") == stats.workers_started
    assert events.count("retired") == stats.workers_recycled == 1
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

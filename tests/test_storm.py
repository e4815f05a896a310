"""The recycling storm in the default suite, and checks that its detectors
can fail (see ``tests/storm.py``; ``nox -s stress`` runs it for minutes)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import triopool
from tests import workerfuncs as wf
from tests.storm import StormConfig, record_sends, run_storm
from triopool import _pool


@pytest.mark.slow
async def test_recycling_storm_keeps_every_invariant() -> None:
    with trio.fail_after(600):
        report = await run_storm(StormConfig())
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


async def test_send_hook_records_the_worker_each_task_went_to() -> None:
    sent: dict[str, list[int]] = {}
    with trio.fail_after(60), record_sends(sent):
        async with triopool.open_pool(2) as pool:
            answers = [
                await pool.run_sync(wf.storm_task, f"n{i}", "echo", 0.0)
                for i in range(6)
            ]
    assert sent == {nonce: [pid] for nonce, pid in answers}


async def test_storm_detects_results_delivered_to_the_wrong_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Simulate the bug the storm hunts: swap the results of two callers.
    real_outcome = _pool._outcome
    held: list[Any] = []

    def swapping_outcome(job: Any) -> Any:
        value = real_outcome(job)
        if isinstance(value, tuple):
            held.append(value)
            if len(held) > 1:
                return held.pop(0)
        return value

    monkeypatch.setattr(_pool, "_outcome", swapping_outcome)
    config = StormConfig(workers=2, tasks=20, kill_interval=1000.0, quick_start=1.0)
    with trio.fail_after(120):
        report = await run_storm(config)
    assert any("cross-talk" in v for v in report.violations), report.summary()

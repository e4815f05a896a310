"""``progress=`` on ``Pool.map`` and ``Pool.imap``, and the line it renders."""

from __future__ import annotations

import io
import itertools
import sys
from typing import TYPE_CHECKING

import attrs
import pytest
import trio

import triopool
from tests import mapfuncs
from triopool._progress import MapProgress, describe

if TYPE_CHECKING:
    from collections.abc import Iterator

TIMEOUT = 60  # generous: the machine is shared and busy


def check_sequence(snapshots: list[triopool.MapProgress]) -> None:
    """Counts and times never go back; failures are among the done."""
    for before, after in itertools.pairwise(snapshots):
        assert before.done <= after.done
        assert before.failed <= after.failed
        assert before.elapsed <= after.elapsed
    for snapshot in snapshots:
        assert 0 <= snapshot.failed <= snapshot.done


@pytest.mark.parametrize("chunksize", [1, 7, "auto"])
async def test_map_reports_progress_to_a_callable(chunksize: int | str) -> None:
    snapshots: list[triopool.MapProgress] = []
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            results = await pool.map(
                mapfuncs.sleep_for,
                [0.01] * 60,
                chunksize=chunksize,  # type: ignore[arg-type]
                progress=snapshots.append,
            )
    assert results == [0.01] * 60
    assert snapshots, "no snapshot at all"
    assert all(isinstance(s, triopool.MapProgress) for s in snapshots)
    check_sequence(snapshots)
    assert {s.total for s in snapshots} == {60}
    final = snapshots[-1]
    assert final.done == final.total == 60
    assert final.failed == 0
    # At most ten a second, and the final one: 60 items of 10 ms on two
    # workers take far less than the time that many snapshots would need.
    assert len(snapshots) <= 10 * final.elapsed + 2
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        final.done = 0  # type: ignore[misc]


async def test_imap_progress_without_a_length_counts_failures() -> None:
    snapshots: list[triopool.MapProgress] = []

    def items() -> Iterator[int]:
        yield from [1, -2, 3, -4, 5]

    with trio.fail_after(TIMEOUT):
        async with (
            triopool.open_pool(2) as pool,
            pool.imap(
                mapfuncs.fail_on_negative,
                items(),
                return_exceptions=True,
                progress=snapshots.append,
            ) as results,
        ):
            values = [value async for value in results]
    assert [v for v in values if not isinstance(v, Exception)] == [1, 3, 5]
    check_sequence(snapshots)
    assert {s.total for s in snapshots} == {None}
    assert (snapshots[-1].done, snapshots[-1].failed) == (5, 2)


async def test_early_break_gives_a_final_snapshot_and_leaves_nothing_running() -> None:
    snapshots: list[triopool.MapProgress] = []
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            async with pool.imap(
                mapfuncs.sleep_for,
                [0.0, 30.0, 30.0, 30.0],
                chunksize=1,
                progress=snapshots.append,
            ) as results:
                async for _value in results:
                    break
            final_seen = len(snapshots)
            stats = pool.statistics()
            assert stats.tasks_running == 0
            assert stats.tasks_waiting == 0
    check_sequence(snapshots)
    assert final_seen == len(snapshots)  # the final one came in the block
    assert snapshots[-1].total == 4
    assert 1 <= snapshots[-1].done < 4


async def test_an_error_in_the_callable_ends_the_call() -> None:
    def fail(progress: triopool.MapProgress) -> None:
        raise KeyError("progress")

    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(KeyError):
                await pool.map(mapfuncs.square, range(10), progress=fail)
            stats = pool.statistics()
            assert stats.tasks_running == 0
            assert await pool.map(mapfuncs.square, range(3)) == [0, 1, 4]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_progress_true_draws_a_line_on_a_terminal_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            not_a_terminal = io.StringIO()
            monkeypatch.setattr(sys, "stderr", not_a_terminal)
            assert await pool.map(mapfuncs.square, range(5), progress=True) == [
                0,
                1,
                4,
                9,
                16,
            ]
            assert not_a_terminal.getvalue() == ""
            terminal = FakeTerminal()
            monkeypatch.setattr(sys, "stderr", terminal)
            await pool.map(mapfuncs.square, range(5), progress=True)
    shown = terminal.getvalue()
    assert shown.endswith("\n")
    last = shown.rstrip("\n").split("\r")[-1]
    assert last.startswith("map  5/5  failed 0  "), shown


def test_the_line_shows_done_total_rate_and_eta() -> None:
    half = MapProgress(done=50, failed=2, total=100, elapsed=10.0)
    assert describe(half) == "50/100  failed 2  5.0/s  ETA 0:10"
    assert half.rate == 5.0
    assert half.eta == 10.0
    long = MapProgress(done=1, failed=0, total=10_000, elapsed=1.0)
    assert describe(long).endswith("ETA 2:46:39")
    unknown = MapProgress(done=7, failed=0, total=None, elapsed=2.0)
    assert unknown.eta is None
    assert describe(unknown) == "7  failed 0  3.5/s"
    assert describe(unknown, pulled=9) == "7/9+  failed 0  3.5/s"
    finished = MapProgress(done=100, failed=0, total=100, elapsed=4.0)
    assert describe(finished) == "100/100  failed 0  25.0/s"
    assert describe(MapProgress(0, 0, 5, 0.0)) == "0/5  failed 0  -"


async def test_progress_must_be_a_bool_or_a_callable() -> None:
    async with triopool.open_pool(1) as pool:
        with pytest.raises(TypeError, match="progress must be None, True/False"):
            await pool.map(mapfuncs.square, [1], progress="yes")  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="progress must be None, True/False"):
            pool.imap(mapfuncs.square, [1], progress=1)  # type: ignore[call-overload]

"""Pool.events() and Pool.insight(): what the pool tells about itself.

Contract tests with real worker processes. Each subscribes without waiting
first (so nothing that happens after is missed), takes the statistics at that
moment, and compares the events it receives with how the counters moved.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import signal
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

import triopool
from triopool._events import Feed
from triopool._stats import identity_problems

from . import workerfuncs

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

Event = triopool.TaskEvent | triopool.WorkerEvent
#: Generous for a busy 2-core machine: a bound, never a timing.
LIMIT = 60


async def watch(
    body: Callable[[triopool.Pool], Awaitable[None]], **options: Any
) -> tuple[list[Event], triopool.PoolStatistics, triopool.PoolStatistics]:
    """Run ``body`` in a pool while a subscriber collects every event until
    the pool has closed; return the events and the statistics at subscription
    and after the close.

    The subscription is entered first thing in the pool's block, before any
    slot ran (nothing waits in between), and left only after the pool has
    closed, so the events cover the pool's whole life.
    """
    events: list[Event] = []

    async def collect(stream: triopool.EventStream) -> None:
        async for event in stream:
            events.append(event)

    with trio.fail_after(LIMIT):
        async with (
            contextlib.AsyncExitStack() as stack,
            trio.open_nursery() as nursery,
            triopool.open_pool(**options) as pool,
        ):
            stream = await stack.enter_async_context(pool.events(buffer=100_000))
            first = pool.statistics()
            nursery.start_soon(collect, stream)
            await body(pool)
        # The iteration ended by itself once the pool had closed.
    assert stream.lost == 0
    last = pool.statistics()
    assert identity_problems(last) == []
    assert first.workers_started == 0
    assert first.tasks_submitted == 0
    # Per-worker insight adds up: every task that ended on a worker, which is
    # every completed or failed one but those failed before a worker took
    # them (no worker_index in their event).
    insight = pool.insight()
    failed_unassigned = sum(
        1
        for e in events
        if isinstance(e, triopool.TaskEvent)
        and e.kind == "failed"
        and e.worker_index is None
    )
    assert sum(slot.tasks_done for slot in insight) == (
        last.tasks_completed + last.tasks_failed - failed_unassigned
    )
    started = kinds(events, triopool.WorkerEvent)["started"]
    assert sum(slot.workers_started for slot in insight) == started
    return events, first, last


def kinds(events: list[Event], cls: type[Event]) -> collections.Counter[str]:
    return collections.Counter(e.kind for e in events if isinstance(e, cls))


def check_worker_events(
    events: list[Event], first: triopool.PoolStatistics, last: triopool.PoolStatistics
) -> None:
    """Each worker event kind moved with its counter (all starts here create
    a process)."""
    counts = kinds(events, triopool.WorkerEvent)
    assert counts["started"] == last.workers_started - first.workers_started
    assert counts["recycled"] == last.workers_recycled - first.workers_recycled
    assert counts["lost"] == last.workers_lost - first.workers_lost
    assert counts["start_failed"] == last.start_failures - first.start_failures
    assert counts["stopped"] == last.workers_stopped - first.workers_stopped


def check_task_events(
    events: list[Event], first: triopool.PoolStatistics, last: triopool.PoolStatistics
) -> None:
    counts = kinds(events, triopool.TaskEvent)
    assert counts["queued"] >= last.tasks_submitted - first.tasks_submitted
    assert counts["finished"] == last.tasks_completed - first.tasks_completed
    assert counts["failed"] == last.tasks_failed - first.tasks_failed
    assert counts["cancelled"] == last.tasks_cancelled - first.tasks_cancelled


def of_task(events: list[Event], task: int) -> list[triopool.TaskEvent]:
    return [e for e in events if isinstance(e, triopool.TaskEvent) and e.task == task]


async def test_a_task_is_queued_started_finished() -> None:
    async def body(pool: triopool.Pool) -> None:
        assert await pool.run_sync(workerfuncs.add, 2, 3) == 5

    events, first, last = await watch(body, workers=1)
    check_task_events(events, first, last)
    check_worker_events(events, first, last)
    (task,) = {e.task for e in events if isinstance(e, triopool.TaskEvent)}
    sequence = of_task(events, task)
    assert [e.kind for e in sequence] == ["queued", "started", "finished"]
    queued, started, finished = sequence
    assert {e.function for e in sequence} == {"add"}
    assert queued.worker_pid is None
    assert queued.worker_index is None
    assert started.worker_index == finished.worker_index == 0
    assert started.worker_pid == finished.worker_pid is not None
    # The times that tell waiting, transfer and run apart, in order.
    assert finished.queued_at is not None
    assert finished.started_at is not None
    assert finished.sent_at is not None
    assert finished.finished_at is not None
    assert (
        finished.queued_at
        <= finished.started_at
        <= finished.sent_at
        <= finished.finished_at
    )
    assert finished.wait_time is not None
    assert finished.wait_time >= 0
    assert finished.transfer_time is not None
    assert finished.transfer_time >= 0
    assert finished.run_time is not None
    assert finished.run_time >= 0
    assert queued.at == finished.queued_at
    assert started.at == finished.started_at
    assert finished.at >= finished.finished_at
    # The one worker's life, start to stop, in order.
    workers = [e for e in events if isinstance(e, triopool.WorkerEvent)]
    assert [e.kind for e in workers][-1] == "stopped"
    assert workers[-1].exitcode == 0
    assert workers[-1].pid == finished.worker_pid


async def test_forkserver_workers_have_the_same_events() -> None:
    async def body(pool: triopool.Pool) -> None:
        pids = await pool.map(workerfuncs.sleep_then_pid, [0.05] * 4, chunksize=1)
        assert len(pids) == 4

    events, first, last = await watch(body, workers=2, start_method="forkserver")
    check_task_events(events, first, last)
    check_worker_events(events, first, last)
    up = {
        e.pid: e.index
        for e in events
        if isinstance(e, triopool.WorkerEvent) and e.kind == "up"
    }
    # (Both slots usually come up; on a busy machine one may not be in time.)
    assert up
    assert set(up.values()) <= {0, 1}
    for event in events:
        if isinstance(event, triopool.TaskEvent) and event.kind == "finished":
            assert up[event.worker_pid] == event.worker_index


async def test_map_chunks_name_the_mapped_function() -> None:
    async def body(pool: triopool.Pool) -> None:
        assert await pool.map(abs, [-1, -2, -3], chunksize=2) == [1, 2, 3]

    events, first, last = await watch(body, workers=1)
    check_task_events(events, first, last)
    names = {e.function for e in events if isinstance(e, triopool.TaskEvent)}
    assert names == {"abs"}


async def test_failures_match_the_counters() -> None:
    """A task that raises, a worker's death, a time limit and a cancellation:
    task and worker events move with the statistics."""

    async def body(pool: triopool.Pool) -> None:
        with pytest.raises(ValueError, match="boom"):
            await pool.run_sync(workerfuncs.raise_value_error, "boom")
        with pytest.raises(triopool.BrokenWorkerError):
            await pool.run_sync(workerfuncs.kill_self, signal.SIGKILL)
        with pytest.raises(triopool.TimeLimitExceeded):
            await pool.run_sync(workerfuncs.sleep, 30, time_limit=0.5)
        async with pool.events() as started, trio.open_nursery() as nursery:
            nursery.start_soon(pool.run_sync, workerfuncs.sleep, 30)
            # Cancelled once a worker took it (not while it waits for the
            # replacement worker): that worker is killed.
            async for event in started:
                if isinstance(event, triopool.TaskEvent) and event.kind == "started":
                    break
            nursery.cancel_scope.cancel()
        assert await pool.run_sync(workerfuncs.add, 1, 1) == 2

    events, first, last = await watch(body, workers=1)
    check_task_events(events, first, last)
    check_worker_events(events, first, last)
    tasks = kinds(events, triopool.TaskEvent)
    assert tasks["failed"] == 3
    assert tasks["cancelled"] == 1
    assert tasks["finished"] == 1
    workers = kinds(events, triopool.WorkerEvent)
    assert workers["lost"] == 3  # killed by itself, for the limit, for the cancel
    lost = [
        e for e in events if isinstance(e, triopool.WorkerEvent) and e.kind == "lost"
    ]
    assert lost[0].exitcode == -signal.SIGKILL
    # Each failing task names its function and the worker it failed on.
    ended = {
        e.function: e
        for e in events
        if isinstance(e, triopool.TaskEvent) and e.kind in ("failed", "cancelled")
    }
    assert set(ended) == {"raise_value_error", "kill_self", "sleep"}
    assert ended["kill_self"].worker_pid == lost[0].pid


async def test_start_failures_match_the_counters() -> None:
    async def body(pool: triopool.Pool) -> None:
        with pytest.raises(triopool.BrokenPoolError):
            await pool.run_sync(workerfuncs.add, 1, 2)

    events, first, last = await watch(
        body,
        workers=1,
        initializer=workerfuncs.initializer_fails,
        max_start_failures=2,
    )
    check_worker_events(events, first, last)
    check_task_events(events, first, last)
    failed = [
        e
        for e in events
        if isinstance(e, triopool.WorkerEvent) and e.kind == "start_failed"
    ]
    assert len(failed) == last.start_failures == 2
    assert {e.reason for e in failed} == {"initializer"}
    assert {e.index for e in failed} == {0}
    # The task failed in the queue: it never got to a worker.
    sequence = [e.kind for e in events if isinstance(e, triopool.TaskEvent)]
    assert sequence == ["queued", "failed"]


async def test_recycling_matches_the_counters() -> None:
    async def body(pool: triopool.Pool) -> None:
        for n in range(5):
            assert await pool.run_sync(workerfuncs.add, n, 0) == n

    events, first, last = await watch(body, workers=1, max_tasks_per_child=2)
    check_worker_events(events, first, last)
    check_task_events(events, first, last)
    recycled = [
        e
        for e in events
        if isinstance(e, triopool.WorkerEvent) and e.kind == "recycled"
    ]
    assert len(recycled) == last.workers_recycled == 2
    assert {e.reason for e in recycled} == {"max_tasks_per_child"}
    # Each worker is started, up, then leaves once.
    by_pid: dict[int | None, list[str]] = collections.defaultdict(list)
    for e in events:
        if isinstance(e, triopool.WorkerEvent):
            by_pid[e.pid].append(e.kind)
    ends = {"recycled", "lost", "stopped", "start_failed"}
    for pid, life in by_pid.items():
        assert pid is not None
        if life[0] == "started":
            assert life[1:2] == ["up"], life
        assert len([k for k in life if k in ends]) == 1, life


async def test_a_slow_subscriber_loses_the_oldest_events() -> None:
    """A subscriber that reads nothing while the pool runs: the pool goes on
    at full speed, its buffer keeps the newest events, and it can tell how
    many it lost."""
    tasks = 40
    with trio.fail_after(LIMIT):
        async with triopool.open_pool(2) as pool:
            async with pool.events(buffer=10_000) as everything:
                async with pool.events(buffer=7) as slow:
                    assert slow.buffer == 7
                    results = await pool.map(
                        functools.partial(workerfuncs.add, 1), range(tasks), chunksize=1
                    )
                    assert results == [n + 1 for n in range(tasks)]
                # Left: the iteration ends once the buffer is drained.
                received = [event async for event in slow]
            # ... and the other subscription goes on until it is left.
            produced: list[Event] = []
            while len(produced) < len(received) + slow.lost:
                produced.append(await everything.__anext__())
    assert everything.lost == 0
    assert slow.lost > 0
    assert len(received) == 7
    assert slow.lost == len(produced) - len(received)
    # The slow one kept the newest events.
    assert received == produced[-7:]


async def test_events_after_close_end_the_iteration() -> None:
    """A subscriber that iterates in a task outside the pool's block: its
    ``async for`` ends once the pool has closed, after the workers' last
    events."""
    got: list[Event] = []

    async def follow(pool: triopool.Pool, task_status: trio.TaskStatus[None]) -> None:
        async with pool.events() as stream:
            task_status.started()
            async for event in stream:
                got.append(event)

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery, triopool.open_pool(2) as pool:
            await nursery.start(follow, pool)
            await pool.run_sync(workerfuncs.add, 1, 2)
            with pytest.raises(triopool.BrokenWorkerError):
                await pool.run_sync(workerfuncs.kill_self, signal.SIGKILL)
        # The pool closed, then follow() returned by itself: the nursery did
        # not wait forever.
    stats = pool.statistics()
    stopped = [
        e for e in got if isinstance(e, triopool.WorkerEvent) and e.kind == "stopped"
    ]
    # (The lost worker's slot may start no replacement: no work was left.)
    assert len(stopped) == stats.workers_stopped >= 1
    assert got[-len(stopped) :] == stopped  # the pool's last events
    # An idle worker exits by itself; one still starting is killed.
    assert {e.exitcode for e in stopped} <= {0, -signal.SIGKILL}
    tasks = [e.kind for e in got if isinstance(e, triopool.TaskEvent)]
    assert tasks.count("finished") == 1
    assert tasks.count("failed") == 1
    with pytest.raises(trio.ClosedResourceError, match="the pool is closed"):
        pool.events()


async def test_a_subscription_left_ends_its_iteration() -> None:
    with trio.fail_after(LIMIT):
        async with triopool.open_pool(1) as pool:
            async with pool.events() as stream:
                assert await pool.run_sync(workerfuncs.add, 1, 2) == 3
            rest = [event async for event in stream]
            # Its events were kept for it; none came after it was left.
            finished = [e for e in rest if e.kind == "finished"]
            assert len(finished) == 1
            assert await pool.run_sync(workerfuncs.add, 1, 2) == 3
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()


async def test_events_arguments_are_checked() -> None:
    with trio.fail_after(LIMIT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(ValueError, match="buffer must be >= 1, got 0"):
                pool.events(buffer=0)
            with pytest.raises(TypeError, match="buffer must be an int"):
                pool.events(buffer=1.5)  # type: ignore[arg-type]


async def test_insight_per_worker() -> None:
    with trio.fail_after(LIMIT):
        async with triopool.open_pool(2, max_tasks_per_child=3) as pool:
            async with trio.open_nursery() as nursery:
                for sleep in (1.0, 0.8, 0.01, 0.01):
                    nursery.start_soon(pool.run_sync, workerfuncs.sleep, sleep)
                for n in range(4):
                    nursery.start_soon(pool.run_sync, workerfuncs.add, n, n)
            with pytest.raises(ValueError, match="boom"):
                await pool.run_sync(workerfuncs.raise_value_error, "boom")
            insight = pool.insight()
            stats = pool.statistics()
    assert [slot.index for slot in insight] == [0, 1]
    assert sum(slot.tasks_done for slot in insight) == 9
    assert stats.tasks_completed + stats.tasks_failed == 9
    assert sum(slot.workers_started for slot in insight) == stats.workers_started
    for slot in insight:
        assert slot.startup_time is not None
        assert slot.startup_time > 0
        assert slot.busy_time >= 0
        assert slot.idle_time >= 0
        assert len(slot.longest_tasks) <= 5
        seconds = [s for _, s in slot.longest_tasks]
        assert seconds == sorted(seconds, reverse=True)
    # The two longest tasks of the pool are the two long sleeps, measured at
    # least as long as they slept.
    longest = sorted(
        (task for slot in insight for task in slot.longest_tasks),
        key=lambda task: task[1],
        reverse=True,
    )
    assert [name for name, _ in longest[:2]] == ["sleep", "sleep"]
    # Measured in the parent: a little less than the sleep at worst (a task
    # written ahead starts before the parent reads the answer before it).
    assert longest[0][1] >= 0.5
    assert longest[1][1] >= 0.4
    assert sum(slot.busy_time for slot in insight) >= 0.9
    names = {name for slot in insight for name, _ in slot.longest_tasks}
    assert names <= {"sleep", "add", "raise_value_error"}


async def test_a_stream_keeps_the_newest_and_counts_the_rest() -> None:
    """The buffer's rules, without a pool (collaboration test)."""
    feed = Feed()
    stream = feed.subscribe(3)
    for n in range(10):
        feed.publish(triopool.WorkerEvent("up", n, 0, float(n)))
    assert stream.lost == 7
    feed.close()
    assert [event.pid async for event in stream] == [7, 8, 9]  # type: ignore[union-attr]
    # Subscribing to a closed feed gives a stream that ends at once.
    assert [event async for event in feed.subscribe(3)] == []


async def test_one_reader_at_a_time() -> None:
    feed = Feed()
    stream = feed.subscribe(3)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.__anext__)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await stream.__anext__()
            feed.publish(triopool.WorkerEvent("up", 1, 0, 0.0))
    # The parked reader took the event.
    assert stream.lost == 0
    feed.unsubscribe(stream)
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_elastic_stops_and_lifetime_retirements_say_why() -> None:
    """Workers let go for idle_timeout are "stopped" with that reason, ones
    retired by age "recycled" with theirs; the counters move with them."""

    async def wait_for(
        events: triopool.EventStream, kind: str, reason: str
    ) -> triopool.WorkerEvent:
        async for event in events:
            if (
                isinstance(event, triopool.WorkerEvent)
                and event.kind == kind
                and event.reason == reason
            ):
                return event
        raise AssertionError(f"no {kind} event for {reason}")

    async def idle_body(pool: triopool.Pool) -> None:
        async with pool.events() as events:
            assert await pool.run_sync(workerfuncs.add, 1, 2) == 3
            await wait_for(events, "stopped", "idle_timeout")

    events, first, last = await watch(
        idle_body, workers=1, min_workers=0, idle_timeout=0.2
    )
    check_worker_events(events, first, last)
    stopped = [
        e for e in events if isinstance(e, triopool.WorkerEvent) and e.kind == "stopped"
    ]
    assert stopped[0].reason == "idle_timeout"

    async def lifetime_body(pool: triopool.Pool) -> None:
        async with pool.events() as events:
            assert await pool.run_sync(workerfuncs.add, 1, 2) == 3
            await wait_for(events, "recycled", "max_lifetime_per_child")

    events, first, last = await watch(
        lifetime_body, workers=1, max_lifetime_per_child=0.3
    )
    check_worker_events(events, first, last)
    assert last.workers_recycled >= 1


async def test_a_worker_aged_during_its_task_is_recycled_for_its_lifetime() -> None:
    """A worker that passes max_lifetime_per_child while it runs a task
    retires when the task ends: its "recycled" event names that limit, not
    another one."""

    async def body(pool: triopool.Pool) -> None:
        assert await pool.run_sync(workerfuncs.sleep, 0.5) == 0.5

    events, first, last = await watch(body, workers=1, max_lifetime_per_child=0.2)
    check_worker_events(events, first, last)
    recycled = [
        e
        for e in events
        if isinstance(e, triopool.WorkerEvent) and e.kind == "recycled"
    ]
    assert recycled
    assert {e.reason for e in recycled} == {"max_lifetime_per_child"}

"""The chunk-size planner of ``chunksize="auto"``, driven synchronously.

The last tests run a small simulation of workers taking chunks from a queue
(no processes, no clock), to check the property the planner exists for:
every worker stays busy until close to the end.
"""

from __future__ import annotations

import heapq
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triopool._chunksize import (
    MAX_AUTO_CHUNK,
    TARGET_SECONDS,
    ChunkPlanner,
    default_max_in_flight,
)


def test_first_chunks_hold_one_item() -> None:
    planner = ChunkPlanner(workers=2, max_size=100)
    assert [planner.next_size() for _ in range(5)] == [1] * 5
    assert planner.next_size(remaining=1000) == 1
    planner.observe_input(50, 0.0)  # the input alone says nothing of fn
    assert planner.next_size() == 1


def test_fast_items_grow_chunks_fourfold_up_to_the_cap() -> None:
    planner = ChunkPlanner(workers=2, max_size=1000)
    sizes: list[int] = []
    size = planner.next_size()
    while len(sizes) < 8:
        sizes.append(size)
        planner.observe_run(size, size * 1e-7)
        size = planner.next_size()
    assert sizes == [1, 4, 16, 64, 256, 1000, 1000, 1000]


def test_chunks_aim_at_the_target_worker_time() -> None:
    planner = ChunkPlanner(workers=2, max_size=10_000, target=0.02)
    for _ in range(20):
        planner.observe_run(1000, 1000 * 0.0001)  # 0.1 ms per item
    assert planner.next_size() == 200


def test_slow_items_shrink_chunks_at_once() -> None:
    planner = ChunkPlanner(workers=2, max_size=10_000)
    for _ in range(20):
        planner.observe_run(1000, 1000 * 1e-6)
    assert planner.next_size() == 4000
    planner.observe_run(2000, 2000 * 0.01)  # items became 10,000 times slower
    assert planner.next_size() <= 3
    for _ in range(10):  # and stay so: the fast past fades
        planner.observe_run(1, 0.5)
    assert planner.next_size() == 1


def test_growth_waits_for_larger_chunks_to_be_seen() -> None:
    # Many observations of small chunks do not allow a big jump.
    planner = ChunkPlanner(workers=2, max_size=10_000)
    for _ in range(50):
        planner.observe_run(4, 4e-7)
    assert planner.next_size() == 16


def test_known_remaining_items_split_the_tail() -> None:
    planner = ChunkPlanner(workers=2, max_size=10_000)
    planner.observe_run(5000, 5000 * 1e-5)  # 10 us per item
    assert planner.next_size(remaining=1_000_000) == 2000  # the target, 20 ms
    # At most a quarter of each worker's share of what is left...
    assert planner.next_size(remaining=8000) == 1000
    assert planner.next_size(remaining=1600) == 200
    assert planner.next_size(remaining=800) == 100
    # ... but no chunk under 0.2 ms, where splitting costs more than it saves.
    assert planner.next_size(remaining=160) == 20
    assert planner.next_size(remaining=9) == 20


def test_known_remaining_items_split_the_tail_down_to_one() -> None:
    planner = ChunkPlanner(workers=2, max_size=10_000)
    planner.observe_run(1, 0.002)  # 2 ms per item
    assert planner.next_size(remaining=1_000_000) == 4  # grows fourfold
    assert planner.next_size(remaining=24) == 3
    assert planner.next_size(remaining=9) == 2
    assert planner.next_size(remaining=1) == 1


def test_a_slow_input_keeps_chunks_small() -> None:
    planner = ChunkPlanner(workers=2, max_size=10_000, target=0.02)
    planner.observe_run(5000, 5000 * 1e-7)
    planner.observe_input(10, 0.05)  # an item every 5 ms
    assert planner.next_size() == 4
    planner.observe_input(10, 1.0)  # an item every 100 ms: one at a time
    assert planner.next_size() == 1


def test_zero_times_are_fine() -> None:
    # A coarse clock may measure nothing: growth is then only by doubling.
    planner = ChunkPlanner(workers=1, max_size=64)
    planner.observe_run(3, 0.0)
    planner.observe_input(3, 0.0)
    assert planner.next_size() == 12
    assert planner.next_size(remaining=20) == 12
    planner.observe_run(0, 1.0)  # an empty chunk counts for nothing
    assert planner.next_size() == 12


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": 0, "max_size": 1}, "workers must be >= 1, got 0"),
        ({"workers": 1, "max_size": 0}, "max_size must be >= 1, got 0"),
    ],
)
def test_bad_arguments(options: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChunkPlanner(**options)


def test_default_max_in_flight_holds_two_largest_chunks_per_worker() -> None:
    assert default_max_in_flight(3) == 2 * 3 * MAX_AUTO_CHUNK


@given(
    workers=st.integers(1, 64),
    max_size=st.integers(1, 10_000),
    observations=st.lists(
        st.tuples(
            st.sampled_from(["run", "input"]),
            st.integers(0, 10_000),
            st.floats(0.0, 100.0),
        ),
        max_size=20,
    ),
    remaining=st.none() | st.integers(1, 10**9),
)
def test_sizes_stay_within_bounds(
    workers: int,
    max_size: int,
    observations: list[tuple[str, int, float]],
    remaining: int | None,
) -> None:
    planner = ChunkPlanner(workers=workers, max_size=max_size)
    largest = 0
    for kind, items, seconds in observations:
        if kind == "run":
            planner.observe_run(items, seconds)
            largest = max(largest, items)
        else:
            planner.observe_input(items, seconds)
        size = planner.next_size(remaining)
        assert 1 <= size <= max_size
        assert size <= max(1, 4 * largest)


# A simulation of the map machinery: 2 * workers chunks at most in flight,
# a FIFO queue, each idle worker takes the next chunk; no overhead.


def simulate(
    times: list[float], workers: int, *, known_length: bool
) -> tuple[float, float, list[int]]:
    """Run items of these durations; return (end, first worker idle for good,
    chunk sizes)."""
    planner = ChunkPlanner(workers=workers, max_size=MAX_AUTO_CHUNK)
    pulled = 0
    queue: list[list[float]] = []
    running = 0
    now = 0.0
    idle = list(range(workers))
    finishing: list[tuple[float, int, int, float]] = []
    last_end = [0.0] * workers
    sizes = []
    while True:
        while running < 2 * workers and pulled < len(times):
            remaining = len(times) - pulled if known_length else None
            chunk = times[pulled : pulled + planner.next_size(remaining)]
            pulled += len(chunk)
            sizes.append(len(chunk))
            queue.append(chunk)
            running += 1
        while idle and queue:
            worker = idle.pop()
            chunk = queue.pop(0)
            heapq.heappush(
                finishing, (now + sum(chunk), worker, len(chunk), sum(chunk))
            )
        if not finishing:
            return max(last_end), min(last_end), sizes
        now, worker, items, seconds = heapq.heappop(finishing)
        last_end[worker] = now
        idle.append(worker)
        running -= 1
        planner.observe_run(items, seconds)


def skewed(count: int, *, at_the_end: bool) -> list[float]:
    """5% of the items take 1 ms, the others 10 us (100 times less)."""
    if at_the_end:
        slow = count // 20
        return [1e-5] * (count - slow) + [1e-3] * slow
    rng = random.Random(16)
    return [1e-3 if rng.random() < 0.05 else 1e-5 for _ in range(count)]


@pytest.mark.parametrize(
    ("times", "known_length"),
    [
        ([1e-6] * 200_000, True),
        ([1e-6] * 200_000, False),
        ([1e-3] * 2000, True),
        ([1e-3] * 2000, False),
        (skewed(10_000, at_the_end=False), True),
        (skewed(10_000, at_the_end=False), False),
        # Slow items bunched at the end: only a known length can see them
        # coming, by shrinking the last chunks.
        (skewed(10_000, at_the_end=True), True),
    ],
)
@pytest.mark.parametrize("workers", [2, 7])
def test_no_worker_idles_long_at_the_end(
    times: list[float], known_length: bool, workers: int
) -> None:
    end, first_idle, sizes = simulate(times, workers, known_length=known_length)
    ideal = sum(times) / workers
    if known_length:
        assert end <= 1.05 * ideal
    else:
        # Without a length, the last chunk may come as a surprise, but no
        # longer than about the target time.
        assert end <= ideal + 2 * TARGET_SECONDS
    # Every worker is busy until shortly before the end.
    assert end - first_idle <= 2 * TARGET_SECONDS
    assert sizes[: 2 * workers] == [1] * (2 * workers)
    assert sum(sizes) == len(times)


def test_fast_items_end_in_few_chunks() -> None:
    _end, _idle, sizes = simulate([1e-6] * 200_000, 2, known_length=True)
    assert max(sizes) == MAX_AUTO_CHUNK
    assert len(sizes) < 100


def test_three_items_go_one_per_chunk() -> None:
    _end, _idle, sizes = simulate([0.1] * 3, 2, known_length=True)
    assert sizes == [1, 1, 1]

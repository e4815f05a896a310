"""How many items the next chunk of ``chunksize="auto"`` holds: a sans-io planner.

:class:`ChunkPlanner` is fed observations, ``(items, seconds)`` pairs, and
answers :meth:`ChunkPlanner.next_size`. It does no I/O and reads no clock:
the map machinery measures, the planner decides, and the tests drive it
synchronously.

Two kinds of observation:

- *run*: a chunk of ``items`` took ``seconds`` of worker time (measured in
  the worker around the calls of ``fn``, so the wait in the pool's queue is
  not counted);
- *input*: pulling ``items`` from the input took ``seconds`` (a slow input
  must not make a result wait long for its chunk to fill).

The rules, each for a reason:

- Before any run is observed, chunks hold one item: a short input still
  spreads over every worker, and a slow ``fn`` is never batched blind.
- A chunk aims at :data:`TARGET_SECONDS` of worker time: long enough that
  the round trip of a chunk is small beside it, short enough that results
  keep coming and the workers stay balanced.
- It grows at most to :data:`GROWTH` times the largest chunk observed so
  far, so a guess from small chunks is checked before it is trusted much
  further; it shrinks at once when items turn out slow.
- When the number of items left is known, a chunk holds at most
  ``1 / (TAIL_SPLIT * workers)`` of them, so the last chunks get small and no
  worker ends holding a long chunk while the others idle (guided
  self-scheduling); but never fewer than take :data:`TAIL_FLOOR_SECONDS`
  (by the estimate), where an idle worker would lose less than the round
  trips of smaller chunks cost. When the number is unknown, the target caps
  a chunk's expected time instead.
- Never more than ``max_size`` (the caller derives it from ``max_in_flight``).
- After a chunk failed as a whole (its worker died, or it hit a time limit),
  chunks hold one item again, as at the start: the failure may come from
  one item, and the next chunks should risk only their own.

Invariant: ``1 <= next_size(...) <= max_size``.

This module imports only the standard library.
"""

from __future__ import annotations

import math

#: The worker time a chunk aims at, in seconds.
TARGET_SECONDS = 0.02

#: The most items in a chunk of ``chunksize="auto"``. Beyond a few thousand
#: trivial items, a chunk's round trip is already small beside the pickling
#: of its items, and bigger chunks only hold more memory.
MAX_AUTO_CHUNK = 4096

#: A chunk is at most this many times the largest one observed.
GROWTH = 4

#: With a known input length, a chunk takes at most this fraction of the
#: items left per worker (inverted)...
TAIL_SPLIT = 4

#: ... unless that would make it shorter than this, in seconds.
TAIL_FLOOR_SECONDS = 0.0002

#: How much the older observations weigh at each new one: the estimate
#: follows changes in item times within a few chunks.
_DECAY = 0.5


#: With an int ``chunksize``, the default ``max_in_flight`` holds this many
#: chunks per worker: the eight a busy worker may have written ahead (see
#: ``_pipeline.MAX_AHEAD``) and as many queued behind them, so that a worker
#: finds its next chunk waiting while results travel back and the window
#: refills.
CHUNKS_PER_WORKER = 16

#: ... and at least this many items per worker, for small chunks.
MIN_ITEMS_PER_WORKER = 256


def default_fixed_max_in_flight(workers: int, chunksize: int) -> int:
    """The default ``max_in_flight`` with an int ``chunksize``, in items.

    :data:`CHUNKS_PER_WORKER` chunks per worker, and at least
    :data:`MIN_ITEMS_PER_WORKER` items per worker: ``workers * max(16 *
    chunksize, 256)``.
    """
    return workers * max(CHUNKS_PER_WORKER * chunksize, MIN_ITEMS_PER_WORKER)


def default_max_in_flight(workers: int) -> int:
    """The default ``max_in_flight`` with ``chunksize="auto"``, in items.

    Two of the largest chunks per worker: every worker can run one while the
    next waits for it, even once chunks have grown to their largest.
    """
    return 2 * workers * MAX_AUTO_CHUNK


class _Rate:
    """Seconds per item, from decayed sums of observations."""

    __slots__ = ("items", "seconds")

    def __init__(self) -> None:
        self.items = 0.0
        self.seconds = 0.0

    def add(self, items: int, seconds: float) -> None:
        self.items = self.items * _DECAY + items
        self.seconds = self.seconds * _DECAY + max(seconds, 0.0)

    def items_within(self, seconds: float) -> float:
        """How many items take ``seconds``, at this rate (inf if unknown)."""
        if not self.items or self.seconds <= 0.0:
            return math.inf
        return seconds * self.items / self.seconds


class ChunkPlanner:
    """Chooses chunk sizes from observed item times; see the module docstring.

    Args:
        workers: How many workers share the chunks.
        max_size: The largest chunk it may answer (``>= 1``).
        target: The worker time a chunk aims at, in seconds.
    """

    __slots__ = ("_input", "_largest_run", "_max_size", "_run", "_target", "_workers")

    def __init__(
        self, *, workers: int, max_size: int, target: float = TARGET_SECONDS
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size!r}")
        self._workers = workers
        self._max_size = max_size
        self._target = target
        self._run = _Rate()
        self._input = _Rate()
        self._largest_run = 0

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def workers(self) -> int:
        return self._workers

    @workers.setter
    def workers(self, workers: int) -> None:
        """The workers changed (a cluster that grows or shrinks)."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        self._workers = workers

    def observe_run(self, items: int, seconds: float) -> None:
        """A chunk of ``items`` took ``seconds`` of worker time."""
        if items > 0:
            self._run.add(items, seconds)
            self._largest_run = max(self._largest_run, items)

    def observe_input(self, items: int, seconds: float) -> None:
        """Pulling ``items`` from the input took ``seconds``."""
        if items > 0:
            self._input.add(items, seconds)

    def observe_failure(self) -> None:
        """A chunk failed as a whole: plan from one item again.

        The observed worker times are forgotten, the input's are kept (the
        failure says nothing of the input).
        """
        self._run = _Rate()
        self._largest_run = 0

    def next_size(self, remaining: int | None = None) -> int:
        """The size of the next chunk; ``remaining``: items left, if known."""
        if not self._largest_run:
            return 1
        size = min(
            self._run.items_within(self._target),
            GROWTH * self._largest_run,
            # Results of a chunk wait for its last item to arrive.
            self._input.items_within(self._target),
        )
        if remaining is not None:
            tail = math.ceil(remaining / (TAIL_SPLIT * self._workers))
            size = min(size, max(tail, self._run.items_within(TAIL_FLOOR_SECONDS)))
        if size >= self._max_size:
            return self._max_size
        return max(1, int(size))

"""A map's chunk that reports each item as it is done: what the pool
records of it, and what its end means for each of its items.

With ``return_exceptions=True`` or ``retries``, a worker's death in the
middle of a chunk does not end the call, so the chunk runs as
``_chunk.run_chunk_reporting``: the worker sends each item's outcome as a
PART frame once the item is done, before the next one starts, and the
pool appends those frames to the job's ``parts`` (:func:`record`). When
the chunk's job ends, :func:`read` says what became of its items: those
reported keep their outcome; if the run failed as a whole (the worker
died, the chunk hit its time limit), the first item not reported is the
one that was running, and it alone gets the error (or runs again, with
``retries``); the items after it never started, and run elsewhere.

Invariants:

- PART frames come in item order, each before the answer of the task it
  belongs to, so the job a PART belongs to is the one its worker runs
  (``Pipeline.current``); a PART for a job that takes none breaks the
  protocol.
- A job with ``parts`` is never retried by the pool (``Jobs``): the map
  decides, per item, what runs again, so that no item that finished runs
  twice.
- Nothing here changes a job's state: that is ``Jobs``' business.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import attrs

from . import _messages, _settle
from ._errors import BrokenWorkerError, SerializationError, TimeLimitExceeded
from ._jobs import _say_runs

if TYPE_CHECKING:
    from collections.abc import Callable

    from . import _protocol
    from ._map_tasks import Streamed
    from ._pipeline import Pipeline
    from ._worker import Worker

_log = logging.getLogger("triopool")

#: The kind of a streamed chunk that reports each item (see
#: ``_map_tasks.Streamed.kind``; the other kinds are there).
REPORTING: Final = 4


def record(pipeline: Pipeline, frame: _protocol.Frame, worker: Worker) -> bool:
    """The worker sent a PART frame: add it to the parts of the job it runs.
    Returns False (the worker broke the protocol) if it runs none, or one
    that takes no parts."""
    job = pipeline.current
    if job is not None and pipeline.sent:
        parts = job.parts
        if parts is not None:
            parts.append(frame)
            return True
    _log.error(
        "worker %d sent %r for a task that reports no items; killing it",
        worker.pid,
        frame,
        extra=_settle.fields(worker, "protocol_error"),
    )
    return False


@attrs.frozen
class Reading:
    """What a reporting chunk's end means for its items.

    ``values`` are the outcomes of its first ``len(values)`` items (values,
    or exceptions with ``return_exceptions=True``). ``error`` is ``None``
    if that is every item; else the item after them (the one at fault: it
    was running when the run failed, or it raised) failed with ``error``,
    and the items after it never ran; ``blamed``: it raised ``error``
    itself, which it reported (else the run failed, and only a chunk that
    reports every item at once tells for sure that the item after the
    reported ones was running). ``whole``: the run failed before any
    item ran, for no item's fault (the task did not unpickle in the
    worker): no item can be blamed. ``seconds``: how long the items took
    in the worker, when the run ended normally.
    """

    values: list[Any]
    error: BaseException | None = None
    blamed: bool = False
    whole: bool = False
    seconds: float | None = None


def read(
    parts: list[_protocol.Frame],
    outcome: Callable[[], Any],
    count: int,
    *,
    catching: bool,
) -> Reading:
    """Read the end of a chunk of ``count`` items that reported ``parts``,
    whose job's ``outcome()`` returns its result or raises its error.
    Raises what ``outcome()`` raises that is not an ``Exception``."""
    error: BaseException | None = None
    seconds: float | None = None
    try:
        seconds = outcome()
    except Exception as exc:
        error = exc
    values, first_failed = _messages.decode_parts(parts)
    if first_failed is not None and not catching:
        # The item raised: the chunk stopped there (whatever became of the
        # worker afterwards).
        return Reading(
            values[:first_failed], values[first_failed], blamed=True, seconds=seconds
        )
    if len(values) >= count:
        # Every item is done: a death after the last one costs none of them.
        return Reading(values[:count], seconds=seconds)
    if error is None:
        # An answer without every item: the worker broke the protocol.
        error = BrokenWorkerError(
            f"the worker reported {len(values)} of the {count} items of a chunk",
            None,
            None,
        )
    elif isinstance(error, SerializationError) and not values:
        return Reading([], error, whole=True)
    return Reading(values, error, seconds=seconds)


@attrs.frozen
class Rest:
    """After a reporting chunk's run failed: hand ``values`` (the outcomes of
    its first items) on, and run its items from ``index`` on again as a
    chunk of their own, whose first item failed ``runs`` runs already, which
    reports each item at once if ``strict``, and whose item at fault is
    charged with ``suspected`` runs more (see ``_map_tasks.Streamed``)."""

    values: list[Any]
    index: int
    runs: int
    strict: bool
    suspected: int = 0


def rest_after(
    reading: Reading,
    count: int,
    chunk: Streamed,
    *,
    retries: int,
    retry_on: tuple[type[BaseException], ...],
    catching: bool,
) -> Rest | None:
    """What follows a run of ``chunk`` (of ``count`` items) that failed with
    ``reading.error`` for an item's fault: its rest runs again, or (None)
    the call fails with the error. ``retries`` and ``retry_on`` are each
    item's; ``catching``: ``return_exceptions``."""
    error = reading.error
    assert error is not None
    values = reading.values
    at = len(values)  # the item at fault
    runs = chunk.runs if at == 0 else 0
    if not (chunk.strict or reading.blamed) and count - at > 1:
        # Quick items are reported a few at a time: the first one not
        # reported may have finished before the run failed. The rest runs
        # again, each item reported at once, to find the one, which is
        # charged with this run too.
        return Rest(values, at, runs, strict=True, suspected=1)
    if at and isinstance(error, TimeLimitExceeded):
        # The limit counts per chunk: the items before it took part of the
        # time, so this one may not be slow itself. It runs again first in
        # a chunk of its own, where the limit is all its own.
        return Rest(values, at, 0, strict=True)
    runs += 1 + chunk.suspected
    if runs <= retries and isinstance(error, retry_on):
        log_rerun(error, runs, retries - runs)
        return Rest(values, at, runs, strict=True)
    runs_tried(error, runs)
    if not catching:
        return None
    return Rest([*values, error], at + 1, 0, strict=False)


def runs_tried(error: BaseException, runs: int) -> None:
    """Mark the last failure of an item that ran ``runs`` times."""
    if runs > 1:
        _say_runs(error, runs)


def log_rerun(error: BaseException, runs: int, retries_left: int) -> None:
    """An item's run failed with ``error`` and it runs again (as the pool
    logs a task it retries)."""
    _log.info(
        "item run %d failed (%s: %s); running it again",
        runs,
        type(error).__name__,
        error,
        extra={
            "event": "retried",
            "worker_pid": error.pid if isinstance(error, BrokenWorkerError) else None,
            "reason": type(error).__name__,
            "runs": runs,
            "retries_left": retries_left,
        },
    )

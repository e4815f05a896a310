"""A reporting chunk, synchronously (see ``triopool._chunk_parts``): which job
a PART frame belongs to, and what a chunk's end means for each item."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import pytest

import triopool
from tests.conftest import logged
from triopool import _chunk, _chunk_parts, _messages, _protocol
from triopool._jobs import Job
from triopool._pipeline import Pipeline

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from triopool._worker import Worker


class FakeWorker:
    """What a protocol error's log record says of its worker."""

    pid = 4242
    index = 0


def frame(pieces: list[bytes | memoryview]) -> _protocol.Frame:
    decoder = _protocol.Decoder()
    decoder.receive_data(b"".join(bytes(piece) for piece in pieces))
    decoded = decoder.next_frame()
    assert isinstance(decoded, _protocol.Frame)
    return decoded


def parts(*values: object) -> list[_protocol.Frame]:
    """PART frames: a value each, or an exception raised by its item."""
    return [
        frame(
            _messages.error_part_frame(value)
            if isinstance(value, BaseException)
            else _messages.part_frame(value)
        )
        for value in values
    ]


def returns(value: object) -> Callable[[], Any]:
    return lambda: value


def raises(error: BaseException) -> Callable[[], Any]:
    def outcome() -> Any:
        raise error

    return outcome


def died() -> triopool.BrokenWorkerError:
    return triopool.BrokenWorkerError("worker 1 died", 1, 7)


def test_a_part_goes_to_the_running_job() -> None:
    pipeline = Pipeline()
    job = Job([b"task"], None, True)
    job.parts = []
    pipeline.sending(job)
    pipeline.written(job, 4, 0.0)
    part = parts(5)[0]
    worker = cast("Worker", FakeWorker())
    assert _chunk_parts.record(pipeline, part, worker)
    assert job.parts == [part]


def test_a_part_for_no_reporting_job_breaks_the_protocol(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline = Pipeline()
    worker = cast("Worker", FakeWorker())
    part = parts(5)[0]
    caplog.set_level(logging.ERROR, logger="triopool")
    assert not _chunk_parts.record(pipeline, part, worker)  # nothing runs
    job = Job([b"task"], None, True)  # a task that reports nothing
    pipeline.sending(job)
    pipeline.written(job, 4, 0.0)
    assert not _chunk_parts.record(pipeline, part, worker)
    assert job.parts is None
    found = logged(caplog.records, event="protocol_error", worker_pid=4242)
    assert len(found) == 2


def test_every_item_reported() -> None:
    reading = _chunk_parts.read(parts(1, 2, 3), returns(0.5), 3, catching=False)
    assert reading == _chunk_parts.Reading([1, 2, 3], seconds=0.5)


def test_a_death_blames_the_first_item_not_reported() -> None:
    error = died()
    reading = _chunk_parts.read(parts(1, 2), raises(error), 5, catching=True)
    assert reading.values == [1, 2]
    assert reading.error is error
    assert not reading.whole


def test_a_death_after_the_last_item_costs_none() -> None:
    reading = _chunk_parts.read(parts(1, 2), raises(died()), 2, catching=True)
    assert reading == _chunk_parts.Reading([1, 2])


@pytest.mark.parametrize("catching", [True, False])
def test_an_item_that_raised(catching: bool) -> None:
    reading = _chunk_parts.read(
        parts(1, ValueError(2), 3), returns(0.1), 3, catching=catching
    )
    if catching:
        # Its exception is its outcome, in its place.
        assert reading.error is None
        assert reading.values[::2] == [1, 3]
        assert isinstance(reading.values[1], ValueError)
    else:
        # The chunk stopped there: the item is at fault.
        assert reading.values == [1]
        assert isinstance(reading.error, ValueError)
        assert reading.error.args == (2,)


def test_a_chunk_that_did_not_unpickle_blames_no_item() -> None:
    error = triopool.SerializationError("could not unpickle the task in the worker")
    reading = _chunk_parts.read([], raises(error), 3, catching=True)
    assert reading == _chunk_parts.Reading([], error, whole=True)


def test_an_answer_short_of_items_is_a_broken_worker() -> None:
    reading = _chunk_parts.read(parts(1), returns(0.1), 3, catching=True)
    assert reading.values == [1]
    assert isinstance(reading.error, triopool.BrokenWorkerError)


def test_an_error_that_ends_the_call_is_read_as_any_other() -> None:
    # (The map tells errors that end the call from the item's own.)
    error = triopool.BrokenPoolError("broken")
    reading = _chunk_parts.read(parts(1), raises(error), 3, catching=True)
    assert reading.error is error


def check_item(x: int) -> int:
    if x < 0:
        raise ValueError(x)
    if x == 99:
        raise KeyboardInterrupt
    return x * 10


@pytest.fixture
def sent() -> Iterator[list[_protocol.Frame]]:
    """The frames reporting chunks send, through the seam the worker loop
    sets (see _child.main)."""
    frames: list[_protocol.Frame] = []
    previous = _chunk.set_part_sender(lambda pieces: frames.append(frame(pieces)))
    try:
        yield frames
    finally:
        _chunk.set_part_sender(previous)


@pytest.mark.parametrize("catching", [True, False])
def test_the_worker_side_sends_every_item(
    sent: list[_protocol.Frame], catching: bool
) -> None:
    seconds = _chunk.run_chunk_reporting(check_item, [1, -2, 3], catching)
    assert seconds >= 0
    values, first_failed = _messages.decode_parts(sent)
    assert first_failed == 1
    assert values[0] == 10
    assert isinstance(values[1], ValueError)
    # Without catching, the chunk ends at the first exception.
    assert values[2:] == ([30] if catching else [])
    sent.clear()
    with pytest.raises(KeyboardInterrupt):
        _chunk.run_chunk_reporting(check_item, [1, 99, 3], catching)
    # The value before the item that ends the worker is sent; that item
    # sends no part.
    assert _messages.decode_parts(sent) == ([10], None)


def test_quick_items_share_a_part_and_slow_ones_go_at_once(
    sent: list[_protocol.Frame],
) -> None:
    _chunk.run_chunk_reporting(check_item, list(range(1, 51)), True)
    assert _messages.decode_parts(sent) == ([10 * x for x in range(1, 51)], None)
    assert len(sent) < 50  # quick items: far fewer frames than items
    sent.clear()
    # report_every=0: each item as soon as it is done.
    _chunk.run_chunk_reporting(check_item, [1, 2, 3], True, 0.0)
    assert len(sent) == 3


def test_reporting_outside_a_worker_says_so() -> None:
    with pytest.raises(RuntimeError, match="only in a triopool worker"):
        _chunk.run_chunk_reporting(check_item, [1], True)

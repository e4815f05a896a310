"""The worker's log handler, without a worker: what a record becomes before
it crosses (synchronous, no processes)."""

from __future__ import annotations

import logging
import os
import threading

from triopool import _forwarder, _messages, _protocol


class Odd:
    def __repr__(self) -> str:
        return "<Odd>"


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def make_record(**extra: object) -> logging.LogRecord:
    logger = logging.getLogger("tests.forwarder")
    record = logger.makeRecord(
        "tests.forwarder", logging.WARNING, __file__, 1, "%s and %d", (Odd(), 3), None
    )
    record.__dict__.update(extra)
    return record


def test_plain_values_cross_as_themselves_others_as_their_repr() -> None:
    assert _forwarder.plain([1, ("a", None), {"k": 2.5}]) == [
        1,
        ("a", None),
        {"k": 2.5},
    ]
    assert _forwarder.plain(Odd()) == "<Odd>"
    assert _forwarder.plain({Odd(): [threading.Lock()]})["<Odd>"][0].startswith("<")
    assert (
        _forwarder.plain(BadRepr()) == "<BadRepr object (repr() raised RuntimeError)>"
    )


def test_a_record_is_formatted_in_the_worker() -> None:
    sent: list[bytes] = []
    handler = _forwarder.Forwarder(sent.append, os.getpid())
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        record = make_record(lock=threading.Lock(), step=7)
        record.exc_info = __import__("sys").exc_info()
    handler.handle(record)
    decoder = _protocol.Decoder()
    decoder.receive_data(sent[0])
    frame = decoder.next_frame()
    assert isinstance(frame, _protocol.Frame)
    fields = _messages.decode_log(frame)
    assert fields["msg"] == "<Odd> and 3"
    assert fields["args"] is None
    assert fields["exc_info"] is None
    assert "ZeroDivisionError" in fields["exc_text"]
    assert fields["step"] == 7
    assert fields["lock"].startswith("<")
    rebuilt = logging.makeLogRecord(fields)
    assert rebuilt.getMessage() == "<Odd> and 3"


def test_a_forked_process_does_not_send() -> None:
    sent: list[bytes] = []
    handler = _forwarder.Forwarder(sent.append, os.getpid() + 1)  # not this process
    handler.handle(make_record(step=1))
    assert sent == []

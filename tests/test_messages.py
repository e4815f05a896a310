"""Every message between the pool and a worker, encoded as its sender does
and decoded as its receiver does, through the real framing; synchronous, no
processes."""

from __future__ import annotations

import pickle
import sys
import threading
from typing import TYPE_CHECKING

import pytest

import triopool
from tests import workerfuncs
from triopool import _messages, _protocol, _serialize

if TYPE_CHECKING:
    from collections.abc import Callable

    from triopool._messages import Answer, Pieces


def received(pieces: Pieces) -> _protocol.Frame:
    """The one frame ``pieces`` make, as the other side's decoder returns it."""
    decoder = _protocol.Decoder()
    decoder.receive_data(b"".join(bytes(piece) for piece in pieces))
    frame = decoder.next_frame()
    assert isinstance(frame, _protocol.Frame)
    assert decoder.next_frame() is _protocol.NEED_DATA
    return frame


def answered(answer: Answer) -> _protocol.Frame:
    kind, payload, buffers = answer
    return received(_protocol.encode_frame(kind, payload, buffers))


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as a task's exception has one."""
    try:
        raise exc
    except BaseException as caught:
        return caught


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def initializer(value: int) -> None:
    pass


def test_config_round_trip() -> None:
    frame = received(_messages.config_frame(initializer, (7,), 1 << 30))
    assert frame.kind == _protocol.CONFIG
    config = _messages.decode_config(frame)
    assert config.sys_path == sys.path
    assert config.sys_argv == sys.argv
    assert (config.main_path, config.main_name) == _messages.main_module()
    assert config.max_memory == 1 << 30
    assert isinstance(config.authkey, bytes)
    assert config.initializer is not None
    assert pickle.loads(config.initializer) == (initializer, (7,))


def test_each_worker_gets_its_slot_and_log_levels() -> None:
    config = _messages.worker_config(None, (), None)
    levels = (0, 20, {"app.db": 10})
    decoded = _messages.decode_config(
        received(config.frame(worker_index=3, log_levels=levels))
    )
    assert (decoded.worker_index, decoded.log_levels) == (3, levels)
    off = _messages.decode_config(received(config.frame(worker_index=1)))
    assert (off.worker_index, off.log_levels) == (1, None)
    assert off.sys_path == decoded.sys_path == sys.path


def test_log_record_round_trip() -> None:
    fields = {"name": "app", "levelno": 30, "msg": "text", "args": None, "step": [1]}
    frame = received([_messages.log_frame(fields)])
    assert frame.kind == _protocol.LOG
    assert _messages.decode_log(frame) == fields


def test_config_without_initializer() -> None:
    config = _messages.decode_config(received(_messages.config_frame(None, (), None)))
    assert config.initializer is None
    assert config.max_memory is None


def test_config_with_an_unpicklable_initializer_names_it() -> None:
    with pytest.raises(TypeError, match="initializer and initargs must be picklable"):
        _messages.config_frame(initializer, (threading.Lock(),), None)


def test_task_round_trip() -> None:
    pieces = _messages.task_frame(workerfuncs.add, (1, 2), 2.5, main_importable=True)
    frame = received(pieces)
    assert frame.kind == _protocol.TASK
    assert _messages.decode_task(frame, None) == (workerfuncs.add, (1, 2), 2.5)
    # The worker's own unpickler, as for a pickle that refers to __main__.
    assert _messages.decode_task(frame, pickle.Unpickler) == (
        workerfuncs.add,
        (1, 2),
        2.5,
    )


def test_task_that_does_not_pickle_names_the_function() -> None:
    with pytest.raises(triopool.SerializationError) as info:
        _messages.task_frame(
            workerfuncs.identity, (threading.Lock(),), None, main_importable=True
        )
    assert "tests.workerfuncs.identity" in str(info.value)
    assert isinstance(info.value.__cause__, TypeError)


def test_start_failed_round_trip() -> None:
    frame = received(_messages.start_failed_frame(raised(ValueError("bad init"))))
    assert frame.kind == _protocol.START_FAILED
    failure = _messages.decode_start_failed(frame)
    assert (failure.type_name, failure.message) == ("builtins.ValueError", "bad init")
    assert "raise exc" in failure.traceback
    assert failure == _messages.ExceptionText(
        "builtins.ValueError", "bad init", failure.traceback
    )


def test_result_round_trip() -> None:
    # A RESULT frame holds the value itself, pickled as the worker does.
    big = b"r" * (1 << 17)
    payload, buffers = _serialize.dumps_with_fallback([1, big])
    frame = received(_protocol.encode_frame(_protocol.RESULT, payload, buffers))
    assert _messages.outcome(frame) == [1, big]


def test_result_that_does_not_unpickle_here() -> None:
    # A pickle that names a module the pool does not have.
    payload = pickle.dumps(workerfuncs.add, 5).replace(
        b"tests.workerfuncs", b"tests.nowhere_xy"
    )
    frame = received(_protocol.encode_frame(_protocol.RESULT, payload))
    with pytest.raises(triopool.SerializationError, match="unpickle the task's result"):
        _messages.outcome(frame)


def outcome_error(frame: _protocol.Frame) -> BaseException:
    """What the caller of the task gets raised."""
    try:
        value = _messages.outcome(frame)
    except BaseException as exc:
        return exc
    raise AssertionError(f"a value came back: {value!r}")


def test_error_round_trip() -> None:
    frame = answered(_messages.error_answer(raised(KeyError("k"))))
    assert frame.kind == _protocol.ERROR
    error = outcome_error(frame)
    assert type(error) is KeyError
    assert error.args == ("k",)
    assert isinstance(error.__cause__, triopool.RemoteTraceback)
    assert "raise exc" in error.__cause__.traceback_text


def test_error_whose_str_raises() -> None:
    frame = answered(_messages.error_answer(raised(StrRaises())))
    remote = _messages.decode_remote_exception(frame)
    assert remote.text.type_name == f"{__name__}.StrRaises"
    assert remote.text.message == "<str() of the exception raised RuntimeError>"
    # It pickles, so the caller gets the exception itself.
    assert type(outcome_error(frame)) is StrRaises


def test_error_that_does_not_pickle_arrives_as_text() -> None:
    frame = answered(_messages.error_answer(raised(Unpicklable())))
    assert _messages.decode_remote_exception(frame).exc_pickle is None
    error = outcome_error(frame)
    assert isinstance(error, triopool.RemoteError)
    assert (error.type_name, error.message) == (
        f"{__name__}.Unpicklable",
        "holds a lock",
    )
    assert isinstance(error.__cause__, triopool.RemoteTraceback)


def test_fatal_round_trip() -> None:
    frame = received(_messages.fatal_frame(raised(SystemExit(3))))
    assert frame.kind == _protocol.FATAL
    exc = _messages.decode_remote_exception(frame).rebuild()
    assert type(exc) is SystemExit
    assert exc.code == 3
    assert isinstance(exc.__cause__, triopool.RemoteTraceback)


def unpickling_error() -> BaseException:
    try:
        pickle.loads(b"not a pickle")
    except Exception as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("step", "make_error", "text"),
    [
        (
            _messages.Step.UNPICKLE_TASK,
            unpickling_error,
            "could not unpickle the task in the worker: _pickle.UnpicklingError",
        ),
        (
            _messages.Step.PICKLE_RESULT,
            lambda: raised(TypeError("cannot pickle '_thread.lock' object")),
            "could not pickle the result in the worker: builtins.TypeError: "
            "cannot pickle '_thread.lock' object",
        ),
    ],
)
def test_serialization_failure_round_trip(
    step: _messages.Step, make_error: Callable[[], BaseException], text: str
) -> None:
    original = make_error()
    frame = answered(_messages.serialization_failure_answer(step, original))
    assert frame.kind == _protocol.SERIAL_ERROR
    failure = _messages.decode_serialization_failure(frame)
    assert failure.step is step
    error = outcome_error(frame)
    assert isinstance(error, triopool.SerializationError)
    assert str(error).startswith(text)
    # The pickling error itself is the cause, with the worker's traceback.
    assert type(error.__cause__) is type(original)
    assert isinstance(error.__cause__.__cause__, triopool.RemoteTraceback)


def test_result_pickling_failure_hints_at_cloudpickle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if cloudpickle were not installed (a public module, not a private name).
    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    frame = answered(
        _messages.serialization_failure_answer(
            _messages.Step.PICKLE_RESULT, raised(pickle.PicklingError("by reference"))
        )
    )
    assert str(outcome_error(frame)).endswith("pip install cloudpickle")


def test_messages_compare_and_show_by_value() -> None:
    text = _messages.ExceptionText("builtins.OSError", "gone", "tb")
    same = _messages.ExceptionText("builtins.OSError", "gone", "tb")
    assert text == same
    assert hash(text) == hash(same)
    assert text != _messages.ExceptionText("builtins.OSError", "gone", "other")
    assert repr(text) == (
        "ExceptionText(type_name='builtins.OSError', message='gone', traceback='tb')"
    )


def chunk_parts_stream() -> bytes:
    """A chunk's PART frames as the worker writes them: a value, a large
    bytes value (out of band), an exception, and a value that does not
    pickle."""
    pieces: list[bytes | memoryview] = []
    pieces += _messages.part_frame(1)
    pieces += _messages.part_frame(b"z" * 100_000)
    pieces += _messages.error_part_frame(raised(ValueError("bad item")))
    pieces += _messages.part_frame(threading.Lock())
    return b"".join(bytes(piece) for piece in pieces)


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_chunk_parts_round_trip_whatever_the_split(step: int) -> None:
    stream = chunk_parts_stream()
    decoder = _protocol.Decoder()
    frames: list[_protocol.Frame] = []
    for start in range(0, len(stream), step):
        decoder.receive_data(stream[start : start + step])
        while isinstance(frame := decoder.next_frame(), _protocol.Frame):
            frames.append(frame)
    assert [frame.kind for frame in frames] == [_protocol.PART] * 4
    assert [frame.flags for frame in frames] == [
        _messages.PART_VALUE,
        _messages.PART_VALUE,
        _messages.PART_ERROR,
        _messages.PART_SERIAL_ERROR,
    ]
    values, first_failed = _messages.decode_parts(frames)
    assert values[:2] == [1, b"z" * 100_000]
    assert first_failed == 2
    error = values[2]
    assert isinstance(error, ValueError)
    assert error.args == ("bad item",)
    assert isinstance(error.__cause__, triopool.RemoteTraceback)
    assert isinstance(values[3], triopool.SerializationError)
    assert str(values[3]).startswith("could not pickle the result in the worker")


def test_chunk_parts_without_failures() -> None:
    frames = [received(_messages.part_frame(value)) for value in (None, "a", 2.5)]
    assert _messages.decode_parts(frames) == ([None, "a", 2.5], None)
    assert _messages.decode_parts([]) == ([], None)

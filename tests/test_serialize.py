"""Pickling for the wire (``_serialize``), tested synchronously: no processes.

The framing of what it produces is tested in test_protocol.py; cloudpickle
with real workers in test_serialization.py.
"""

from __future__ import annotations

import functools
import pickle
import sys
from typing import Any

import pytest

from tests import workerfuncs
from triopool import _serialize


def no_cloudpickle() -> Any:
    return None


def test_large_bytes_travel_out_of_band() -> None:
    big = b"b" * (1 << 20)
    payload, buffers = _serialize.dumps({"big": big, "small": b"s"})
    assert len(payload) < 1000
    assert [buffer.raw().nbytes for buffer in buffers] == [1 << 20]
    # The buffer is the object's own memory, not a copy of it.
    assert buffers[0].raw().obj is big


def test_large_bytes_in_a_task_tuple_travel_out_of_band() -> None:
    # A task is (fn, args, soft_time_limit): its arguments are searched.
    big = bytearray(_serialize.OUT_OF_BAND_THRESHOLD)
    task = (workerfuncs.identity, (big, b"small"), None)
    payload, buffers = _serialize.dumps(task)
    assert [buffer.raw().obj for buffer in buffers] == [big]
    fn, args, limit = _serialize.loads(payload, [b.raw() for b in buffers])
    assert (fn, args, limit) == task


@pytest.mark.parametrize("size", [10, 1 << 17])
def test_memoryviews_keep_format_shape_and_readonly(size: int) -> None:
    data = bytearray(size * 8)
    view = memoryview(data).cast("d", (size // 2, 2))
    view[1, 1] = 2.5
    for original in (view, view.toreadonly()):
        payload, buffers = _serialize.dumps(original)
        copy = _serialize.loads(
            payload, [memoryview(bytearray(b.raw())) for b in buffers]
        )
        assert isinstance(copy, memoryview)
        assert (copy.format, copy.shape, copy.readonly) == (
            "d",
            (size // 2, 2),
            original.readonly,
        )
        assert copy[1, 1] == 2.5
        assert copy.tobytes() == original.tobytes()


def test_non_contiguous_memoryview_pickles_by_copy() -> None:
    view = memoryview(bytes(range(200)))[::2]
    payload, buffers = _serialize.dumps(view)
    assert buffers == []
    assert _serialize.loads(payload, []).tobytes() == bytes(range(0, 200, 2))


def test_plain_pickles_still_load() -> None:
    assert _serialize.loads(pickle.dumps([1, "a"], 5), []) == [1, "a"]


def test_plain_pickle_stays_the_fast_path() -> None:
    def refuse() -> Any:
        raise AssertionError("cloudpickle was asked for a picklable task")

    payload, buffers = _serialize.dumps_with_fallback(
        (workerfuncs.add, (1, 2), None), find_cloudpickle=refuse
    )
    assert b"cloudpickle" not in payload
    fn, args, _ = pickle.loads(payload, buffers=buffers)
    assert fn(*args) == 3


def test_cloudpickle_output_loads_with_plain_pickle() -> None:
    pytest.importorskip("cloudpickle")
    payload, buffers = _serialize.dumps_with_fallback(lambda x: x * 3)
    assert pickle.loads(payload, buffers=buffers)(3) == 9
    payload, buffers = _serialize.dumps_with_fallback(workerfuncs.add, by_value=True)
    assert pickle.loads(payload, buffers=buffers)(2, 3) == 5


def test_without_cloudpickle_the_plain_error_is_raised() -> None:
    with pytest.raises((pickle.PicklingError, AttributeError)):
        _serialize.dumps_with_fallback(lambda: 1, find_cloudpickle=no_cloudpickle)


def test_by_value_without_cloudpickle_names_the_cause() -> None:
    with pytest.raises(pickle.PicklingError, match="REPL, a notebook or python -c"):
        _serialize.dumps_with_fallback(
            workerfuncs.add, by_value=True, find_cloudpickle=no_cloudpickle
        )


def test_cloudpickle_hint_only_for_what_it_would_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if cloudpickle were not installed (a public module, not a private name).
    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    assert _serialize.cloudpickle_hint(pickle.PicklingError()) == (
        _serialize.CLOUDPICKLE_HINT
    )
    assert _serialize.cloudpickle_hint(AttributeError()) == _serialize.CLOUDPICKLE_HINT
    assert _serialize.cloudpickle_hint(TypeError("cannot pickle lock")) == ""


def test_functions_from_main_are_recognised_through_partials() -> None:
    def local() -> None:
        pass

    local.__module__ = "__main__"
    assert _serialize.from_main(local)
    assert _serialize.from_main(functools.partial(functools.partial(local)))
    assert not _serialize.from_main(workerfuncs.add)
    assert not _serialize.from_main(functools.partial(workerfuncs.add, 1))
    assert not _serialize.from_main(42)

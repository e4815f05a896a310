"""The framing of the wire protocol, tested synchronously: no processes, no I/O.

Payloads are made with ``_serialize`` (tested in test_serialize.py), so these
tests also cover large bytes received into the objects themselves.
"""

from __future__ import annotations

import mmap
import pathlib
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triopool import _protocol, _serialize
from triopool._protocol import EOF, NEED_DATA, Decoder, Frame, ProtocolError


def encode(kind: int, obj: object, flags: int = 0) -> bytes:
    payload, buffers = _serialize.dumps(obj)
    return b"".join(
        bytes(piece) for piece in _protocol.encode_frame(kind, payload, buffers, flags)
    )


def drain(decoder: Decoder) -> list[Frame]:
    frames: list[Frame] = []
    while True:
        frame = decoder.next_frame()
        if frame is NEED_DATA or frame is EOF:
            return frames
        assert isinstance(frame, Frame)
        frames.append(frame)


def decode_chunks(chunks: list[bytes]) -> list[tuple[int, int, object]]:
    decoder = Decoder()
    frames: list[Frame] = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        frames.extend(drain(decoder))
    decoder.receive_data(b"")
    frames.extend(drain(decoder))
    assert decoder.next_frame() is EOF
    return [
        (frame.kind, frame.flags, _serialize.loads(frame.payload, frame.buffers))
        for frame in frames
    ]


def split(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p % (len(data) + 1) for p in points})
    chunks, start = [], 0
    for cut in [*cuts, len(data)]:
        chunks.append(data[start:cut])
        start = cut
    return [chunk for chunk in chunks if chunk]


MESSAGES: list[tuple[int, int, object]] = [
    (_protocol.TASK, 0, (len, ("abc",), None)),
    (_protocol.RESULT, _protocol.OVER_MEMORY, 42),
    (_protocol.UP, 0, None),
    (_protocol.RESULT, 0, b"x" * (_serialize.OUT_OF_BAND_THRESHOLD + 3)),
    (_protocol.RESULT, 0, [bytearray(b"y" * 70_000), b"z" * 100_000, "s"]),
    (_protocol.ERROR, 0, ("text" * 20_000, 1.5)),
]
STREAM = b"".join(encode(kind, obj, flags) for kind, flags, obj in MESSAGES)


def test_frames_round_trip_in_one_chunk() -> None:
    assert decode_chunks([STREAM]) == MESSAGES


def test_frames_round_trip_byte_by_byte_at_the_start() -> None:
    head = STREAM[:200]
    chunks = [head[i : i + 1] for i in range(len(head))] + [STREAM[200:]]
    assert decode_chunks(chunks) == MESSAGES


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=30))
def test_frames_round_trip_whatever_the_split(points: list[int]) -> None:
    assert decode_chunks(split(STREAM, points)) == MESSAGES


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.text(max_size=50),
            st.integers(),
            st.binary(min_size=65_536, max_size=70_000),
        ),
        max_size=4,
    ),
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_any_values_round_trip_whatever_the_split(
    values: list[object], points: list[int]
) -> None:
    stream = b"".join(encode(_protocol.RESULT, value) for value in values)
    assert decode_chunks(split(stream, points)) == [
        (_protocol.RESULT, 0, value) for value in values
    ]


def test_every_split_point_of_a_small_stream() -> None:
    stream = encode(_protocol.TASK, ("a", 1)) + encode(_protocol.RESULT, [None])
    for cut in range(len(stream) + 1):
        chunks = [chunk for chunk in (stream[:cut], stream[cut:]) if chunk]
        assert decode_chunks(chunks) == [
            (_protocol.TASK, 0, ("a", 1)),
            (_protocol.RESULT, 0, [None]),
        ]


def test_eof_between_frames_is_eof() -> None:
    decoder = Decoder()
    assert decoder.next_frame() is NEED_DATA
    decoder.receive_data(b"")
    assert decoder.next_frame() is EOF


@pytest.mark.parametrize("cut", [1, 5, 14, 30, -1])
def test_eof_in_mid_frame_is_an_error(cut: int) -> None:
    frame = encode(_protocol.RESULT, b"q" * 100_000)
    decoder = Decoder()
    decoder.receive_data(frame[:cut])
    assert decoder.next_frame() is NEED_DATA
    decoder.receive_data(b"")
    with pytest.raises(ProtocolError, match="middle of a frame"):
        decoder.next_frame()


def test_data_after_eof_is_an_error() -> None:
    decoder = Decoder()
    decoder.receive_data(b"")
    with pytest.raises(ProtocolError, match="after EOF"):
        decoder.receive_data(b"x")


def test_unknown_kind_is_an_error() -> None:
    decoder = Decoder()
    decoder.receive_data(b"\xee" + encode(_protocol.UP, None)[1:])
    with pytest.raises(ProtocolError, match="unknown frame kind 238"):
        decoder.next_frame()


def receive_in_pieces(
    stream: bytes, decoder: Decoder | None = None
) -> tuple[Frame, int]:
    """Decode one frame fed in odd pieces, reading large segments straight
    into :meth:`Decoder.read_target`; also return how many bytes went there."""
    if decoder is None:
        decoder = Decoder()
    decoder.receive_data(stream[:100])
    assert decoder.next_frame() is NEED_DATA
    position = 100
    filled_by_target = 0
    while True:
        target = decoder.read_target()
        if target is None:
            decoder.receive_data(stream[position : position + 1000])
            position += 1000
        else:
            count = min(len(target), 7777, len(stream) - position)
            target[:count] = stream[position : position + count]
            decoder.commit(count)
            position += count
            filled_by_target += count
        frame = decoder.next_frame()
        if frame is not NEED_DATA:
            assert isinstance(frame, Frame)
            return frame, filled_by_target


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_large_bytes_are_received_into_the_object_itself(
    kind: type[bytes | bytearray],
) -> None:
    data = kind(bytes(range(256)) * 1000)  # 256,000 bytes: out of band
    frame, filled_by_target = receive_in_pieces(encode(_protocol.RESULT, data))
    assert filled_by_target > 200_000
    value = _serialize.loads(frame.payload, frame.buffers)
    assert type(value) is kind
    assert value == data
    # The object the decoder received into *is* the result: no copy (a bytes
    # object is built in place on CPython, as C code builds one).
    assert value is frame.buffers[0].obj


def test_bytes_received_without_building_them_in_place() -> None:
    # Where bytes cannot be built in place (not CPython), the buffer is
    # received into a bytearray and copied once into the bytes.
    data = bytes(range(256)) * 1000
    frame, _ = receive_in_pieces(
        encode(_protocol.RESULT, data), Decoder(bytes_in_place=False)
    )
    assert type(frame.buffers[0].obj) is bytearray
    value = _serialize.loads(frame.payload, frame.buffers)
    assert type(value) is bytes
    assert value == data


# Run by the next test in a process of its own: another library's idioms on
# ctypes.pythonapi's shared function objects, before and after the decoder
# first builds bytes in place, must not change where it writes.
OTHER_LIBRARY_SETS_RESTYPES = """
import ctypes
from tests.test_protocol import encode, receive_in_pieces
from triopool import _protocol, _serialize

def received_in_place(data):
    frame, _ = receive_in_pieces(encode(_protocol.RESULT, data))
    value = _serialize.loads(frame.payload, frame.buffers)
    assert value == data
    return value is frame.buffers[0].obj

data = bytes(range(256)) * 1000
api = ctypes.pythonapi
api.PyBytes_AsString.restype = ctypes.c_char_p
print(received_in_place(data))
api.PyMemoryView_FromMemory.restype = ctypes.c_void_p
api.PyBytes_FromStringAndSize.restype = ctypes.c_void_p
print(received_in_place(data))
"""


def test_bytes_built_in_place_whatever_others_set_on_ctypes_pythonapi() -> None:
    pytest.importorskip("ctypes")
    if sys.implementation.name != "cpython":
        pytest.skip("bytes are built in place only on CPython")
    # In a process of its own, so that this test changes nothing shared in
    # the test run's process (the function objects are global to it).
    done = subprocess.run(
        [sys.executable, "-c", OTHER_LIBRARY_SETS_RESTYPES],
        cwd=pathlib.Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"], done.stdout


def test_only_whole_bytes_objects_are_received_as_bytes() -> None:
    data = bytes(range(256)) * 1000
    sent = (data, bytearray(data), memoryview(data)[1:], memoryview(bytearray(data)))
    frame, _ = receive_in_pieces(encode(_protocol.RESULT, sent))
    owners = [type(buffer.obj) for buffer in frame.buffers]
    assert owners == [bytes, bytearray, bytearray, bytearray]
    whole, array, part, view = _serialize.loads(frame.payload, frame.buffers)
    assert (type(whole), type(array)) == (bytes, bytearray)
    assert whole == data
    assert array == data
    array[0] = 255  # still a bytearray of its own
    assert whole[0] == 0
    assert part.readonly
    assert part.tobytes() == data[1:]
    assert not view.readonly
    assert view.tobytes() == data


def test_commit_beyond_the_target_is_an_error() -> None:
    decoder = Decoder()
    with pytest.raises(ProtocolError):
        decoder.commit(1)


def test_small_frames_are_one_piece() -> None:
    payload, buffers = _serialize.dumps((print, (1,), None))
    pieces = _protocol.encode_frame(_protocol.TASK, payload, buffers)
    assert len(pieces) == 1


@pytest.mark.slow
def test_a_frame_larger_than_4_gib() -> None:
    size = (4 << 30) + 3
    # An untouched anonymous mapping reads as zeros without using memory.
    source = mmap.mmap(-1, size)
    source[size - 1] = 7
    source[(4 << 30) + 1] = 9
    payload, buffers = _serialize.dumps(memoryview(source))
    pieces = _protocol.encode_frame(_protocol.RESULT, payload, buffers)
    del payload, buffers
    decoder = Decoder()
    step = 64 << 20
    frame = decoder.next_frame()
    for piece in pieces:
        view = memoryview(piece)
        for start in range(0, len(view), step):
            assert frame is NEED_DATA
            decoder.receive_data(view[start : start + step])
            frame = decoder.next_frame()
        view.release()
    assert isinstance(frame, Frame)
    assert [b.nbytes for b in frame.buffers] == [size]
    value = _serialize.loads(frame.payload, frame.buffers)
    assert len(value) == size
    assert value[size - 1] == 7
    assert value[(4 << 30) + 1] == 9
    assert value[12345] == 0

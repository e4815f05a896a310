"""The wire protocol between the pool and a worker, as a sans-io object.

A stream carries *frames*. A frame is a fixed header, the lengths of its
out-of-band buffers, a main payload and those buffers::

    u8 kind | u8 flags | u32 nbuffers | u64 payload length
    u64 buffer length * nbuffers    (top bit set: the buffer is a bytes object's)
    payload bytes
    buffer bytes, one after the other

Every length is 63 bits, so a frame, or one buffer in it, may exceed 4 GiB.
This module frames bytes and nothing else: what a payload holds is
``_messages``' concern, how objects become payload and buffers ``_serialize``'s.
Buffers are written straight from the memory they come from and read straight
into memory of their own, which becomes the object on the other side: a
``bytearray`` for most buffers and, on CPython, a new ``bytes`` object for a
buffer that holds a whole ``bytes`` object (see ``_bytes_builder``).

:class:`Decoder` is fed whatever chunks the stream delivers (``b""`` is EOF)
and hands out whole :class:`Frame` objects, :data:`NEED_DATA` or :data:`EOF`.
Invariants: it does no I/O and never blocks; EOF in the middle of a frame, an
unknown kind or data after EOF raise :class:`ProtocolError`; a frame is
returned only once all its bytes have arrived.

This module imports only the standard library: the worker imports it.
"""

from __future__ import annotations

import functools
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    import pickle
    from collections.abc import Callable
    from typing import Final

# Frame kinds. Parent -> worker:
# (What each payload holds: see _messages.)
CONFIG: Final = 1  # first frame: the worker's configuration
TASK: Final = 2  # a task: function, arguments, soft time limit
# Worker -> parent:
UP: Final = 3  # the initializer ran; the worker takes tasks
START_FAILED: Final = 4  # the initializer raised
RESULT: Final = 5  # the task's return value
ERROR: Final = 6  # the task raised an Exception
FATAL: Final = 7  # the task raised a BaseException that ends the worker
SERIAL_ERROR: Final = 8  # the task did not unpickle, or its result did not pickle
# Pipelining (see _serve.Service._send_ahead). Parent -> worker:
SKIP: Final = 9  # u64 task number: do not run that task if it has not started
# Worker -> parent, always before the answer of the task it was running:
SKIPPED: Final = 10  # u64 task number: that task was dropped and never ran
# Worker -> parent, at any time (forward_logs=True): a logging record made in
# the worker. Never an answer: the parent handles it and reads on.
LOG: Final = 11
# Worker -> parent, while a chunk of a map that asked for it runs (see
# _chunk.run_chunk_reporting): one item's outcome, in item order, before the
# task's answer. Never an answer: the parent records it and reads on. Its
# flags say what the payload holds (see _messages.part_frame).
PART: Final = 12
_KINDS: Final = frozenset(range(CONFIG, PART + 1))

# Flags on RESULT, ERROR and SERIAL_ERROR frames.
OVER_MEMORY: Final = 1  # the worker's resident memory is above max_memory_per_child
# The worker holds the next task already and has started it. Without this
# flag it holds none, and starts the first task frame it reads next.
AHEAD: Final = 2

#: The payload of SKIP and SKIPPED frames.
TASK_NUMBER: Final = struct.Struct("<Q")

_HEADER: Final = struct.Struct("<BBIQ")
_LENGTH: Final = struct.Struct("<Q")

# Set on a buffer's length: the buffer holds a whole bytes object, and is
# received into a new bytes object when it is large (see _bytes_builder).
_BYTES_BUFFER: Final = 1 << 63

# A segment at least this large that has not fully arrived is received into
# memory of its own (see Decoder.read_target) instead of being accumulated.
_LARGE_SEGMENT: Final = 1 << 16
_COMPACT_AFTER: Final = 1 << 16


class ProtocolError(Exception):
    """The byte stream does not follow the protocol."""


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: Returned by :meth:`Decoder.next_frame` when more bytes are needed.
NEED_DATA: Final = _Sentinel("NEED_DATA")
#: Returned by :meth:`Decoder.next_frame` when the stream ended between frames.
EOF: Final = _Sentinel("EOF")


class Frame:
    """One decoded frame: its kind, flags, main payload and buffers."""

    __slots__ = ("buffers", "flags", "kind", "payload")

    def __init__(
        self,
        kind: int,
        flags: int,
        payload: bytes | bytearray | memoryview,
        buffers: list[memoryview],
    ) -> None:
        self.kind = kind
        self.flags = flags
        self.payload = payload
        self.buffers = buffers

    def __repr__(self) -> str:
        return (
            f"Frame(kind={self.kind}, flags={self.flags}, "
            f"payload={len(self.payload)} bytes, buffers={len(self.buffers)})"
        )


def number_frame(kind: int, number: int) -> bytes:
    """A whole SKIP or SKIPPED frame."""
    return _HEADER.pack(kind, 0, 0, TASK_NUMBER.size) + TASK_NUMBER.pack(number)


def encode_frame(
    kind: int,
    payload: bytes | bytearray | memoryview = b"",
    buffers: list[pickle.PickleBuffer] | tuple[()] = (),
    flags: int = 0,
) -> list[bytes | memoryview]:
    """Return the pieces of one frame, to be written in order.

    Small pieces are joined; buffers are returned as views of their own memory
    so that writing them copies nothing in this process.
    """
    if not buffers:
        # Most frames: no comprehension to run (each costs a call).
        head = _HEADER.pack(kind, flags, 0, len(payload))
        if len(payload) < _LARGE_SEGMENT:
            return [head + payload]
        return [head, memoryview(payload)]
    raws = [buf.raw() for buf in buffers]
    head = _HEADER.pack(kind, flags, len(raws), len(payload))
    head += b"".join([_LENGTH.pack(_buffer_length(raw)) for raw in raws])
    if len(payload) < _LARGE_SEGMENT:
        pieces: list[bytes | memoryview] = [head + payload]
    else:
        pieces = [head, memoryview(payload)]
    pieces.extend(raws)
    return pieces


def _buffer_length(raw: memoryview) -> int:
    owner = raw.obj
    if type(owner) is bytes and raw.nbytes == len(owner):
        return raw.nbytes | _BYTES_BUFFER
    return raw.nbytes


@functools.cache
def _bytes_builder() -> Callable[[int], tuple[bytes, memoryview]] | None:
    """CPython's way to build a bytes object in place, or None elsewhere.

    ``PyBytes_FromStringAndSize(NULL, n)`` returns a new bytes object whose
    contents are left for its creator to fill in before anyone else sees it;
    this is how C code builds one without a copy. A writable view of that
    memory (``PyMemoryView_FromMemory``) is what the pipe is read into, and
    the object is unpickled as is (see ``_serialize._rebuild_bytes``): that saves
    zeroing a ``bytearray`` and copying it into a ``bytes``. Elsewhere a
    bytes object's buffer is received into a bytearray like any other.
    """
    import sys

    if sys.implementation.name != "cpython":
        return None
    try:
        import ctypes
    except ImportError:  # pragma: no cover - CPython built without ctypes
        return None
    # A handle of our own: ctypes.pythonapi's function objects are shared,
    # and code elsewhere may set other argtypes and restype on them.
    api = ctypes.PyDLL(None)
    from_size = api.PyBytes_FromStringAndSize
    from_size.restype = ctypes.py_object
    from_size.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    as_string = api.PyBytes_AsString
    as_string.restype = ctypes.c_void_p
    as_string.argtypes = (ctypes.py_object,)
    from_memory = api.PyMemoryView_FromMemory
    from_memory.restype = ctypes.py_object
    from_memory.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)
    writable = 0x200  # PyBUF_WRITE

    def new_bytes(length: int) -> tuple[bytes, memoryview]:
        value: bytes = from_size(None, length)
        return value, from_memory(as_string(value), length, writable)

    return new_bytes


class Decoder:
    """Turns a byte stream into frames; see the module docstring.

    With ``bytes_in_place=False`` a buffer holding a whole ``bytes`` object
    is received into a ``bytearray`` like any other, as it is on interpreters
    where bytes cannot be built in place (tests use this to cover them).
    """

    __slots__ = (
        "_bytes_in_place",
        "_data",
        "_eof",
        "_filled",
        "_flags",
        "_kind",
        "_lengths",
        "_nbuffers",
        "_pos",
        "_segments",
        "_target",
        "_view",
    )

    def __init__(self, *, bytes_in_place: bool = True) -> None:
        self._bytes_in_place = bytes_in_place
        self._data = bytearray()
        self._pos = 0
        self._eof = False
        self._kind = 0  # 0: waiting for a header
        self._flags = 0
        self._nbuffers = 0
        self._lengths: list[int] = []
        self._segments: list[memoryview] = []
        # The large segment being received: the object that becomes the
        # segment, and a writable view of its memory (see read_target).
        self._target: bytes | bytearray | None = None
        self._view: memoryview | None = None
        self._filled = 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the stream; ``b""`` means the stream ended."""
        if self._eof:
            raise ProtocolError("received data after EOF")
        if not data:
            self._eof = True
            return
        target = self._view
        if target is not None:
            view = memoryview(data)
            n = min(len(view), len(target) - self._filled)
            target[self._filled : self._filled + n] = view[:n]
            self._filled += n
            if n < len(view):
                self._data += view[n:]
        else:
            self._data += data

    def buffered(self) -> bool:
        """Whether bytes of the stream are held that no frame has taken."""
        return self._kind != 0 or self._pos < len(self._data)

    def read_target(self) -> memoryview | None:
        """Memory the next bytes of the stream belong in, or ``None``.

        While a large segment is arriving, the caller may read from the stream
        straight into this view (``os.readv``) and then call :meth:`commit`,
        instead of :meth:`receive_data`, to save a copy.
        """
        if self._view is None:
            return None
        return self._view[self._filled :]

    def commit(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written into :meth:`read_target`."""
        if self._view is None or self._filled + nbytes > len(self._view):
            raise ProtocolError("commit() beyond the read target")
        self._filled += nbytes

    def next_frame(self) -> Frame | _Sentinel:
        """Return the next whole frame, :data:`NEED_DATA` or :data:`EOF`."""
        data = self._data
        if self._kind == 0:
            if len(data) - self._pos < _HEADER.size:
                return self._need_data()
            kind, flags, nbuffers, length = _HEADER.unpack_from(data, self._pos)
            if kind not in _KINDS:
                raise ProtocolError(f"unknown frame kind {kind}")
            self._pos += _HEADER.size
            self._kind = kind
            self._flags = flags
            self._nbuffers = nbuffers
            self._lengths = [length]
        if len(self._lengths) <= self._nbuffers:
            size = _LENGTH.size * self._nbuffers
            if len(data) - self._pos < size:
                return self._need_data()
            self._lengths.extend(
                struct.unpack_from(f"<{self._nbuffers}Q", data, self._pos)
            )
            self._pos += size
        segments = self._segments
        while len(segments) < len(self._lengths):
            target = self._target
            if target is not None:
                if self._filled < len(target):
                    return self._need_data()
                segments.append(memoryview(target))
                self._target = self._view = None
                continue
            length = self._lengths[len(segments)]
            whole_bytes = length & _BYTES_BUFFER
            length &= ~_BYTES_BUFFER
            available = len(data) - self._pos
            if available >= length:
                segments.append(memoryview(data[self._pos : self._pos + length]))
                self._pos += length
            elif length >= _LARGE_SEGMENT:
                new_bytes = (
                    _bytes_builder() if whole_bytes and self._bytes_in_place else None
                )
                if new_bytes is not None:
                    target, view = new_bytes(length)
                else:
                    target = bytearray(length)
                    view = memoryview(target)
                view[:available] = data[self._pos :]
                self._pos = len(data)
                self._target = target
                self._view = view
                self._filled = available
            else:
                return self._need_data()
        frame = Frame(self._kind, self._flags, segments[0], segments[1:])
        self._kind = 0
        self._segments = []
        if self._pos == len(data):
            data.clear()
            self._pos = 0
        elif self._pos >= _COMPACT_AFTER:
            del data[: self._pos]
            self._pos = 0
        return frame

    def _need_data(self) -> _Sentinel:
        if not self._eof:
            return NEED_DATA
        if self._kind or self._pos < len(self._data):
            raise ProtocolError("the stream ended in the middle of a frame")
        return EOF

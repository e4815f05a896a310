"""The wire protocol between the pool and a worker, as a sans-io object.

A stream carries *frames*. A frame is a fixed header, the lengths of its
out-of-band buffers, a main payload and those buffers::

    u8 kind | u8 flags | u32 nbuffers | u64 payload length
    u64 buffer length * nbuffers    (top bit set: the buffer is a bytes object's)
    payload bytes
    buffer bytes, one after the other

Every length is 63 bits, so a frame, or one buffer in it, may exceed 4 GiB.
Payloads are pickles (protocol 5); large ``bytes``, ``bytearray`` and
``memoryview`` objects inside them travel out of band, as buffers that are
written straight from the object's memory and read straight into the memory
that becomes the object on the other side: a ``bytearray`` for most buffers
and, on CPython, a new ``bytes`` object for a ``bytes`` object's buffer (see
``_bytes_builder``).

:class:`Decoder` is fed whatever chunks the stream delivers (``b""`` is EOF)
and hands out whole :class:`Frame` objects, :data:`NEED_DATA` or :data:`EOF`.
Invariants: it does no I/O and never blocks; EOF in the middle of a frame, an
unknown kind or data after EOF raise :class:`ProtocolError`; a frame is
returned only once all its bytes have arrived.

This module imports only the standard library: the worker imports it.
"""

from __future__ import annotations

import functools
import io
import pickle
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final

    Buffer = bytes | bytearray | memoryview | pickle.PickleBuffer

# Frame kinds. Parent -> worker:
CONFIG: Final = 1  # first frame: plain-data dict (sys.path, main module, initializer)
TASK: Final = 2  # pickle of (fn, args, soft_time_limit)
# Worker -> parent:
UP: Final = 3  # the initializer ran; the worker takes tasks
START_FAILED: Final = 4  # pickle of (type name, message, traceback text)
RESULT: Final = 5  # pickle of the task's return value
ERROR: Final = 6  # pickle of (exception pickle or None, type name, message, traceback)
FATAL: Final = 7  # like ERROR, for a BaseException that ends the worker
SERIAL_ERROR: Final = 8  # pickle of ("the task" or "the result", *what ERROR holds)
# Pipelining (see Pool._send_ahead). Parent -> worker:
SKIP: Final = 9  # u64 task number: do not run that task if it has not started
# Worker -> parent, always before the answer of the task it was running:
SKIPPED: Final = 10  # u64 task number: that task was dropped and never ran
_KINDS: Final = frozenset(range(CONFIG, SKIPPED + 1))

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

#: Objects at least this large travel out of band.
OUT_OF_BAND_THRESHOLD: Final = 1 << 16
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
    raws = [buf.raw() for buf in buffers]
    head = _HEADER.pack(kind, flags, len(raws), len(payload))
    if raws:
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
    the object is unpickled as is (see ``_rebuild_bytes``): that saves
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
    """Turns a byte stream into frames; see the module docstring."""

    __slots__ = (
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

    def __init__(self) -> None:
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
                new_bytes = _bytes_builder() if whole_bytes else None
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


# Pickling with out-of-band buffers.


def _rebuild_bytes(buffer: memoryview | bytes) -> bytes:
    # A large one was received into a bytes object of its own (see
    # Decoder.next_frame): when this view covers all of it, it is the object.
    if type(buffer) is memoryview:
        owner = buffer.obj
        if type(owner) is bytes and buffer.nbytes == len(owner):
            return owner
    return bytes(buffer)


def _rebuild_bytearray(buffer: memoryview | bytearray) -> bytearray:
    # The decoder receives each large buffer into a bytearray of its own; when
    # this view covers all of one, that bytearray *is* the object: no copy.
    if isinstance(buffer, memoryview):
        owner = buffer.obj
        if type(owner) is bytearray and buffer.nbytes == len(owner):
            return owner
    return bytearray(buffer)


def _rebuild_memoryview(
    buffer: memoryview | bytes, fmt: str, shape: tuple[int, ...], readonly: bool
) -> memoryview:
    view = memoryview(buffer)
    if view.readonly and not readonly:
        view = memoryview(bytearray(view))
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if fmt != "B" or len(shape) != 1:
        view = view.cast(fmt, shape)  # type: ignore[call-overload]
    return view.toreadonly() if readonly else view


class _OutOfBand:
    """Stands in for a large bytes or bytearray while it is pickled."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray) -> None:
        self.value = value


# The C pickler handles bytes and bytearray itself, before it would ask
# reducer_override, so large ones are swapped for _OutOfBand stand-ins first.
# Only the top of the object is searched (a task's arguments and what they
# directly hold, a result and what it directly holds) and only small containers,
# so the search costs next to nothing; deeper data travels in band, by copy.
_SEARCH_DEPTH: Final = 3
_SEARCH_WIDTH: Final = 32


# Types that never hold a large bytes object: skipped without a call.
_ATOMIC: Final = frozenset({int, float, str, bool, type(None)})


def _swap_large(obj: Any, depth: int) -> Any:
    cls = type(obj)
    if cls is bytes or cls is bytearray:
        return _OutOfBand(obj) if len(obj) >= OUT_OF_BAND_THRESHOLD else obj
    if not depth:
        return obj
    if cls is tuple or cls is list:
        if len(obj) > _SEARCH_WIDTH:
            return obj
        # Copied only once something in it was swapped (rarely): a task's
        # (fn, args, limit) tuple is searched on every call.
        items: list[Any] | None = None
        for index, item in enumerate(obj):
            if type(item) in _ATOMIC:
                continue
            new = _swap_large(item, depth - 1)
            if new is not item:
                if items is None:
                    items = list(obj)
                items[index] = new
        if items is None:
            return obj
        return tuple(items) if cls is tuple else items
    if cls is dict:
        if len(obj) > _SEARCH_WIDTH:
            return obj
        changed = {}
        for key, value in obj.items():
            new = _swap_large(value, depth - 1)
            if new is not value:
                changed[key] = new
        return {**obj, **changed} if changed else obj
    return obj


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: object) -> Any:
        cls = type(obj)
        if cls is _OutOfBand:
            value = obj.value  # type: ignore[attr-defined]
            rebuild = _rebuild_bytes if type(value) is bytes else _rebuild_bytearray
            return rebuild, (pickle.PickleBuffer(value),)
        if cls is memoryview:
            view: memoryview = obj  # type: ignore[assignment]
            args = (view.format, view.shape, view.readonly)
            if view.nbytes >= OUT_OF_BAND_THRESHOLD and view.c_contiguous:
                return _rebuild_memoryview, (pickle.PickleBuffer(view), *args)
            return _rebuild_memoryview, (view.tobytes(), *args)
        return NotImplemented


def dumps(obj: object) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj``; large bytes-like objects become out-of-band buffers.

    Large ``bytes`` and ``bytearray`` objects are found near the top of
    ``obj`` (see ``_swap_large``); ``memoryview`` objects and objects that
    offer pickle buffers themselves (NumPy arrays) anywhere.
    """
    buffers: list[pickle.PickleBuffer] = []
    swapped = _swap_large(obj, _SEARCH_DEPTH)
    if swapped is obj:
        # Nothing to swap: the plain C pickler is three times faster than a
        # subclass with reducer_override. It refuses memoryview objects, which
        # only _Pickler sends; anything else it refuses, _Pickler refuses too.
        try:
            return pickle.dumps(obj, 5, buffer_callback=buffers.append), buffers
        except TypeError:
            buffers.clear()
    out = io.BytesIO()
    _Pickler(out, 5, buffer_callback=buffers.append).dump(swapped)
    return out.getvalue(), buffers


def dumps_with_fallback(
    obj: object, *, by_value: bool = False
) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """:func:`dumps`, or cloudpickle for what plain pickle cannot send.

    Plain pickle is tried first, so what it can send costs what it always did.
    If it fails, or with ``by_value`` (for functions of a ``__main__`` the
    worker cannot import, such as a REPL's), cloudpickle is used when it is
    installed: it sends lambdas, closures and such functions by value. Its
    output unpickles with plain :func:`pickle.loads` wherever cloudpickle is
    importable.
    """
    if not by_value:
        try:
            return dumps(obj)
        except Exception as exc:
            cloudpickle = _cloudpickle()
            if cloudpickle is None:
                raise
            error: Exception = exc
    else:
        cloudpickle = _cloudpickle()
        if cloudpickle is None:
            raise pickle.PicklingError(
                "the function comes from a __main__ module the workers cannot "
                "import (a REPL, a notebook or python -c)"
            )
    buffers: list[pickle.PickleBuffer] = []
    try:
        payload: bytes = cloudpickle.dumps(
            obj, protocol=5, buffer_callback=buffers.append
        )
    except Exception as exc:
        if not by_value:
            exc.__context__ = error
        raise
    return payload, buffers


def _cloudpickle() -> Any:
    """The cloudpickle module, or ``None`` if it is not installed."""
    import importlib

    try:
        return importlib.import_module("cloudpickle")
    except ImportError:
        return None


#: Appended to pickling errors that cloudpickle would have avoided.
CLOUDPICKLE_HINT: Final = (
    "; to send lambdas, closures and functions defined in a REPL or notebook, "
    "install cloudpickle: pip install cloudpickle"
)


def cloudpickle_hint(exc: BaseException) -> str:
    """:data:`CLOUDPICKLE_HINT` if cloudpickle is missing and could have helped.

    Plain pickle sends functions and classes by reference (module and name);
    when that lookup fails it raises :class:`pickle.PicklingError` or
    :class:`AttributeError` ("Can't pickle local object"). Other errors, such
    as a lock in the arguments, cloudpickle cannot fix either.
    """
    if (
        isinstance(exc, pickle.PicklingError | AttributeError)
        and _cloudpickle() is None
    ):
        return CLOUDPICKLE_HINT
    return ""


def loads(
    payload: bytes | bytearray | memoryview,
    buffers: list[memoryview],
    unpickler: Callable[..., pickle.Unpickler] | None = None,
) -> Any:
    """Unpickle what :func:`dumps` produced, given the frame's buffers."""
    if unpickler is None:
        return pickle.loads(payload, buffers=buffers)
    return unpickler(io.BytesIO(payload), buffers=buffers).load()

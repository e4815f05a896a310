"""Pickling for the wire: protocol 5 with out-of-band buffers, and cloudpickle.

:func:`dumps` turns an object into a main pickle and a list of out-of-band
buffers, which :func:`~triopool._protocol.encode_frame` writes straight from
the objects' memory; :func:`loads` turns a frame's payload and buffers back
into the object. Large ``bytes``, ``bytearray`` and ``memoryview`` objects
travel out of band; on the receiving side the object is the memory the frame
was read into (a ``bytearray``, or on CPython a ``bytes`` object built in
place: see ``_protocol._bytes_builder``), so a large value is never copied
after it left the pipe.

:func:`dumps_with_fallback` adds cloudpickle, when it is installed, for what
plain pickle cannot send (lambdas, closures, functions of a ``__main__`` the
workers cannot import: :func:`from_main`); :func:`cloudpickle_hint` says how to
get it when it would have helped.

Invariants: plain pickle is always tried first, so what it can send never
costs a cloudpickle import; cloudpickle's output unpickles with plain
:func:`pickle.loads`. This module imports only the standard library: the
worker imports it.
"""

from __future__ import annotations

import functools
import io
import pickle

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final

#: Objects at least this large travel out of band.
OUT_OF_BAND_THRESHOLD: Final = 1 << 16


def _rebuild_bytes(buffer: memoryview | bytes) -> bytes:
    # A large one was received into a bytes object of its own (see
    # _protocol.Decoder.next_frame): when this view covers all of it, it is
    # the object.
    if type(buffer) is memoryview:
        owner = buffer.obj
        if type(owner) is bytes and buffer.nbytes == len(owner):
            return owner
    return bytes(buffer)


def _rebuild_bytearray(buffer: memoryview | bytearray) -> bytearray:
    # _protocol.Decoder receives each large buffer into a bytearray of its
    # own; when this view covers all of one, that bytearray *is* the object:
    # no copy.
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


def _cloudpickle() -> Any:
    """The cloudpickle module, or ``None`` if it is not installed."""
    import importlib

    try:
        return importlib.import_module("cloudpickle")
    except ImportError:
        return None


def dumps_with_fallback(
    obj: object,
    *,
    by_value: bool = False,
    find_cloudpickle: Callable[[], Any] = _cloudpickle,
) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """:func:`dumps`, or cloudpickle for what plain pickle cannot send.

    Plain pickle is tried first, so what it can send costs what it always did.
    If it fails, or with ``by_value`` (for functions of a ``__main__`` the
    worker cannot import, such as a REPL's), cloudpickle is used when it is
    installed: it sends lambdas, closures and such functions by value. Its
    output unpickles with plain :func:`pickle.loads` wherever cloudpickle is
    importable.

    ``find_cloudpickle`` returns the cloudpickle module or ``None`` (by
    default, it imports it). Tests pass their own to see when it is asked
    for, or to act as if it were not installed.
    """
    if not by_value:
        try:
            return dumps(obj)
        except Exception as exc:
            cloudpickle = find_cloudpickle()
            if cloudpickle is None:
                raise
            error: Exception = exc
    else:
        cloudpickle = find_cloudpickle()
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


def from_main(fn: object) -> bool:
    """Whether ``fn`` (or the function of a partial) comes from ``__main__``.

    Such a function pickles by reference (``__main__.name``), which a worker
    resolves only if it can import the parent's main module again; when it
    cannot (a REPL, a notebook, ``python -c``), the function must go by value
    (``dumps_with_fallback(..., by_value=True)``).
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__module__", None) == "__main__"

"""Data put once: :class:`Handle`, and how a worker gets the object behind one.

``await pool.put(obj)`` stores ``obj`` once and returns a :class:`Handle`; a
task given the handle receives ``obj``. Where the object waits depends on the
pool: the local pool pickles it once into a file of its own (see ``_store``),
a cluster pool holds the engine's reference (a Ray ``ObjectRef``, a Dask
``Future``) and lets the engine resolve it (see ``_refs``).

In a local worker, a handle unpickles as its object: :func:`load` reads the
file the first time, and keeps the object by the handle's key, so every later
task on that worker gets the same object without reading anything. A new
handle's first load forgets the objects whose files are gone (released, or
their pool closed).

Invariants: this module imports only the standard library (a worker imports
it when it first unpickles a handle); outside a worker a handle unpickles as
an equal handle; the file format written by ``_store`` is read only here.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Generic, TypeVar

from . import _inside, _serialize

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = ["Handle"]

# Covariant: a handle only gives its object out (a Handle[bool] is a
# Handle[int]).
T_co = TypeVar("T_co", covariant=True)

#: A put object's file: this magic, the buffer count, the pickle's length,
#: each out-of-band buffer's length; then the pickle and the buffers.
MAGIC = b"TPH1"
HEADER = struct.Struct("<4sIQ")


class Handle(Generic[T_co]):
    """A reference to an object stored once by :meth:`Pool.put`.

    Pass it to :meth:`Pool.run_sync` (as an argument), to :meth:`Pool.map`
    and :meth:`Pool.imap` (as an item, or an argument of a
    :func:`functools.partial` given as ``fn``): the task receives the object
    itself, and the object crossed to each worker (or engine node) once, not
    once per task.

    A handle is immutable, compares by its key, and pickles. It is valid
    until :meth:`Pool.release` or the end of the pool's block.

    Attributes:
        key: A name unique to this put.
        nbytes: The size of the pickled object in bytes (the local pool), or
            ``None`` where the engine keeps it (Ray, Dask).
    """

    __slots__ = ("_ref", "key", "nbytes")

    key: str
    nbytes: int | None
    _ref: object

    def __init__(self, key: str, nbytes: int | None, ref: object) -> None:
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "nbytes", nbytes)
        object.__setattr__(self, "_ref", ref)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"Handle is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"Handle is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Handle:
            return NotImplemented
        return self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Handle(key={self.key!r}, nbytes={self.nbytes!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_resolve, (self.key, self.nbytes, self._ref))


def ref_of(handle: Handle[Any]) -> object:
    """What the pool that made ``handle`` keeps for it: the file's path (the
    local pool) or the engine's reference."""
    return handle._ref


def _in_worker() -> bool:
    state = _inside._state
    return state is not None and state.pid == os.getpid()


def _resolve(key: str, nbytes: int | None, ref: object) -> Any:
    """Unpickle a handle: its object in a local worker, else the handle."""
    if _in_worker():
        if type(ref) is str:
            return load(key, ref)
        raise LookupError(
            f"the handle {key!r} was put by a cluster pool (Ray or Dask), "
            "not by the local pool running this task: put the object with "
            "the pool that runs the task"
        )
    return Handle(key, nbytes, ref)


# The objects this worker loaded, by handle key, and their files.
_cache: dict[str, Any] = {}
_paths: dict[str, str] = {}


def load(key: str, path: str) -> Any:
    """The object put under ``key``, read from ``path`` the first time."""
    try:
        return _cache[key]
    except KeyError:
        pass
    _forget_gone()
    try:
        value = read(path)
    except FileNotFoundError:
        raise LookupError(
            f"the object of the handle {key!r} is gone: the handle was "
            "released (pool.release) or its pool closed before this task "
            "started; release a handle only once the calls that use it have "
            "finished"
        ) from None
    _cache[key] = value
    _paths[key] = path
    return value


def _forget_gone() -> None:
    """Drop the objects whose files were removed: released handles."""
    for key, path in list(_paths.items()):
        if not os.path.exists(path):
            del _paths[key]
            del _cache[key]


def read(path: str) -> Any:
    """Unpickle the object in a file written by ``_store``."""
    with open(path, "rb", buffering=0) as file:
        magic, count, size = HEADER.unpack(_read_exactly(file, HEADER.size))
        if magic != MAGIC:
            raise ValueError(f"{path} is not a file of triopool's put()")
        sizes = struct.unpack(f"<{count}Q", _read_exactly(file, 8 * count))
        payload = _read_exactly(file, size)
        # Each buffer in a bytes object of its own: a large bytes value is
        # then that object, not a copy of it (see _serialize._rebuild_bytes).
        buffers = [memoryview(_read_exactly(file, n)) for n in sizes]
    return _serialize.loads(payload, buffers)


def _read_exactly(file: Any, size: int) -> bytes:
    data: bytes = file.read(size)
    if len(data) == size:
        return data
    # A short read (a huge object): gather the rest.
    parts = [data]
    got = len(data)
    while got < size:
        more = file.read(size - got)
        if not more:
            raise EOFError("a put() file ended early")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


Handle.__module__ = "triopool"

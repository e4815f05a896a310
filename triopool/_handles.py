"""A pool's live handles: what ``put`` and ``release`` do on each scheduler.

:class:`LocalHandles` keeps put objects in files (``_store``), which workers
read once each; :class:`ClusterHandles` keeps the engine's references (a Ray
``ObjectRef``, a Dask ``Future``) and, for every call, lifts handles and
references given as arguments to where the engine resolves them (``_refs``).

Invariants: a handle is live from ``put`` until ``release`` or the pool's
end; ``put`` and ``release`` name a bad argument (not a handle; a handle of
another pool, or released) in a :class:`TypeError`/:class:`ValueError`; the
object is pickled or sent in a worker thread, so a large one never stalls
the Trio loop.
"""

from __future__ import annotations

import itertools
import uuid
from typing import TYPE_CHECKING, Any

import trio

from . import _refs
from ._handle import Handle
from ._store import Store, StoreClosed

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._backend import Backend

__all__ = ["ClusterHandles", "LocalHandles"]


def _check_handle(handle: object) -> Handle[Any]:
    if not isinstance(handle, Handle):
        raise TypeError(
            f"release() needs a triopool.Handle returned by pool.put(), got {handle!r}"
        )
    return handle


def _unknown(handle: Handle[Any]) -> ValueError:
    return ValueError(
        f"{handle!r} is not a live handle of this pool: it was released "
        "already, or put by another pool; put the object again with this pool"
    )


def _closed() -> trio.ClosedResourceError:
    return trio.ClosedResourceError("the pool is closed: put() needs an open pool")


class LocalHandles:
    """The local pool's handles: one file per put object."""

    def __init__(self, store: Store | None = None) -> None:
        self._store = store if store is not None else Store()

    async def put(self, obj: object, check_usable: Callable[[], None]) -> Handle[Any]:
        try:
            handle = await trio.to_thread.run_sync(self._store.put, obj)
        except StoreClosed:
            raise _closed() from None
        except OSError:
            # The pool closed while the file was written (its directory is
            # gone): say that, not which file was missing.
            check_usable()
            raise
        try:
            check_usable()
        except BaseException:
            self._store.release(handle)  # closed while it was written
            raise
        return handle

    def release(self, handle: object) -> None:
        if not self._store.release(_check_handle(handle)):
            raise _unknown(handle)  # type: ignore[arg-type]

    def close(self) -> None:
        self._store.close()


class ClusterHandles:
    """A cluster pool's handles: the engine's references to put objects."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._token = uuid.uuid4().hex[:12]
        self._numbers = itertools.count(1)
        self._live: dict[str, object] = {}
        # The backend's is_ref, once it can put (see Backend).
        self._is_ref: Callable[[object], bool] | None = getattr(backend, "is_ref", None)
        # A backend whose tasks fetch put objects themselves, once per worker
        # process (see _refs.Cached): a module-level function, pickled by
        # name.
        self._fetch: Callable[[object], Any] | None = getattr(backend, "fetch", None)

    async def put(self, obj: object, check_usable: Callable[[], None]) -> Handle[Any]:
        put: Callable[[object], object] | None = getattr(self._backend, "put", None)
        if put is None:
            raise NotImplementedError(
                f"{self._backend.name} cannot put objects: pass the object to "
                "run_sync itself"
            )
        ref = await trio.to_thread.run_sync(put, obj)
        try:
            check_usable()
        except BaseException:
            self._drop(ref)
            raise
        key = f"triopool-{self._token}-{next(self._numbers)}"
        self._live[key] = ref
        return Handle(key, None, ref)

    def release(self, handle: object) -> None:
        checked = _check_handle(handle)
        if checked.key not in self._live:
            raise _unknown(checked)
        self._drop(self._live.pop(checked.key))

    def _drop(self, ref: object) -> None:
        release: Callable[[object], None] | None = getattr(
            self._backend, "release", None
        )
        if release is not None:
            release(ref)

    def lift(
        self, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """The call, with handles and engine references where the engine
        resolves them; raise for a handle this pool does not hold."""
        return _refs.lift(fn, args, self._ref_of)

    def _ref_of(self, obj: object) -> object | None:
        if type(obj) is Handle:
            # By key: a handle that went through pickle holds a copy of the
            # engine's reference, and the key names its pool.
            ref = self._live.get(obj.key)
            if ref is None:
                raise _unknown(obj)
            if self._fetch is not None:
                return _refs.Cached(obj.key, ref, self._fetch)
            return ref
        is_ref = self._is_ref
        if is_ref is not None and is_ref(obj):
            return obj
        return None

    def close(self) -> None:
        """Forget every handle (the engine frees what it holds for them)."""
        live = list(self._live.values())
        self._live.clear()
        for ref in live:
            try:
                self._drop(ref)
            except Exception:
                pass  # the engine is going; nothing more to free

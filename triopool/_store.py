"""Where the local pool keeps the objects given to ``put``: one file each.

:meth:`Store.put` pickles an object once (protocol 5; large bytes-like
objects are written straight from their memory, as out-of-band buffers) into
a file in a directory private to the pool, and returns a
:class:`~triopool.Handle` naming that file. Workers read it once each (see
``_handle``). The directory is on ``/dev/shm`` (memory) when it exists and
has room for the file, else in the system's temporary directory.

A pool whose process was killed (SIGKILL) leaves its directory behind; the
next store to make a directory in the same place removes those of processes
that no longer exist.

Invariants: a file exists from the moment its handle is returned until
:meth:`Store.release` of that handle or :meth:`Store.close`; ``close`` removes
every file and directory the store made, and after it ``put`` refuses. The
methods are thread-safe: ``put`` runs in a worker thread. This module imports
only the standard library.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import uuid
from typing import TYPE_CHECKING, Any

from . import _handle, _serialize
from ._errors import SerializationError
from ._handle import Handle

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["Store", "StoreClosed"]

SHM = "/dev/shm"
# Room left free on /dev/shm besides the file: it is memory others use too.
_SHM_MARGIN = 256 << 20


class StoreClosed(Exception):
    """The store is closed: its pool has ended."""


class Store:
    """The files of one local pool's put objects."""

    def __init__(self, shm: str | None = SHM) -> None:
        self._shm = shm
        self._token = uuid.uuid4().hex[:12]
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._dirs: dict[str, str] = {}  # base directory -> our directory in it
        self._live: dict[str, str] = {}  # handle key -> path
        self._closed = False

    def put(self, obj: object) -> Handle[Any]:
        """Pickle ``obj`` into a file of its own; its handle. Blocking."""
        try:
            payload, buffers = _serialize.dumps_with_fallback(obj)
        except Exception as exc:
            raise SerializationError(
                f"could not pickle the object given to put(): "
                f"{type(exc).__name__}: {exc}{_serialize.cloudpickle_hint(exc)}"
            ) from exc
        raws = [buffer.raw() for buffer in buffers]
        header = _handle.HEADER.pack(_handle.MAGIC, len(raws), len(payload))
        sizes = b"".join(raw.nbytes.to_bytes(8, "little") for raw in raws)
        nbytes = len(header) + len(sizes) + len(payload) + sum(r.nbytes for r in raws)
        with self._lock:
            if self._closed:
                raise StoreClosed
            key = f"triopool-{self._token}-{next(self._numbers)}"
            directory = self._directory(nbytes)
            path = os.path.join(directory, key)
            # Listed before it is written: close() removes it whatever happens.
            self._live[key] = path
        try:
            with open(path, "xb") as file:
                _write(file, (header, sizes, payload, *raws))
        except BaseException:
            self.release_key(key)
            raise
        return Handle(key, nbytes, path)

    def _directory(self, nbytes: int) -> str:
        """Our directory for a file of ``nbytes``: on /dev/shm if it has room."""
        base = tempfile.gettempdir()
        shm = self._shm
        if shm is not None and os.path.isdir(shm) and os.access(shm, os.W_OK):
            try:
                stat = os.statvfs(shm)
            except OSError:
                pass
            else:
                if stat.f_bavail * stat.f_frsize >= nbytes + _SHM_MARGIN:
                    base = shm
        directory = self._dirs.get(base)
        if directory is None:
            _sweep(base)
            directory = tempfile.mkdtemp(prefix=f"triopool-{os.getpid()}-", dir=base)
            self._dirs[base] = directory
        return directory

    def knows(self, handle: Handle[Any]) -> bool:
        """Whether ``handle`` is one of this store's live handles."""
        return self._live.get(handle.key) == _handle.ref_of(handle)

    def release(self, handle: Handle[Any]) -> bool:
        """Remove the handle's file; ``False`` if it is not one of ours (any
        more)."""
        if not self.knows(handle):
            return False
        self.release_key(handle.key)
        return True

    def release_key(self, key: str) -> None:
        with self._lock:
            path = self._live.pop(key, None)
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    @property
    def directories(self) -> tuple[str, ...]:
        """The directories the store made (for tests and messages)."""
        return tuple(self._dirs.values())

    def close(self) -> None:
        """Remove every file and directory; ``put`` refuses from now on."""
        with self._lock:
            self._closed = True
            self._live.clear()
            directories = list(self._dirs.values())
            self._dirs.clear()
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)


def _sweep(base: str) -> None:
    """Remove what pools of dead processes left in ``base``: a process killed
    (SIGKILL) never reached its pool's close. Only our own user's
    directories, named ``triopool-<pid>-...``, whose process is gone."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    uid = os.getuid() if hasattr(os, "getuid") else None
    for name in names:
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != "triopool" or not parts[1].isdigit():
            continue
        path = os.path.join(base, name)
        try:
            if uid is not None and os.stat(path).st_uid != uid:
                continue
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue  # alive (maybe another user's), or not ours to look at


def _write(file: Any, pieces: Iterable[bytes | memoryview]) -> None:
    for piece in pieces:
        file.write(piece)

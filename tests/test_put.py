"""pool.put() on the local pool: files, once per worker, lifetimes.

The behaviour common to every engine is in test_conformance.py; here, what
only the local pool does: the object crosses to each worker once, its file
lives while its handle does, and nothing of it is left after the pool.
"""

from __future__ import annotations

import functools
import glob
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import typing
from collections import defaultdict

import pytest
import trio

import triopool
from triopool import _handle, _refs
from triopool._store import Store, StoreClosed

from . import handlefuncs

if typing.TYPE_CHECKING:
    from pathlib import Path

BLOB = os.urandom(1 << 20)


def files_of(handle: triopool.Handle[object]) -> list[str]:
    """The files holding ``handle``'s object, wherever a pool of this process
    may have put them."""
    found = []
    for base in ("/dev/shm", tempfile.gettempdir()):
        found += glob.glob(os.path.join(base, f"triopool-{os.getpid()}-*", handle.key))
    return found


def any_exists(paths: set[str]) -> bool:
    return any(os.path.exists(path) for path in paths)


async def test_the_object_crosses_to_each_worker_once() -> None:
    with trio.fail_after(60):
        async with triopool.open_pool(2) as pool:
            handle = await pool.put(BLOB)
            seen: list[tuple[int, int, int]] = []

            async def use() -> None:
                seen.append(await pool.run_sync(handlefuncs.where_is, handle))

            async with trio.open_nursery() as nursery:
                for _ in range(30):
                    nursery.start_soon(use)
    ids = defaultdict(set)
    for pid, ident, size in seen:
        assert size == len(BLOB)
        ids[pid].add(ident)
    # Every task on a worker got the same object: loaded once, then kept
    # (where_is keeps each one alive, so a reload could not reuse an id).
    assert len(seen) == 30
    assert all(len(idents) == 1 for idents in ids.values()), ids


async def test_files_live_with_their_handles_and_go_with_the_pool() -> None:
    with trio.fail_after(60):
        async with triopool.open_pool(1) as pool:
            first = await pool.put(BLOB)
            second = await pool.put([1, 2, 3])
            assert len(files_of(first)) == 1
            assert len(files_of(second)) == 1
            assert first.nbytes is not None
            assert first.nbytes > len(BLOB)
            directories = {os.path.dirname(path) for path in files_of(first)}
            pool.release(first)
            assert files_of(first) == []
            assert await pool.run_sync(handlefuncs.length, second) == 3
        assert files_of(second) == []
        assert not any_exists(directories)


async def test_a_released_handle_names_itself_in_the_task_error() -> None:
    with trio.fail_after(60):
        async with triopool.open_pool(1) as pool:
            handle = await pool.put(BLOB)
            pool.release(handle)
            # The parent does not look into arguments (that would cost every
            # call): the worker finds the object gone, and says which.
            with pytest.raises(triopool.SerializationError) as info:
                await pool.run_sync(len, typing.cast("bytes", handle))
            assert handle.key in str(info.value)
            # The pool goes on.
            assert await pool.run_sync(len, b"abc") == 3


async def test_a_handle_of_another_pool_is_refused() -> None:
    with trio.fail_after(60):
        async with triopool.open_pool(1) as one, triopool.open_pool(1) as other:
            handle = await one.put(b"data")
            with pytest.raises(ValueError, match="not a live handle"):
                other.release(handle)
            one.release(handle)


async def test_put_of_what_does_not_pickle_names_it() -> None:
    with trio.fail_after(60):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.SerializationError, match=r"put\(\)"):
                await pool.put(threading.Lock())


def test_a_handle_is_a_value() -> None:
    handle: triopool.Handle[bytes] = triopool.Handle("k-1", 10, "/nowhere/k-1")
    copy = pickle.loads(pickle.dumps(handle))
    # Outside a worker a handle unpickles as an equal handle.
    assert type(copy) is triopool.Handle
    assert copy == handle
    assert hash(copy) == hash(handle)
    assert copy != triopool.Handle("k-2", 10, "/nowhere/k-2")
    assert repr(handle) == "Handle(key='k-1', nbytes=10)"
    with pytest.raises(AttributeError):
        handle.key = "other"
    assert triopool.Handle.__module__ == "triopool"


def test_the_store_uses_the_temporary_directory_without_shm() -> None:
    store = Store(shm=None)
    try:
        handle = store.put({"big": BLOB, "view": memoryview(BLOB)[:100]})
        path = _handle.ref_of(handle)
        assert isinstance(path, str)
        assert os.path.dirname(os.path.dirname(path)) == tempfile.gettempdir()
        value = _handle.read(path)
        assert value["big"] == BLOB
        assert bytes(value["view"]) == BLOB[:100]
        assert store.knows(handle)
    finally:
        store.close()
    assert not os.path.exists(path)
    assert not store.knows(handle)
    with pytest.raises(StoreClosed):
        store.put(1)


def test_lift_puts_references_at_the_top() -> None:
    class Ref:
        def __init__(self, value: object) -> None:
            self.value = value

    def ref_of(obj: object) -> object | None:
        return obj if isinstance(obj, Ref) else None

    plain = (1, [2, 3])
    assert _refs.lift(handlefuncs.sizes, plain, ref_of) == (handlefuncs.sizes, plain)

    a, b = Ref(b"aa"), Ref(b"bbb")
    fn = functools.partial(handlefuncs.sizes, a, second=b)
    lifted, args = _refs.lift(_run_chunk, (fn, [a, b, 7]), ref_of)
    assert lifted is _refs.apply
    assert args[1:] == (a, b, a, b)
    # The engine resolves the top-level references; apply fills them in.
    values = [ref.value for ref in args[1:]]
    assert _refs.apply(args[0], *values) == ((2, 3), [b"aa", b"bbb", 7])


def _run_chunk(fn: object, items: list[object]) -> tuple[object, list[object]]:
    return fn(), items  # type: ignore[operator]


def test_the_store_removes_what_dead_processes_left(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = tmp_path / f"triopool-{gone.stdout.strip()}-left"
    dead.mkdir()
    (dead / "triopool-x-1").write_bytes(b"left behind")
    alive = tmp_path / f"triopool-{os.getpid()}-mine"
    alive.mkdir()
    other = tmp_path / "triopool-notapid-x"
    other.mkdir()
    store = Store(shm=str(tmp_path))
    try:
        handle = store.put(b"new")
        assert os.path.dirname(os.path.dirname(str(_handle.ref_of(handle)))) == str(
            tmp_path
        )
    finally:
        store.close()
    assert not dead.exists()
    assert alive.exists()
    assert other.exists()


FETCHED: list[object] = []


def fetch_counting(ref: object) -> object:
    FETCHED.append(ref)
    return f"value of {ref}"


def test_lift_keeps_cached_objects_in_place_and_fetches_each_once() -> None:
    def ref_of(obj: object) -> object | None:
        if isinstance(obj, str) and obj.startswith("handle-"):
            return _refs.Cached(obj, f"ref-{obj}", fetch_counting)
        return None

    fn = functools.partial(handlefuncs.sizes, "handle-a", second="handle-b")
    lifted, args = _refs.lift(fn, (), ref_of)
    assert lifted is _refs.apply
    assert len(args) == 1  # nothing lifted: fetched in the task instead
    plan = pickle.loads(pickle.dumps(args[0]))
    FETCHED.clear()
    first = _refs.apply(plan)
    second = _refs.apply(plan)
    assert (
        first == second == (len("value of ref-handle-a"), len("value of ref-handle-b"))
    )
    assert FETCHED == ["ref-handle-a", "ref-handle-b"]

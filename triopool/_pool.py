"""The public face: :func:`open_pool` and :class:`Pool`.

A :class:`Pool` is the same type whatever runs its tasks: its methods check a
call's arguments and fill in the pool's defaults here, once, and hand the call
to its scheduler (``_scheduler``): the local one (``_local``: worker
processes of this machine) or the cluster one (``_cluster``: Ray or Dask
through a backend). ``map`` and ``imap`` (``_map``) are built on
:meth:`Pool.run_sync`, so they work the same on both.

Invariants:

- A scheduler gets only checked values: never ``POOL_DEFAULT``, never an
  infinite limit, never an async function.
- A call on the local scheduler costs one method call more than the
  scheduler's own ``run``: no task switch, no checkpoint beyond the one on
  entry.
"""

from __future__ import annotations

import contextlib
import inspect
import types
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, overload

import trio

from . import _context, _events, _hooks, _map
from ._cluster import ClusterScheduler, open_cluster_scheduler
from ._config import (
    POOL_DEFAULT,
    Options,
    PoolDefault,
    _check_limits,
    _no_limit_if_inf,
    check_retries,
    retry_classes,
)
from ._errors import BrokenWorkerError
from ._local import LocalScheduler

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterable,
        AsyncIterator,
        Callable,
        Iterable,
        Mapping,
        Sequence,
    )
    from types import CoroutineType
    from typing import Literal, TypeVarTuple, Unpack

    from ._backend import Backend
    from ._config import RetryOn
    from ._events import EventStream
    from ._handle import Handle
    from ._progress import MapProgress
    from ._scheduler import Scheduler
    from ._stats import PoolStatistics, WorkerInsight
    from ._typing import AnyResultCallable, AsyncCallable, AsyncFunctionPassedToRunSync

    Ts = TypeVarTuple("Ts")

T = TypeVar("T")
ItemT = TypeVar("ItemT")


class Pool:
    """A pool of workers; get one from :func:`open_pool`.

    Any number of tasks may use it concurrently. It is usable only inside the
    ``async with open_pool(...)`` block that made it. The workers are local
    processes, or with ``open_pool(backend=...)`` a cluster engine's; the
    pool is a :class:`Pool` either way, with the same methods.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        # The per-call defaults, read on every call.
        self._time_limit = scheduler.time_limit
        self._soft_time_limit = scheduler.soft_time_limit
        self._kill_on_cancel = scheduler.kill_on_cancel
        self._retries = scheduler.retries
        self._retry_on = scheduler.retry_on

    def __repr__(self) -> str:
        return f"<triopool.Pool {self._scheduler.describe()}>"

    # Public API

    def statistics(self) -> PoolStatistics:
        """Return a snapshot of the pool's counters (cheap: no I/O).

        With a backend, a *worker* is one of the cluster engine's worker slots
        the pool uses (see :doc:`cluster`).
        """
        return self._scheduler.statistics()

    def insight(self) -> tuple[WorkerInsight, ...]:
        """Return what each worker slot did so far, one :class:`WorkerInsight`
        per slot, in slot order (cheap: no I/O).

        Tasks done, time busy and idle, the latest worker's start-up time and
        the slot's longest tasks. A slot's numbers cover all the workers it
        has had (a worker is replaced when it retires or dies). The
        ``tasks_done`` of all slots add up to ``tasks_completed +
        tasks_failed`` of :meth:`statistics`, less the tasks that failed
        before any worker took them (the pool broke or closed first). On a
        cluster backend, whose engine's processes are not the pool's, it
        returns ``()``.

        Example::

            for slot in pool.insight():
                print(slot.index, slot.tasks_done, f"{slot.busy_time:.1f} s busy")
        """
        return self._scheduler.insight()

    def events(
        self, *, buffer: int = _events.DEFAULT_BUFFER
    ) -> contextlib.AbstractAsyncContextManager[EventStream]:
        """Watch what the pool does: a live feed of task and worker events.

        Use it with ``async with`` while the pool is open; iterate over the
        :class:`EventStream` it gives with ``async for``, which yields
        :class:`TaskEvent` and :class:`WorkerEvent` instances in the order
        they happened, from the moment of subscribing. Leaving the block
        unsubscribes; once the pool has closed (and its workers' last events
        are delivered) the iteration ends.

        A subscriber never slows the pool: it keeps at most ``buffer`` events
        it has not taken yet, and when a new one comes to a full buffer the
        oldest is dropped and counted in :attr:`EventStream.lost`. With no
        subscriber, events cost nothing but a check per change of a task's
        state.

        Args:
            buffer: How many events to keep for a reader that falls behind
                (default 1000).

        Raises:
            TypeError: ``buffer`` is not an int.
            ValueError: ``buffer`` is less than 1.
            trio.ClosedResourceError: The pool's block has exited (when
                called or when entered).
            RuntimeError: Called from outside the ``trio.run`` that opened
                the pool.
            NotImplementedError: The pool runs on a cluster backend, whose
                engine runs the tasks where the pool cannot watch them (poll
                :meth:`statistics` instead).

        Example::

            async with pool.events() as events:
                await pool.run_sync(zlib.crc32, data)
                async for event in events:
                    print(event.kind, type(event).__name__)
                    if isinstance(event, triopool.TaskEvent) and event.kind == "finished":
                        print(event.function, "ran on worker", event.worker_index)
                        break
        """
        return self._scheduler.events(_events.check_buffer(buffer))

    # For type checkers (see _typing): an async function is an error.
    @overload
    def run_sync(  # type: ignore[overload-overlap]
        self,
        fn: AnyResultCallable,
        *args: object,
        time_limit: float | PoolDefault | None = POOL_DEFAULT,
        soft_time_limit: float | PoolDefault | None = POOL_DEFAULT,
        kill_on_cancel: bool | PoolDefault = POOL_DEFAULT,
        retries: int | PoolDefault = POOL_DEFAULT,
        retry_on: RetryOn | PoolDefault = POOL_DEFAULT,
        engine_options: Mapping[str, Any] | None = None,
    ) -> CoroutineType[Any, Any, Any]: ...
    @overload
    def run_sync(  # type: ignore[overload-overlap]
        self,
        fn: AsyncCallable,
        *args: object,
        time_limit: float | PoolDefault | None = POOL_DEFAULT,
        soft_time_limit: float | PoolDefault | None = POOL_DEFAULT,
        kill_on_cancel: bool | PoolDefault = POOL_DEFAULT,
        retries: int | PoolDefault = POOL_DEFAULT,
        retry_on: RetryOn | PoolDefault = POOL_DEFAULT,
        engine_options: Mapping[str, Any] | None = None,
    ) -> AsyncFunctionPassedToRunSync: ...
    @overload
    def run_sync(
        self,
        fn: Callable[[Unpack[Ts]], T],
        *args: *Ts,
        time_limit: float | PoolDefault | None = POOL_DEFAULT,
        soft_time_limit: float | PoolDefault | None = POOL_DEFAULT,
        kill_on_cancel: bool | PoolDefault = POOL_DEFAULT,
        retries: int | PoolDefault = POOL_DEFAULT,
        retry_on: RetryOn | PoolDefault = POOL_DEFAULT,
        engine_options: Mapping[str, Any] | None = None,
    ) -> CoroutineType[Any, Any, T]: ...
    async def run_sync(  # type: ignore[misc]
        self,
        fn: Callable[[Unpack[Ts]], T],
        *args: *Ts,
        time_limit: float | PoolDefault | None = POOL_DEFAULT,
        soft_time_limit: float | PoolDefault | None = POOL_DEFAULT,
        kill_on_cancel: bool | PoolDefault = POOL_DEFAULT,
        retries: int | PoolDefault = POOL_DEFAULT,
        retry_on: RetryOn | PoolDefault = POOL_DEFAULT,
        engine_options: Mapping[str, Any] | None = None,
    ) -> T:
        """Run ``fn(*args)`` in a worker process and return its result.

        ``fn`` and ``args`` travel by pickle; use :func:`functools.partial` for
        keyword arguments. The keyword-only options default to the values
        given to :func:`open_pool`. Any exception ``fn`` raises is raised
        here, with the worker's traceback as its ``__cause__``. Entering this
        method is a checkpoint; a task still waiting for a worker when its
        caller is cancelled never runs.

        Args:
            fn: A regular (not async) callable the worker can unpickle.
            *args: Positional arguments for ``fn``.
            time_limit: Hard limit in seconds, counted from the moment the
                worker receives the task: the worker is killed and replaced,
                and :class:`TimeLimitExceeded` is raised. ``None``: no limit.
            soft_time_limit: :class:`SoftTimeLimitExceeded` is raised inside
                ``fn`` after this many seconds. ``None``: no limit.
            kill_on_cancel: If the caller is cancelled while the task runs,
                ``True`` kills the worker and lets ``Cancelled`` through at
                once; ``False`` waits for the task like
                :func:`trio.to_thread.run_sync` and returns (or raises) its
                outcome, leaving the cancellation to the next checkpoint.
            retries: How many more times to run the task after a run that
                fails with one of ``retry_on`` (see "Recovery"). Only the
                last failure is raised; its message says how many runs were
                tried.
            retry_on: The failures that are retried: exception classes
                among :class:`BrokenWorkerError`, :class:`TimeLimitExceeded`
                and the task's own exception types.
            engine_options: With a cluster backend, the engine's own options
                for this call (Ray task options, Dask ``submit`` options),
                over the backend's ``task_options`` key by key; see
                :doc:`cluster`. A key the backend does not take raises
                :class:`ValueError` naming it and the valid ones. The local
                pool has no engine and refuses a non-empty one.

        Returns:
            What ``fn`` returned.

        Raises:
            TypeError: ``fn`` is an async function, or an option has the
                wrong type.
            ValueError: A limit is out of range (``soft_time_limit`` must be
                less than ``time_limit``), or, with a backend, an option the
                backend cannot honour.
            SerializationError: ``fn``, ``args``, the result or the exception
                could not be pickled or unpickled.
            BrokenWorkerError: The worker died while running the task.
            TimeLimitExceeded: The hard time limit expired.
            BrokenPoolError: Workers keep failing to start.
            trio.ClosedResourceError: The pool's block has exited.
            RuntimeError: Called from outside the ``trio.run`` that opened
                the pool: from asyncio, or from another thread's run.

        Example::

            checksum = await pool.run_sync(zlib.crc32, data)
            parsed = await pool.run_sync(functools.partial(int, base=16), "ff")
        """
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except RuntimeError:
            raise _context.not_in_trio("Pool.run_sync()") from None
        if _is_async_function(fn):
            raise TypeError(
                f"run_sync() needs a regular function, got the async function {fn!r}"
            )
        # The pool's own limits were checked when it opened; only a call that
        # sets one needs the check again.
        explicit_limits = (
            time_limit is not POOL_DEFAULT or soft_time_limit is not POOL_DEFAULT
        )
        if time_limit is POOL_DEFAULT:
            time_limit = self._time_limit
        if soft_time_limit is POOL_DEFAULT:
            soft_time_limit = self._soft_time_limit
        if kill_on_cancel is POOL_DEFAULT:
            kill_on_cancel = self._kill_on_cancel
        elif not isinstance(kill_on_cancel, bool):
            raise TypeError(f"kill_on_cancel must be a bool, got {kill_on_cancel!r}")
        if explicit_limits:
            time_limit = _no_limit_if_inf(time_limit)
            soft_time_limit = _no_limit_if_inf(soft_time_limit)
            _check_limits(time_limit, soft_time_limit, " of run_sync()")
        if retries is POOL_DEFAULT:
            retries = self._retries
        else:
            check_retries("retries", retries)
        classes = (
            self._retry_on if retry_on is POOL_DEFAULT else retry_classes(retry_on)
        )
        if engine_options:
            if not isinstance(self._scheduler, ClusterScheduler):
                raise ValueError(
                    f"engine_options={engine_options!r} needs a cluster "
                    "backend; the local pool has no engine to pass them to: "
                    "remove it, or open the pool with backend=RayBackend() "
                    "or DaskBackend()"
                )
            return await self._scheduler.run(  # type: ignore[no-any-return]
                fn,
                args,
                time_limit,
                soft_time_limit,
                kill_on_cancel,
                retries,
                classes,
                engine_options=engine_options,
            )
        return await self._scheduler.run(  # type: ignore[no-any-return]
            fn, args, time_limit, soft_time_limit, kill_on_cancel, retries, classes
        )

    async def put(self, obj: T) -> Handle[T]:
        """Store ``obj`` once, for many tasks; return a :class:`Handle` to it.

        Pass the handle instead of the object: as an argument of
        :meth:`run_sync`, as an argument or keyword argument of a
        :func:`functools.partial` given as ``fn`` (to :meth:`run_sync`,
        :meth:`map` or :meth:`imap`), or as an item of :meth:`map` and
        :meth:`imap`. The task receives the object itself. The object is
        pickled once, here, and reaches each worker once: the local pool
        writes it to a file (in memory, on ``/dev/shm``, where there is room)
        that each worker reads the first time a task needs it and keeps; with
        a backend it goes to the engine's object store (``ray.put``, Dask's
        ``scatter``). Later changes to ``obj`` are not seen by the tasks.

        The handle is valid until :meth:`release` or the end of the pool's
        block, whichever comes first. Pickling (and sending) runs in a
        worker thread, so a large object does not stall the Trio loop.

        Args:
            obj: Any object that pickles (with cloudpickle, when installed,
                for what plain pickle cannot send).

        Returns:
            A handle for this pool's tasks (type checkers see a
            ``Handle[T]``, not a ``T``: see :doc:`serialization`).

        Raises:
            SerializationError: ``obj`` cannot be pickled (or sent to the
                engine).
            BrokenPoolError: Workers keep failing to start.
            trio.ClosedResourceError: The pool's block has exited.

        Example::

            handle = await pool.put(data)  # pickled once, read once per worker
            # zlib.compress(data, level) for every level: data crosses once.
            sizes = await pool.map(functools.partial(zlib.compress, handle), range(10))
            pool.release(handle)
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        return await self._scheduler.put(obj)

    def release(self, handle: Handle[Any]) -> None:
        """Forget a handle of :meth:`put` before the pool's block ends.

        The object's file (or the engine's copy) is freed; workers drop
        their copy when they next load another handle, or when they exit.
        Release a handle only once the calls that use it have finished: a
        task that starts later cannot get the object.

        Raises:
            TypeError: ``handle`` is not a :class:`Handle`.
            ValueError: ``handle`` is not a live handle of this pool: it was
                released already, or another pool put it.
            trio.ClosedResourceError: The pool's block has exited (its
                handles were released then).
        """
        self._scheduler.release(handle)

    @property
    def _retry_defaults(self) -> tuple[int, tuple[type[BaseException], ...]]:
        """The pool's ``retries`` and ``retry_on``: map's chunks that report
        each item retry their items themselves (see ``_chunk_parts``)."""
        return self._retries, self._retry_on

    @property
    def _submit_nowait(self) -> _map.Streamer | None:
        """The streaming seam of map/imap, if the scheduler has one (the
        local one does: see ``LocalScheduler.submit_nowait``)."""
        return getattr(self._scheduler, "submit_nowait", None)

    @overload
    async def map(
        self,
        fn: Callable[[ItemT], T],
        iterable: Iterable[ItemT] | AsyncIterable[ItemT],
        *,
        chunksize: int | Literal["auto"] = ...,
        retries: int | PoolDefault = ...,
        retry_on: RetryOn | PoolDefault = ...,
        return_exceptions: Literal[False] = ...,
        progress: bool | Callable[[MapProgress], object] | None = ...,
    ) -> list[T]: ...
    @overload
    async def map(
        self,
        fn: Callable[[ItemT], T],
        iterable: Iterable[ItemT] | AsyncIterable[ItemT],
        *,
        chunksize: int | Literal["auto"] = ...,
        retries: int | PoolDefault = ...,
        retry_on: RetryOn | PoolDefault = ...,
        return_exceptions: bool,
        progress: bool | Callable[[MapProgress], object] | None = ...,
    ) -> list[T | Exception]: ...
    async def map(
        self,
        fn: Callable[[ItemT], T],
        iterable: Iterable[ItemT] | AsyncIterable[ItemT],
        *,
        chunksize: int | Literal["auto"] = "auto",
        retries: int | PoolDefault = POOL_DEFAULT,
        retry_on: RetryOn | PoolDefault = POOL_DEFAULT,
        return_exceptions: bool = False,
        progress: bool | Callable[[MapProgress], object] | None = None,
    ) -> list[T] | list[T | Exception]:
        """Run ``fn(item)`` in the workers for every item; return the results.

        The results are in input order. Items are pulled from ``iterable`` as
        workers need them (at most as many ahead as :meth:`imap`'s default
        ``max_in_flight``), and a slow item does not hold back the ones after
        it. For results as they come, or for input without end, use
        :meth:`imap`.

        The first exception raised by a task (or by ``iterable``) is raised
        here as itself, with the worker's traceback as for :meth:`run_sync`;
        the call's other tasks are cancelled first (running ones as the pool's
        ``kill_on_cancel`` says). The pool's time limits apply to each task,
        that is, to each chunk as a whole. With ``return_exceptions=True``
        a failing item yields its exception in its place instead, and the
        call goes on.

        Args:
            fn: A regular (not async) callable of one argument that the worker
                can unpickle.
            iterable: The items: a regular or an async iterable. Each item
                travels to a worker by pickle.
            chunksize: How many items to send per task. ``"auto"`` (the
                default) sizes each chunk from the measured time of the items
                before it: one item at first, then growing while items are
                quick, towards about 20 ms of worker time per chunk, and
                shrinking towards the end of an input of known length. An
                int sends that many items per task. The results still come
                back one per item; a chunk that fails raises the exception of
                its first failing item.
            retries: As for :meth:`run_sync`, per task, that is, per chunk:
                a chunk that fails is run again as a whole. Default: the
                pool's.
            retry_on: As for :meth:`run_sync`. Default: the pool's.
            progress: ``True``: show a progress line on stderr when it is a
                terminal (items done, the total when ``iterable`` has a
                length, failures, rate, ETA). A callable: called with a
                :class:`MapProgress` snapshot at most ten times a second as
                results come in, and once when the call ends (whether it
                ends with the results, an error or a cancellation). An
                exception it raises ends the call like a task's. ``None``
                (the default) or ``False``: nothing.
            return_exceptions: ``True``: an item that fails yields its
                exception instance in its place (its own exception,
                :class:`BrokenWorkerError`, :class:`TimeLimitExceeded`,
                :class:`SerializationError`, ...) and the call goes on. A
                chunk whose worker died, that hit the time limit or that
                could not be pickled as a whole runs again one item per
                task, so only the item at fault gets the error (and the
                items of that chunk that had finished run twice). Only
                :class:`BrokenPoolError`, a closed pool and an error of
                ``iterable`` itself still end the call.

        Returns:
            ``[fn(item) for item in iterable]``, computed in the workers.

        Raises:
            TypeError: ``fn`` is async or not callable, ``iterable`` is not
                iterable, or ``chunksize`` is neither ``"auto"`` nor an int.
            ValueError: ``chunksize`` is another string, or less than 1.
            SerializationError: ``fn`` cannot be pickled, or an item, a
                result or an exception could not cross to the other side.
            BrokenWorkerError: A worker died while running a task.
            TimeLimitExceeded: A task ran past the hard time limit.
            BrokenPoolError: Workers keep failing to start.
            trio.ClosedResourceError: The pool's block has exited.

        Example::

            checksums = await pool.map(zlib.crc32, [data, data[:100], data[100:]])
            # Quick items travel in chunks sized from their measured time.
            lengths = await pool.map(len, data.split(b" "))
        """
        self._scheduler.check_usable()
        return await _map.map_list(
            self,
            fn,
            iterable,
            chunksize=chunksize,
            return_exceptions=return_exceptions,
            progress=progress,
            retries=retries,
            retry_on=retry_on,
        )

    @overload
    def imap(
        self,
        fn: Callable[[ItemT], T],
        iterable: Iterable[ItemT] | AsyncIterable[ItemT],
        *,
        ordered: bool = ...,
        chunksize: int | Literal["auto"] = ...,
        max_in_flight: int | None = ...,
        retries: int | PoolDefault = ...,
        retry_on: RetryOn | PoolDefault = ...,
        return_exceptions: Literal[False] = ...,
        progress: bool | Callable[[MapProgress], object] | None = ...,
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[T]]: ...
    @overload
    def imap(
        self,
        fn: Callable[[ItemT], T],
        iterable: Iterable[ItemT] | AsyncIterable[ItemT],
        *,
        ordered: bool = ...,
        chunksize: int | Literal["auto"] = ...,
        max_in_flight: int | None = ...,
        retries: int | PoolDefault = ...,
        retry_on: RetryOn | PoolDefault = ...,
        return_exceptions: bool,
        progress: bool | Callable[[MapProgress], object] | None = ...,
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[T | Exception]]: ...
    def imap(
        self,
        fn: Callable[[ItemT], T],
        iterable: Iterable[ItemT] | AsyncIterable[ItemT],
        *,
        ordered: bool = True,
        chunksize: int | Literal["auto"] = "auto",
        max_in_flight: int | None = None,
        retries: int | PoolDefault = POOL_DEFAULT,
        retry_on: RetryOn | PoolDefault = POOL_DEFAULT,
        return_exceptions: bool = False,
        progress: bool | Callable[[MapProgress], object] | None = None,
    ) -> (
        contextlib.AbstractAsyncContextManager[AsyncIterator[T]]
        | contextlib.AbstractAsyncContextManager[AsyncIterator[T | Exception]]
    ):
        """Stream ``fn(item)`` for every item, computed in the workers.

        Use it with ``async with``; the block owns every task of the call, and
        leaving it, however it is left, cancels whatever still runs and waits
        for it. Inside, iterate over the results with ``async for``.

        Items are pulled from ``iterable`` lazily: never more than
        ``max_in_flight`` ahead of the results the consumer has received, so a
        slow consumer slows the producer and an endless input takes bounded
        memory.

        The first exception raised by a task (or by ``iterable``) comes out of
        the ``async for`` as itself, with the worker's traceback as for
        :meth:`run_sync`, once the call's other tasks are cancelled and have
        ended (running ones as the pool's ``kill_on_cancel`` says); results
        not yet received are dropped. Breaking out of the loop, or being cancelled, cancels the
        rest as well and leaves the pool ready for more work.

        Args:
            fn: A regular (not async) callable of one argument that the worker
                can unpickle.
            iterable: The items: a regular or an async iterable, possibly
                without end. Each item travels to a worker by pickle.
            ordered: ``True``: results in input order. ``False``: results as
                tasks finish.
            chunksize: How many items to send per task. ``"auto"`` (the
                default) sizes each chunk from the measured time of the items
                before it and from how fast ``iterable`` yields them (see
                :meth:`map`). An int sends that many items per task; a chunk
                is sent when it is full or the input ends, so with a slow
                input, results wait for their chunk to fill. Results still
                come one per item. A chunk that fails raises the exception of
                its first failing item; time limits apply to the chunk as a
                whole.
            max_in_flight: How many items may be taken from ``iterable`` ahead
                of the results received. ``None``: with ``"auto"``,
                ``8192 * workers`` (two chunks of the largest automatic size,
                4096, per worker); with an int ``chunksize``,
                ``workers * max(16 * chunksize, 256)`` (sixteen chunks per
                worker, and enough small chunks to keep workers busy). If less
                than ``chunksize``, chunks hold ``max_in_flight`` items; with
                ``"auto"``, chunks hold at most ``max_in_flight // (2 *
                workers)`` items (at least one).
            retries: As for :meth:`map`. Default: the pool's.
            retry_on: As for :meth:`run_sync`. Default: the pool's.
            return_exceptions: ``True``: an item that fails yields its
                exception instance in its place and the call goes on (see
                :meth:`map`).
            progress: Show or report how far the call has got (see
                :meth:`map`). With ``imap`` an item counts as done when its
                result arrives in the parent, before the consumer takes it.

        Returns:
            An async context manager whose value is an async iterator of the
            results. Taking a result after the block has exited raises
            :class:`trio.ClosedResourceError`.

        Raises:
            TypeError: ``fn`` is async or not callable, ``iterable`` is not
                iterable, or an option has the wrong type.
            ValueError: ``chunksize`` is a string other than ``"auto"``, or
                ``chunksize`` or ``max_in_flight`` is less than 1.
            SerializationError: ``fn`` cannot be pickled.
            trio.ClosedResourceError: The pool's block has exited.

        The ``async for`` raises what :meth:`map` raises.

        Example::

            blocks = (data[i : i + 100] for i in range(0, len(data), 100))
            async with pool.imap(zlib.compress, blocks, chunksize=4) as results:
                async for compressed in results:
                    print(len(compressed))
        """
        self._scheduler.check_usable()
        return _map.imap(
            self,
            fn,
            iterable,
            ordered=ordered,
            chunksize=chunksize,
            max_in_flight=max_in_flight,
            retries=retries,
            retry_on=retry_on,
            return_exceptions=return_exceptions,
            progress=progress,
        )


def open_pool(
    workers: int | None = None,
    *,
    start_method: Literal["spawn", "forkserver"] = "spawn",
    forkserver_preload: Sequence[str] = (),
    initializer: Callable[..., object] | None = None,
    initargs: Sequence[Any] = (),
    max_tasks_per_child: int | None = None,
    max_memory_per_child: int | None = None,
    start_timeout: float = 4.0,
    max_start_failures: int = 5,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    kill_on_cancel: bool = True,
    shutdown_timeout: float = 5.0,
    retries: int = 0,
    retry_on: RetryOn = (BrokenWorkerError,),
    min_workers: int | None = None,
    idle_timeout: float | None = None,
    max_lifetime_per_child: float | None = None,
    forward_logs: bool = True,
    backend: Backend | None = None,
) -> contextlib.AbstractAsyncContextManager[Pool]:
    """Open a pool of worker processes for the duration of an ``async with``.

    Arguments are checked at once: a bad one raises :class:`ValueError` or
    :class:`TypeError` before any process starts. Workers start eagerly; the
    block may begin before all of them are up.

    Leaving the block, however it is left, stops every worker, reaps it and
    closes every fd the pool opened. A normal exit lets submitted tasks
    finish; an exit by exception or cancellation kills the workers at once.
    An exception from the block leaves it as itself, never wrapped in an
    exception group.

    Args:
        workers: How many worker processes; ``None``: the number of CPUs this
            process may use. With a ``backend``: how many calls the pool
            keeps in the engine at once; ``None``: as many as the cluster can
            run, followed as it grows and shrinks.
        start_method: ``"spawn"`` (a fresh interpreter per worker) or
            ``"forkserver"``.
        forkserver_preload: Modules the fork server imports once, before it
            forks workers.
        initializer: Called as ``initializer(*initargs)`` in each worker before
            it reports up; if it raises, that start counts as failed.
        initargs: Arguments for ``initializer``.
        max_tasks_per_child: Retire and replace a worker after this many tasks.
        max_memory_per_child: Retire and replace a worker after a task leaves
            its resident memory above this many bytes.
        start_timeout: Seconds a new worker has to report up.
        max_start_failures: Consecutive failed starts after which the pool is
            broken (:class:`BrokenPoolError`).
        time_limit: Default hard time limit per task, in seconds.
        soft_time_limit: Default soft time limit per task, in seconds.
        kill_on_cancel: Default for :meth:`Pool.run_sync`.
        shutdown_timeout: On exit, seconds workers get to exit before SIGTERM,
            then SIGKILL.
        retries: Default for :meth:`Pool.run_sync`, :meth:`Pool.map` and
            :meth:`Pool.imap`: how many more times a task runs after a run
            that failed with one of ``retry_on``. A task that keeps killing
            its worker fails after ``retries + 1`` deaths.
        retry_on: Default failures that are retried: a tuple (or one) of
            :class:`BrokenWorkerError` (the worker died under the task),
            :class:`TimeLimitExceeded` and the task's own exception types.
        min_workers: Workers kept while idle; ``None``: all of them (the pool
            never shrinks). Workers above it exit after ``idle_timeout`` idle
            seconds, and start again at once when tasks wait. Needs
            ``idle_timeout``; at most ``workers``.
        idle_timeout: Seconds a worker above ``min_workers`` may stay idle
            before it exits (``math.inf``: never). Needs ``min_workers``.
        max_lifetime_per_child: Retire and replace a worker at its first idle
            moment once it has been up this many seconds (never in the middle
            of a task, nor while tasks are written ahead to it).
        forward_logs: Send the :mod:`logging` records that tasks and
            initializers make to the parent's logger of the same name, with
            ``record.worker_pid`` and ``record.worker_index``; the parent's
            levels decide what is sent (see :doc:`inside-a-worker`). No effect
            on a cluster backend.
        backend: Run the tasks on a cluster engine instead
            (:class:`RayBackend`, :class:`DaskBackend`); options the backend
            cannot honour must stay at their defaults (see "Running on a
            cluster").

    Raises:
        ValueError: An argument is out of range: ``workers < 1``, a negative
            time-out or limit, an unknown ``start_method``,
            ``soft_time_limit >= time_limit``, ``min_workers > workers``,
            ``idle_timeout`` without ``min_workers`` (or the reverse), ...
        TypeError: An argument has the wrong type, or ``initializer`` and
            ``initargs`` cannot be pickled.

    Entering the block raises :class:`RuntimeError` outside ``trio.run`` (from
    asyncio, say), or in a worker process that is importing the main script
    (the script lacks ``if __name__ == "__main__":``).

    Example::

        async with triopool.open_pool(4) as pool:
            total = await pool.run_sync(sum, range(10))
    """
    if backend is None and start_method == "spawn":
        start_method = _hooks.current().start_method or start_method
    options = Options(
        workers=workers,
        start_method=start_method,
        forkserver_preload=forkserver_preload,
        initializer=initializer,
        initargs=initargs,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
        start_timeout=start_timeout,
        max_start_failures=max_start_failures,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        kill_on_cancel=kill_on_cancel,
        shutdown_timeout=shutdown_timeout,
        retries=retries,
        retry_on=retry_on,
        min_workers=min_workers,
        idle_timeout=idle_timeout,
        max_lifetime_per_child=max_lifetime_per_child,
        forward_logs=forward_logs,
    )
    return open_with_options(options, backend)


def open_with_options(
    options: Options, backend: Backend | None
) -> contextlib.AbstractAsyncContextManager[Pool]:
    """:func:`open_pool`, given its options as one object (see ``_config``)."""
    scheduler: Scheduler
    if backend is not None:
        scheduler = open_cluster_scheduler(backend, options)
    else:
        # Pickles the initializer: fails now if it cannot.
        scheduler = LocalScheduler(options.config())
    return _run_pool(Pool(scheduler))


@contextlib.asynccontextmanager
async def _run_pool(pool: Pool) -> AsyncIterator[Pool]:
    _context.check_start("triopool.open_pool()")
    async with pool._scheduler.running():
        yield pool


# Callables that are never async functions: run_sync's check skips inspect
# for them (it costs about a microsecond, on every call).
_NEVER_ASYNC: Final = frozenset(
    {
        types.BuiltinFunctionType,
        types.MethodDescriptorType,
        types.WrapperDescriptorType,
        types.MethodWrapperType,
    }
)
_ASYNC_CODE: Final = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _is_async_function(fn: object) -> bool:
    """``fn`` is an async function or async generator function, as
    :mod:`inspect` tells it; a plain function is told by its code flags
    alone, unless :func:`inspect.markcoroutinefunction` marked it."""
    kind = type(fn)
    if kind in _NEVER_ASYNC:
        return False
    if kind is types.FunctionType and "_is_coroutine_marker" not in vars(fn):
        return bool(fn.__code__.co_flags & _ASYNC_CODE)  # type: ignore[attr-defined]
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)

"""The pool: ``open_pool``, :class:`Pool`, its worker slots and its job queue.

Shape: ``open_pool`` owns a supervising nursery with one *slot* task per
worker (and, with ``start_method="forkserver"``, one task owning the fork
server). A slot loops: each turn starts a task for one worker, which opens it
(``async with open_worker()``), waits for it to report up, serves jobs until
the worker retires, dies or the pool closes, and leaves the block, which
kills, reaps and closes everything of that worker. The slot starts the
replacement as soon as the worker stops serving, so a retiring worker exits
while the next one starts; each worker still has exactly one owning task.
While a worker serves, its owning task reads its answers and sends it the
next queued job, and a feeder task, started and ended inside the same
``async with``, sends the job a caller hands to it while it idles.

Invariants:

- A worker is touched only by its owning task and that task's feeder, inside
  its ``async with`` (see ``_worker``); a slot has at most one serving
  worker, plus one that is exiting.
- A job is in exactly one place at a time: the waiting queue, handed to one
  idle worker, running on one worker, or finished. Only a worker that is up
  and idle takes a job, so a job never reaches one that is starting or
  retiring.
- Every job ends: its caller gets a result or an error, or was cancelled and
  stopped waiting. Nothing is left hanging, whatever happens to the workers.
- Retirement is decided here, in the slot, never by the worker on its own.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import trio

from . import _context, _hooks, _map, _messages, _stats
from ._backend_pool import open_backend_pool
from ._config import (
    POOL_DEFAULT,
    Options,
    PoolConfig,
    PoolDefault,
    _check_limits,
    _no_limit_if_inf,
    _usable_cpus,
)
from ._jobs import Job, Jobs, JobState
from ._slots import Slots

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterable,
        AsyncIterator,
        Callable,
        Iterable,
        Sequence,
    )
    from types import CoroutineType
    from typing import Literal, TypeVarTuple, Unpack

    from ._backend import Backend
    from ._backend_pool import BackendPool
    from ._stats import PoolStatistics
    from ._typing import AnyResultCallable, AsyncCallable, AsyncFunctionPassedToRunSync

    Ts = TypeVarTuple("Ts")

T = TypeVar("T")
ItemT = TypeVar("ItemT")

_log = logging.getLogger("triopool")


class Pool:
    """A pool of worker processes; get one from :func:`open_pool`.

    Any number of tasks may use it concurrently. It is usable only inside the
    ``async with open_pool(...)`` block that made it.
    """

    def __init__(self, config: PoolConfig) -> None:
        self._config = config
        self._main_importable = _messages.main_module() != (None, None)
        self._closed = False
        self._nursery: trio.Nursery | None = None
        self._thread: int | None = None  # of the run that opened it (see _open)
        self._jobs = Jobs()
        self._slots = Slots(
            config,
            _messages.worker_config(
                config.initializer, config.initargs, config.max_memory_per_child
            ),
            self._jobs,
            _usable_cpus(),
            _hooks.current(),
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._jobs.broken else "open"
        return f"<triopool.Pool {state} workers={self._config.workers}>"

    # Public API

    def statistics(self) -> PoolStatistics:
        """Return a snapshot of the pool's counters (cheap: no I/O)."""
        return _stats.snapshot(self._config.workers, self._jobs, self._slots.counters)

    # For type checkers (see _typing): an async function is an error.
    @overload
    def run_sync(  # type: ignore[overload-overlap]
        self,
        fn: AnyResultCallable,
        *args: object,
        time_limit: float | PoolDefault | None = POOL_DEFAULT,
        soft_time_limit: float | PoolDefault | None = POOL_DEFAULT,
        kill_on_cancel: bool | PoolDefault = POOL_DEFAULT,
    ) -> CoroutineType[Any, Any, Any]: ...
    @overload
    def run_sync(  # type: ignore[overload-overlap]
        self,
        fn: AsyncCallable,
        *args: object,
        time_limit: float | PoolDefault | None = POOL_DEFAULT,
        soft_time_limit: float | PoolDefault | None = POOL_DEFAULT,
        kill_on_cancel: bool | PoolDefault = POOL_DEFAULT,
    ) -> AsyncFunctionPassedToRunSync: ...
    @overload
    def run_sync(
        self,
        fn: Callable[[Unpack[Ts]], T],
        *args: *Ts,
        time_limit: float | PoolDefault | None = POOL_DEFAULT,
        soft_time_limit: float | PoolDefault | None = POOL_DEFAULT,
        kill_on_cancel: bool | PoolDefault = POOL_DEFAULT,
    ) -> CoroutineType[Any, Any, T]: ...
    async def run_sync(  # type: ignore[misc]
        self,
        fn: Callable[[Unpack[Ts]], T],
        *args: *Ts,
        time_limit: float | PoolDefault | None = POOL_DEFAULT,
        soft_time_limit: float | PoolDefault | None = POOL_DEFAULT,
        kill_on_cancel: bool | PoolDefault = POOL_DEFAULT,
    ) -> T:
        """Run ``fn(*args)`` in a worker process and return its result.

        ``fn`` and ``args`` travel by pickle; use :func:`functools.partial` for
        keyword arguments. The three options default to the values given to
        :func:`open_pool`. Any exception ``fn`` raises is raised here, with the
        worker's traceback as its ``__cause__``. Entering this method is a
        checkpoint; a task still waiting for a worker when its caller is
        cancelled never runs.

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

        Returns:
            What ``fn`` returned.

        Raises:
            TypeError: ``fn`` is an async function.
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
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"run_sync() needs a regular function, got the async function {fn!r}"
            )
        config = self._config
        # The pool's own limits were checked when it opened; only a call that
        # sets one needs the check again.
        explicit_limits = (
            time_limit is not POOL_DEFAULT or soft_time_limit is not POOL_DEFAULT
        )
        if time_limit is POOL_DEFAULT:
            time_limit = config.time_limit
        if soft_time_limit is POOL_DEFAULT:
            soft_time_limit = config.soft_time_limit
        if kill_on_cancel is POOL_DEFAULT:
            kill_on_cancel = config.kill_on_cancel
        elif not isinstance(kill_on_cancel, bool):
            raise TypeError(f"kill_on_cancel must be a bool, got {kill_on_cancel!r}")
        if explicit_limits:
            time_limit = _no_limit_if_inf(time_limit)
            soft_time_limit = _no_limit_if_inf(soft_time_limit)
            _check_limits(time_limit, soft_time_limit, " of run_sync()")
        self._check_usable()
        job = Job(
            _messages.task_frame(
                fn, args, soft_time_limit, main_importable=self._main_importable
            ),
            time_limit,
            kill_on_cancel,
        )
        job.caller = trio.lowlevel.current_task()
        self._jobs.submit(job)

        def abort(_: object) -> trio.lowlevel.Abort:
            # Cancelled (or KeyboardInterrupt) while parked. With
            # kill_on_cancel=False and the task started, go on waiting for
            # its outcome, like trio.to_thread.run_sync: the cancellation
            # takes effect at the next checkpoint.
            if self._jobs.abandon(job, kill=job.kill_on_cancel):
                job.caller = None  # Trio wakes it: nothing here may
                return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED

        # Parked until _finish reschedules it: cheaper than a trio.Event.
        await trio.lowlevel.wait_task_rescheduled(abort)
        if job.state is JobState.CANCELLED:
            # Given up while sent ahead, and woken once the worker dropped
            # it (or was killed for it): the cancellation is still pending.
            await trio.lowlevel.checkpoint()
        if job.error is not None:
            raise job.error
        assert job.frame is not None
        return _messages.outcome(job.frame)  # type: ignore[no-any-return]

    async def map(
        self,
        fn: Callable[[ItemT], T],
        iterable: Iterable[ItemT] | AsyncIterable[ItemT],
        *,
        chunksize: int | Literal["auto"] = "auto",
    ) -> list[T]:
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
        that is, to each chunk as a whole.

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
        self._check_usable()
        return await _map.map_list(self, fn, iterable, chunksize=chunksize)

    def imap(
        self,
        fn: Callable[[ItemT], T],
        iterable: Iterable[ItemT] | AsyncIterable[ItemT],
        *,
        ordered: bool = True,
        chunksize: int | Literal["auto"] = "auto",
        max_in_flight: int | None = None,
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[T]]:
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
                ``2 * workers * chunksize`` (two chunks per worker). If less
                than ``chunksize``, chunks hold ``max_in_flight`` items; with
                ``"auto"``, chunks hold at most ``max_in_flight // (2 *
                workers)`` items (at least one).

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
        self._check_usable()
        return _map.imap(
            self,
            fn,
            iterable,
            ordered=ordered,
            chunksize=chunksize,
            max_in_flight=max_in_flight,
        )

    # Jobs

    def _check_usable(self) -> None:
        if self._closed or self._jobs.closing:
            raise trio.ClosedResourceError("the pool is closed")
        if self._jobs.broken is not None:
            raise self._jobs.broken_error()
        if _context.current_thread() != self._thread:
            raise _context.other_run("the pool")

    # Lifecycle

    def _open(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._thread = _context.current_thread()
        self._slots.start(nursery)

    def _close(self) -> None:
        """Normal exit: run what was submitted, then stop the workers."""
        self._jobs.closing = True
        self._slots.wake_idle()

    def _abort(self) -> None:
        """Exit by error or cancellation: kill every worker now."""
        self._jobs.closing = True
        self._fail_waiting()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def _fail_waiting(self) -> None:
        self._slots.fail_waiting(lambda: trio.ClosedResourceError("the pool closed"))


# The overloads tell type checkers what each kind of pool is: a local Pool, or
# with a backend, a BackendPool (which has Pool's public methods).
@overload
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
    forward_logs: bool = True,
    backend: None = None,
) -> contextlib.AbstractAsyncContextManager[Pool]: ...
@overload
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
    forward_logs: bool = True,
    backend: Backend,
) -> contextlib.AbstractAsyncContextManager[BackendPool]: ...
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
    forward_logs: bool = True,
    backend: Backend | None = None,
) -> (
    contextlib.AbstractAsyncContextManager[Pool]
    | contextlib.AbstractAsyncContextManager[BackendPool]
):
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
            process may use.
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
            ``soft_time_limit >= time_limit``, ...
        TypeError: An argument has the wrong type, or ``initializer`` and
            ``initargs`` cannot be pickled.

    Entering the block raises :class:`RuntimeError` outside ``trio.run`` (from
    asyncio, say), or in a worker process that is importing the main script
    (the script lacks ``if __name__ == "__main__":``).

    Example::

        async with triopool.open_pool(4) as pool:
            total = await pool.run_sync(sum, range(10))
    """
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
        forward_logs=forward_logs,
    )
    return open_with_options(options, backend)


def open_with_options(
    options: Options, backend: Backend | None
) -> (
    contextlib.AbstractAsyncContextManager[Pool]
    | contextlib.AbstractAsyncContextManager[BackendPool]
):
    """:func:`open_pool`, given its options as one object (see ``_config``)."""
    if backend is not None:
        return open_backend_pool(backend, options)
    pool = Pool(options.config())  # pickles the initializer: fails now if it cannot
    return _run_pool(pool)


@contextlib.asynccontextmanager
async def _run_pool(pool: Pool) -> AsyncIterator[Pool]:
    _context.check_start("triopool.open_pool()")
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            pool._open(nursery)
            try:
                yield pool
            except BaseException as exc:
                body_error = exc
                pool._abort()
            else:
                pool._close()
    except BaseExceptionGroup as group:
        # Ctrl-C while the block waits for the workers to finish arrives here
        # wrapped by the nursery; it leaves as itself, like one from the body.
        interrupt, rest = group.split(KeyboardInterrupt)
        if interrupt is not None and rest is None:
            raise _first_leaf(interrupt) from None
        raise
    finally:
        pool._jobs.closing = True
        pool._closed = True
        pool._fail_waiting()
    if body_error is not None:
        raise body_error


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc

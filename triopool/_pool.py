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
import enum
import functools
import inspect
import logging
import math
import os
import pickle
import signal
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import attrs
import trio

from . import _context, _faults, _map, _pipes, _protocol
from ._errors import (
    BrokenPoolError,
    BrokenWorkerError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TimeLimitExceeded,
    WorkerStartError,
)
from ._forkserver import ForkServer, open_forkserver
from ._spawn import WorkerProcess, describe_exit
from ._worker import Process, Worker, open_worker

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterable,
        AsyncIterator,
        Callable,
        Sequence,
    )
    from types import CoroutineType
    from typing import Final, Literal, TypeVarTuple, Unpack

    from ._backend import Backend
    from ._backend_pool import BackendPool
    from ._typing import AnyResultCallable, AsyncCallable, AsyncFunctionPassedToRunSync

    Ts = TypeVarTuple("Ts")

T = TypeVar("T")
ItemT = TypeVar("ItemT")

_log = logging.getLogger("triopool")

# Test-only fault injection (see _faults): None unless TRIOPOOL_FAULTS was set
# when this module was imported. Tests may replace it.
_PARENT_FAULTS: _faults.Plan | None = _faults.from_environment(_faults.PARENT_STAGES)


class PoolDefault(enum.Enum):
    """The type of :data:`POOL_DEFAULT`, which means "the pool's default".

    ``POOL_DEFAULT``, its one member, is the default of ``time_limit``,
    ``soft_time_limit`` and ``kill_on_cancel`` in :meth:`Pool.run_sync`: the
    call uses the value given to :func:`open_pool`. Pass ``None`` instead to
    switch a limit off for one call. So ``float | PoolDefault | None`` in a
    signature reads "seconds, the pool's default, or no limit".
    """

    POOL_DEFAULT = enum.auto()

    def __repr__(self) -> str:
        return "POOL_DEFAULT"


POOL_DEFAULT = PoolDefault.POOL_DEFAULT


# Validation: every message names the parameter and the bad value.


def _check_number(
    name: str, value: object, *, allow_none: bool, allow_zero: bool = False
) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _check_count(name: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")


def _check_limits(
    time_limit: float | None, soft_time_limit: float | None, where: str
) -> None:
    _check_number("time_limit", time_limit, allow_none=True)
    _check_number("soft_time_limit", soft_time_limit, allow_none=True)
    if (
        time_limit is not None
        and soft_time_limit is not None
        and soft_time_limit >= time_limit
    ):
        raise ValueError(
            f"soft_time_limit must be < time_limit{where}, got "
            f"soft_time_limit={soft_time_limit!r} and time_limit={time_limit!r}"
        )


def _no_limit_if_inf(limit: float | None) -> float | None:
    """An infinite limit is no limit."""
    return None if limit == math.inf else limit


def _as_tuple(name: str, value: object) -> tuple[Any, ...]:
    # A string is iterable, but forkserver_preload="numpy" would otherwise
    # become the modules n, u, m, p and y.
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a sequence (a list or tuple), got {value!r}")
    return tuple(value)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _parameter_check(fn: Callable[[str, object], None]) -> Any:
    def validator(
        instance: object, attribute: attrs.Attribute[Any], value: Any
    ) -> None:
        fn(attribute.name, value)

    return validator


@attrs.frozen
class PoolConfig:
    """The validated options of one pool (see :func:`open_pool`)."""

    workers: int = attrs.field(
        validator=_parameter_check(lambda n, v: _check_count(n, v, allow_none=False))
    )
    start_method: Literal["spawn", "forkserver"] = attrs.field()
    forkserver_preload: tuple[str, ...] = attrs.field()
    initializer: Callable[..., object] | None = attrs.field()
    initargs: tuple[Any, ...] = attrs.field()
    max_tasks_per_child: int | None = attrs.field(
        validator=_parameter_check(lambda n, v: _check_count(n, v, allow_none=True))
    )
    max_memory_per_child: int | None = attrs.field(
        validator=_parameter_check(lambda n, v: _check_count(n, v, allow_none=True))
    )
    start_timeout: float = attrs.field(
        validator=_parameter_check(lambda n, v: _check_number(n, v, allow_none=False))
    )
    max_start_failures: int = attrs.field(
        validator=_parameter_check(lambda n, v: _check_count(n, v, allow_none=False))
    )
    time_limit: float | None = attrs.field(converter=_no_limit_if_inf)
    soft_time_limit: float | None = attrs.field(converter=_no_limit_if_inf)
    kill_on_cancel: bool = attrs.field()
    shutdown_timeout: float = attrs.field(
        validator=_parameter_check(
            lambda n, v: _check_number(n, v, allow_none=False, allow_zero=True)
        )
    )

    @start_method.validator  # pyright: ignore[reportAttributeAccessIssue]
    def _check_start_method(self, attribute: object, value: object) -> None:
        if value not in ("spawn", "forkserver"):
            raise ValueError(
                f"start_method must be 'spawn' or 'forkserver', got {value!r}"
            )

    @forkserver_preload.validator  # pyright: ignore[reportAttributeAccessIssue]
    def _check_preload(self, attribute: object, value: tuple[object, ...]) -> None:
        for name in value:
            if not isinstance(name, str) or not name:
                raise TypeError(
                    f"forkserver_preload must hold module names, got {name!r}"
                )

    @initializer.validator  # pyright: ignore[reportFunctionMemberAccess, reportOptionalMemberAccess]
    def _check_initializer(self, attribute: object, value: object) -> None:
        if value is not None and not callable(value):
            raise TypeError(f"initializer must be callable or None, got {value!r}")

    @kill_on_cancel.validator  # pyright: ignore[reportAttributeAccessIssue]
    def _check_kill_on_cancel(self, attribute: object, value: object) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"kill_on_cancel must be a bool, got {value!r}")

    def __attrs_post_init__(self) -> None:
        _check_limits(self.time_limit, self.soft_time_limit, "")


@attrs.frozen
class PoolStatistics:
    """A snapshot of a pool's state, from :meth:`Pool.statistics`.

    The worker counters satisfy ``workers_started == workers_alive +
    workers_recycled + workers_lost + start_failures + workers_stopped``, and
    once nothing is in flight ``tasks_submitted == tasks_completed +
    tasks_failed + tasks_cancelled``.

    Attributes:
        workers: The target number of workers.
        workers_alive: Worker processes started and not yet reaped, starting
            ones included.
        workers_idle: Workers that are up and waiting for a task.
        workers_busy: Workers running a task.
        tasks_waiting: Tasks submitted and not yet handed to a worker.
        tasks_running: Tasks handed to a worker and not yet finished.
        tasks_completed: Tasks that returned a value.
        tasks_failed: Tasks that raised, in the worker or because the worker
            died or hit a time limit.
        tasks_cancelled: Tasks whose caller was cancelled before they ended.
        tasks_submitted: All tasks ever submitted.
        workers_started: Worker starts so far, replacements included. An
            attempt that could not even create the process (no fds left,
            say) counts here too, and as a start failure, and so does a fork
            server that failed to start or died before forking (it stood
            between the pool and its next worker), so the identity above
            holds whatever happens.
        workers_recycled: Retired by ``max_tasks_per_child`` or
            ``max_memory_per_child``.
        workers_lost: Died unexpectedly, or killed by a time limit, a
            cancellation or a desynchronised pipe.
        start_failures: Failed starts (initializer error, early exit, start
            timeout, no process could be created).
        workers_stopped: Stopped because the pool closed or broke.
    """

    workers: int
    workers_alive: int
    workers_idle: int
    workers_busy: int
    tasks_waiting: int
    tasks_running: int
    tasks_completed: int
    tasks_failed: int
    tasks_cancelled: int
    tasks_submitted: int
    workers_started: int
    workers_recycled: int
    workers_lost: int
    start_failures: int
    workers_stopped: int


class _JobState(enum.IntEnum):
    WAITING = 0  # in the queue, or handed to an idle slot that has not woken
    RUNNING = 1
    DONE = 2
    CANCELLED = 3
    # Written to a busy worker ahead of time (pipelining), not started: it
    # counts as waiting, and a SKIP can still take it back.
    SENT = 4


@attrs.define(eq=False)
class _Job:
    pieces: list[bytes | memoryview]
    time_limit: float | None
    kill_on_cancel: bool
    # The caller's task, parked until the job is settled (see run_sync).
    caller: trio.lowlevel.Task | None = None
    state: _JobState = _JobState.WAITING
    frame: _protocol.Frame | None = None
    error: BaseException | None = None
    # While it runs: the cancel scope around the part of its worker's task
    # that is at work for it (a blocked send, or the wait for its answer).
    # Cancelling it makes that task kill the worker.
    scope: trio.CancelScope | None = None
    # Once sent: when its hard time limit expires (trio time).
    deadline: float = math.inf
    # What a task that ended its worker raised (FATAL), for the error's cause.
    fatal_cause: BaseException | None = None
    # Once written: its number on its worker (from 1, see _child._Pipes), the
    # worker's bytes_written after it, and the link it went to.
    number: int = 0
    end: int = 0
    link: _Link | None = None
    # Sent ahead, then given up by its caller: a SKIP was asked for, and the
    # caller waits for the worker's verdict (dropped, or started after all).
    skip: bool = False


@attrs.define(eq=False)
class _Slot:
    number: int
    # While starting a worker: cancelled when the pool closes with no work left.
    start_scope: trio.CancelScope | None = None


@attrs.define(eq=False)
class _Link:
    """One up worker and the job it runs, shared by the two tasks that serve
    it: the reader (the worker's owning task, which receives every answer
    and sends the next queued job itself) and the feeder (which sends a job a
    caller hands to the idle worker)."""

    worker: Worker
    # The feeder task. It parks whenever it has nothing to do: no SKIP to
    # write, no job ``handed`` to it, no ``recheck``. Whoever gives it work
    # sets one of these and wakes it with Pool._wake_feeder, which reschedules
    # it only if it is parked: a wake-up never happens twice. The link is in
    # Pool._idle while its worker idles with nothing handed. A link, not its
    # slot, holds these: a retiring worker's link may outlive the start of
    # its replacement's.
    feeder: trio.lowlevel.Task | None = None
    handed: _Job | None = None
    current: _Job | None = None
    # The current job was written whole (else, at the worker's death, it
    # never started and runs elsewhere).
    sent: bool = False
    # Jobs written ahead (pipelining) behind the current one, oldest first.
    ahead: deque[_Job] = attrs.field(factory=deque)
    # The worker confirmed that it started the current job (an answer with
    # the AHEAD flag). Otherwise it starts it once it has read it whole.
    sure_started: bool = False
    # Tasks numbered on this worker so far.
    numbered: int = 0
    # When the current job started, and how long the last one took (trio
    # time): jobs go ahead only behind short ones.
    started_at: float = 0.0
    last_duration: float = math.inf
    # Task numbers to send SKIP frames for (the feeder writes them).
    skips: list[int] = attrs.field(factory=list)
    # The feeder is parked and nobody has woken it yet.
    parked: bool = False
    # The feeder is in the middle of a frame: nothing else may be written.
    writing: bool = False
    # The worker was killed for its current job but had jobs ahead: its
    # answers are read to its end, to learn which of them it started.
    killed: bool = False
    # The scope of the reader's wait for a frame.
    read_scope: trio.CancelScope | None = None
    # The scope of a write that waits for room in the pipe (reader or feeder).
    write_scope: trio.CancelScope | None = None
    # The feeder must take the next queued job or stop: the pool closed or
    # broke while the worker idled (see Pool._wake_idle).
    recheck: bool = False
    # The running job was cancelled, or ran out of time, while bytes from the
    # worker were waiting: they are read first, for they may be its answer
    # (and the worker busy with the next job, which a kill would hit). Set
    # once per job (``heard``), for at most _HEAR_FIRST seconds.
    hear_first: bool = False
    heard: _Job | None = None
    stop_requested: bool = False
    # A FATAL frame from the running job, until the worker's exit is seen.
    fatal_frame: _protocol.Frame | None = None
    tasks_done: int = 0
    # The worker serves no more: the feeder must not touch it.
    finished: bool = False


@attrs.define(eq=False)
class _Turn:
    """One worker's turn in its slot, as the slot sees it."""

    # Set once the worker serves no more (it may still be exiting).
    served: trio.Event = attrs.field(factory=trio.Event)
    start_failed: bool = False


# Pipelining (Pool._send_ahead): at most this many jobs written ahead to a
# busy worker, and only behind a job that took at most this long (seconds).
_AHEAD: Final = 8
_AHEAD_AFTER: Final = 0.002
# How long the rest of an answer that had begun to arrive may take before a
# cancellation or a deadline is acted on after all (see _Link.hear_first).
_HEAR_FIRST: Final = 1.0

# The frames that answer a task.
_ANSWERS = frozenset({_protocol.RESULT, _protocol.ERROR, _protocol.SERIAL_ERROR})


class _End(enum.Enum):
    """Why a slot let go of its worker."""

    CLOSED = "stopped"
    RETIRED = "retired"
    LOST = "lost"


class _Ended(enum.Enum):
    """How a worker's service ended before it is settled (see Pool._ended)."""

    EOF = "its pipe reached EOF"
    FATAL = "a task ended it"


class Pool:
    """A pool of worker processes; get one from :func:`open_pool`.

    Any number of tasks may use it concurrently. It is usable only inside the
    ``async with open_pool(...)`` block that made it.
    """

    def __init__(self, config: PoolConfig) -> None:
        self._config = config
        self._config_pieces = _config_frame(config)
        self._main_importable = _main_module() != (None, None)
        self._waiting: deque[_Job] = deque()
        self._idle: list[_Link] = []
        self._links: set[_Link] = set()
        self._slots = [_Slot(number) for number in range(config.workers)]
        self._closing = False
        self._closed = False
        self._broken: BrokenPoolError | None = None
        self._consecutive_start_failures = 0
        self._nursery: trio.Nursery | None = None
        self._slots_left = 0
        self._slots_done = trio.Event()
        self._start_permits = trio.Semaphore(_usable_cpus())
        self._thread: int | None = None  # of the run that opened it (see _open)
        # start_method="forkserver": the running server, and an event set (and
        # replaced) whenever it changes or the pool breaks.
        self._forkserver: ForkServer | None = None
        self._forkserver_changed = trio.Event()
        # Counters for statistics().
        self._tasks_waiting = 0
        self._tasks_running = 0
        self._tasks_completed = 0
        self._tasks_failed = 0
        self._tasks_cancelled = 0
        self._tasks_submitted = 0
        self._workers_alive = 0
        self._workers_started = 0
        self._workers_recycled = 0
        self._workers_lost = 0
        self._start_failures = 0
        self._workers_stopped = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._broken else "open"
        return f"<triopool.Pool {state} workers={self._config.workers}>"

    # Public API

    def statistics(self) -> PoolStatistics:
        """Return a snapshot of the pool's counters (cheap: no I/O)."""
        return PoolStatistics(
            workers=self._config.workers,
            workers_alive=self._workers_alive,
            workers_idle=len(self._idle),
            workers_busy=self._tasks_running,
            tasks_waiting=self._tasks_waiting,
            tasks_running=self._tasks_running,
            tasks_completed=self._tasks_completed,
            tasks_failed=self._tasks_failed,
            tasks_cancelled=self._tasks_cancelled,
            tasks_submitted=self._tasks_submitted,
            workers_started=self._workers_started,
            workers_recycled=self._workers_recycled,
            workers_lost=self._workers_lost,
            start_failures=self._start_failures,
            workers_stopped=self._workers_stopped,
        )

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
        # A function from a __main__ the workers cannot run again (a REPL, a
        # notebook, python -c) pickles by reference here and then fails to
        # unpickle there: send it by value instead.
        # The function may also come as an argument (map's chunks).
        by_value = not self._main_importable and (
            _from_main(fn) or any(_from_main(arg) for arg in args)
        )
        try:
            payload, buffers = _protocol.dumps_with_fallback(
                (fn, args, soft_time_limit), by_value=by_value
            )
        except Exception as exc:
            raise SerializationError(
                f"could not pickle the task {_describe_callable(fn)}: "
                f"{type(exc).__name__}: {exc}{_protocol.cloudpickle_hint(exc)}"
            ) from exc
        job = _Job(
            _protocol.encode_frame(_protocol.TASK, payload, buffers),
            time_limit,
            kill_on_cancel,
        )
        del payload, buffers
        job.caller = trio.lowlevel.current_task()
        self._submit(job)

        def abort(_: object) -> trio.lowlevel.Abort:
            # Cancelled (or KeyboardInterrupt) while parked. With
            # kill_on_cancel=False and the task started, go on waiting for
            # its outcome, like trio.to_thread.run_sync: the cancellation
            # takes effect at the next checkpoint.
            if self._abandon(job, kill=job.kill_on_cancel):
                job.caller = None  # Trio wakes it: nothing here may
                return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED

        # Parked until _finish reschedules it: cheaper than a trio.Event.
        await trio.lowlevel.wait_task_rescheduled(abort)
        if job.state is _JobState.CANCELLED:
            # Given up while sent ahead, and woken once the worker dropped
            # it (or was killed for it): the cancellation is still pending.
            await trio.lowlevel.checkpoint()
        return _outcome(job)  # type: ignore[no-any-return]

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
        if self._closed or self._closing:
            raise trio.ClosedResourceError("the pool is closed")
        if self._broken is not None:
            raise self._broken_error()
        if _context.current_thread() != self._thread:
            raise _context.other_run("the pool")

    def _broken_error(self) -> BrokenPoolError:
        # A fresh instance per raise: one exception object raised in several
        # tasks at once would have its traceback garbled.
        assert self._broken is not None
        error = BrokenPoolError(*self._broken.args)
        error.__cause__ = self._broken.__cause__
        return error

    def _submit(self, job: _Job) -> None:
        self._tasks_submitted += 1
        self._tasks_waiting += 1
        self._dispatch(job, first=False)

    def _dispatch(self, job: _Job, *, first: bool) -> None:
        """Hand a waiting job to an idle slot, or queue it (at the front if
        ``first``: it was taken once already and goes before newer ones)."""
        if self._idle:
            link = self._idle.pop()
            link.handed = job
            _wake_feeder(link)
        elif first:
            self._waiting.appendleft(job)
        else:
            self._waiting.append(job)

    def _requeue(self, job: _Job) -> None:
        """Put back a running job whose worker died before it could start it."""
        if job.state is not _JobState.RUNNING:
            return  # its caller was cancelled and is gone
        if self._broken is not None:
            # The slots stop once the pool is broken and the queue was failed
            # then: a job queued now would wait forever.
            job.error = self._broken_error()
            self._finish(job, failed=True)
            return
        job.state = _JobState.WAITING
        self._tasks_running -= 1
        self._tasks_waiting += 1
        self._dispatch(job, first=True)

    def _hand_back(self, job: _Job) -> None:
        """A waiting job handed to a slot whose worker went before taking it."""
        job.state = _JobState.RUNNING
        self._tasks_waiting -= 1
        self._tasks_running += 1
        self._requeue(job)

    def _abandon(self, job: _Job, *, kill: bool) -> bool:
        """The caller stops waiting. Returns False if it must wait on: for
        the outcome (``kill`` is false and the task has started), or for the
        worker's verdict on a job sent ahead (see _answers)."""
        if job.state is _JobState.SENT:
            if not job.skip:
                job.skip = True
                link = job.link
                assert link is not None
                link.skips.append(job.number)
                _wake_feeder(link)
            return False
        if job.state is _JobState.WAITING:
            job.state = _JobState.CANCELLED
            self._tasks_waiting -= 1
            self._tasks_cancelled += 1
            return True
        if not kill:
            return False
        if job.state is _JobState.RUNNING:
            job.state = _JobState.CANCELLED
            self._tasks_running -= 1
            self._tasks_cancelled += 1
            if job.scope is not None:
                job.scope.cancel()  # the slot kills the worker
        return True

    def _next_job(self) -> _Job | None:
        while self._waiting:
            job = self._waiting.popleft()
            if job.state is _JobState.WAITING:
                return job
        return None

    def _finish(self, job: _Job, *, failed: bool) -> None:
        if job.state is not _JobState.RUNNING:
            return  # its caller was cancelled and is gone
        job.state = _JobState.DONE
        self._tasks_running -= 1
        if failed:
            self._tasks_failed += 1
        else:
            self._tasks_completed += 1
        _wake(job)

    def _cancelled_ahead(self, job: _Job) -> None:
        """A job sent ahead whose caller gave up never ran: wake the caller
        to raise its Cancelled."""
        job.state = _JobState.CANCELLED
        job.error = RuntimeError("the task was cancelled")  # not raised
        self._tasks_waiting -= 1
        self._tasks_cancelled += 1
        _wake(job)

    def _unsend(self, job: _Job, error: BaseException | None = None) -> None:
        """A job sent ahead that its worker never started: it goes back to
        the front of the queue (or fails with ``error``)."""
        job.link = None
        if job.skip:
            self._cancelled_ahead(job)
            return
        if error is None and self._broken is not None:
            error = self._broken_error()
        if error is not None:
            job.state = _JobState.RUNNING
            self._tasks_waiting -= 1
            self._tasks_running += 1
            job.error = error
            self._finish(job, failed=True)
            return
        job.state = _JobState.WAITING
        self._dispatch(job, first=True)

    def _unsend_all(self, link: _Link, error: BaseException | None = None) -> None:
        """:meth:`_unsend` every job the link's worker holds, in order."""
        while link.ahead:
            # From the back: each goes to the front of the queue.
            self._unsend(link.ahead.pop(), error)

    def _fail_waiting(self, make_error: Callable[[], BaseException]) -> None:
        jobs = list(self._waiting)
        self._waiting.clear()
        for link in self._links:
            if link.handed is not None:
                jobs.append(link.handed)
                link.handed = None
        for job in jobs:
            if job.state is _JobState.WAITING:
                job.state = _JobState.RUNNING
                self._tasks_waiting -= 1
                self._tasks_running += 1
                job.error = make_error()
                self._finish(job, failed=True)

    # Slots

    async def _run_slot(self, slot: _Slot) -> None:
        try:
            await self._slot_loop(slot)
        finally:
            self._slots_left -= 1
            if not self._slots_left:
                self._slots_done.set()

    async def _slot_loop(self, slot: _Slot) -> None:
        # Each worker lives in a task of its own that owns it from its start
        # to its reaping. The slot starts the next worker as soon as the
        # current one stops serving, so a retiring worker exits and is reaped
        # while its replacement starts; the slot's nursery waits for both.
        async with trio.open_nursery() as workers:
            while self._broken is None and not self._closing_idle():
                launch: Callable[[int, int], Process] = WorkerProcess
                if self._config.start_method == "forkserver":
                    server = await self._running_forkserver()
                    if server is None:
                        return
                    launch = server.launch
                if not await self._start_permit(slot):
                    continue  # the pool closed meanwhile, with no work left
                self._workers_alive += 1
                self._workers_started += 1
                turn = _Turn()
                workers.start_soon(self._run_worker, slot, launch, turn)
                await turn.served.wait()
                if turn.start_failed:
                    # Back off a little, so that a start that fails at once (no
                    # fds left, say) does not spin.
                    await trio.sleep(
                        min(0.01 * 2**self._consecutive_start_failures, 0.5)
                    )

    async def _start_permit(self, slot: _Slot) -> bool:
        """Wait until fewer workers start than there are CPUs; take a permit.

        Starting more workers at once than the machine has CPUs makes none of
        them report up sooner, only each of them later: with costly imports
        or initializers they would all miss ``start_timeout`` together, and a
        busy machine would pass for a crash loop. Returns False if the pool
        closed meanwhile with no work left (no permit taken).
        """
        taken = False
        with trio.CancelScope() as scope:
            slot.start_scope = scope
            await self._start_permits.acquire()
            taken = True
        slot.start_scope = None
        return taken

    async def _run_worker(
        self, slot: _Slot, launch: Callable[[int, int], Process], turn: _Turn
    ) -> None:
        """One worker's life in its slot: start, serve, retire or die, reap."""
        # Torn down by the pool's cancellation unless we learn otherwise.
        end: _End | None = _End.CLOSED
        permit = True  # taken by the slot for this start (see _start_permit)
        try:
            async with open_worker(launch) as worker:
                _log.debug("worker %d started (slot %d)", worker.pid, slot.number)
                up = await self._start(slot, worker)
                permit = False
                self._start_permits.release()
                if up:
                    end = await self._serve(worker, turn.served.set)
        except WorkerStartError as exc:
            end = None
            self._start_failed(exc)
        except OSError as exc:
            # No pipes or no process: the same as a worker failing to start.
            end = None
            error = WorkerStartError(f"could not start a worker process: {exc}")
            error.__cause__ = exc
            self._start_failed(error)
        finally:
            if permit:
                self._start_permits.release()
            self._workers_alive -= 1
            if end is _End.RETIRED:
                self._workers_recycled += 1
            elif end is _End.LOST:
                self._workers_lost += 1
            elif end is _End.CLOSED:
                self._workers_stopped += 1
            turn.start_failed = end is None
            turn.served.set()

    async def _start(self, slot: _Slot, worker: Worker) -> bool:
        """Hand the worker its configuration and wait for it to report up.

        Returns False if the pool closed meanwhile and has no work left.
        Raises WorkerStartError if the worker fails to start.
        """
        timeout = self._config.start_timeout
        frame: _protocol.Frame | None = None
        with trio.CancelScope() as start_scope:
            slot.start_scope = start_scope
            with trio.move_on_after(timeout) as timer:
                if _PARENT_FAULTS is not None:
                    await _parent_fault(_PARENT_FAULTS, worker, "before_config")
                try:
                    await worker.send(self._config_pieces)
                except trio.BrokenResourceError:
                    pass  # it died already: reported below as an early exit
                else:
                    frame = await worker.receive()
        slot.start_scope = None
        if start_scope.cancelled_caught:
            return False  # the pool closed and has no work for this worker
        if timer.cancelled_caught:
            raise WorkerStartError(
                f"worker {worker.pid} did not report up within {timeout:g} s"
            )
        if frame is None:
            exitcode = await worker.reap_after_eof()
            raise WorkerStartError(
                f"worker {worker.pid} exited ({_ended(worker, exitcode)}) "
                "before reporting up"
            )
        if frame.kind == _protocol.START_FAILED:
            type_name, message, traceback_text = _protocol.loads(
                frame.payload, frame.buffers
            )
            error = WorkerStartError(
                f"the initializer raised in worker {worker.pid}: {type_name}: {message}"
            )
            error.__cause__ = RemoteTraceback(traceback_text)
            raise error
        if frame.kind != _protocol.UP:
            raise WorkerStartError(
                f"worker {worker.pid} sent {frame!r} instead of reporting up"
            )
        self._consecutive_start_failures = 0
        _log.debug("worker %d up", worker.pid)
        return True

    def _closing_idle(self) -> bool:
        return self._closing and not self._waiting

    def _start_failed(self, error: WorkerStartError) -> None:
        self._start_failures += 1
        self._consecutive_start_failures += 1
        count = self._consecutive_start_failures
        _log.warning("worker failed to start (%d in a row): %s", count, error)
        if count >= self._config.max_start_failures and self._broken is None:
            broken = BrokenPoolError(
                f"{count} worker starts failed in a row; the last: {error}"
            )
            broken.__cause__ = error
            self._broken = broken
            _log.error("pool broken: %s", broken)
            self._fail_waiting(self._broken_error)
            self._wake_idle()
            self._forkserver_changed.set()

    # The fork server

    async def _running_forkserver(self) -> ForkServer | None:
        """The fork server once it runs; None if the pool broke meanwhile."""
        while self._broken is None:
            server = self._forkserver
            if server is not None and server.running:
                return server
            await self._forkserver_changed.wait()
        return None

    def _set_forkserver(self, server: ForkServer | None) -> None:
        self._forkserver = server
        self._forkserver_changed.set()
        self._forkserver_changed = trio.Event()

    async def _run_forkserver(self) -> None:
        """Keep a fork server running for the slots until they are all done.

        The server's process and socket belong to this task's ``async with``;
        a server that dies is replaced. One that fails to start, or dies
        before forking any worker, counts as a start failure.
        """
        config = self._config
        failures = 0
        while not self._slots_done.is_set():
            if self._broken is not None:
                # Broken, and no server running: the slots are ending.
                await self._slots_done.wait()
                return
            error: WorkerStartError | None = None
            try:
                async with open_forkserver(
                    config.forkserver_preload, config.start_timeout
                ) as server:
                    _log.debug("fork server %d up", server.pid)
                    self._set_forkserver(server)
                    try:
                        stopped = await server.serve(self._slots_done)
                    finally:
                        self._set_forkserver(None)
                if stopped:
                    return
                exitcode = server.process.returncode
                _log.warning(
                    "fork server %d died (%s); starting a new one",
                    server.pid,
                    describe_exit(exitcode),
                )
                self._drop_dead_idle()
                if not server.forks:
                    error = WorkerStartError(
                        f"the fork server exited ({describe_exit(exitcode)}) "
                        "before forking any worker"
                    )
            except WorkerStartError as exc:
                error = exc
            except OSError as exc:
                error = WorkerStartError(f"could not start the fork server: {exc}")
                error.__cause__ = exc
            if error is None:
                failures = 0
                continue
            # A start failure, counted as a start too (see PoolStatistics).
            self._workers_started += 1
            self._start_failed(error)
            failures += 1
            with trio.move_on_after(min(0.01 * 2**failures, 0.5)):
                await self._slots_done.wait()

    def _drop_dead_idle(self) -> None:
        """End at once the idle workers a dead fork server took with it.

        They are settled as killed (PR_SET_PDEATHSIG) when the server's
        connection ends, a moment before their pipes close: none may get a
        task meanwhile, and the slots start their replacements now.
        """
        for link in self._links:
            if link.current is None and link.worker.known_dead:
                if link in self._idle:
                    self._idle.remove(link)
                if link.read_scope is not None:
                    link.read_scope.cancel()

    def _wake_idle(self) -> None:
        idle = self._idle
        self._idle = []
        for link in idle:
            link.recheck = True
            _wake_feeder(link)
        for slot in self._slots:
            if slot.start_scope is not None and self._closing_idle():
                slot.start_scope.cancel()

    async def _serve(self, worker: Worker, retiring: Callable[[], None]) -> _End:
        """Run jobs on an up worker until it must go; say why it went.

        This task, the worker's owner, reads every frame the worker sends,
        delivers each answer and sends the next queued job itself, so a busy
        worker needs no hand-off between tasks. A feeder task parks while the
        worker is idle and sends the job a caller hands over: waking a parked
        task costs far less than cancelling a wait on the pipe. Both tasks
        live inside the worker's ``async with``, which alone closes its fds.

        Calls ``retiring()`` once the worker is done serving and only needs to
        exit, so that the slot can start its replacement meanwhile.
        """
        link = _Link(worker)
        self._links.add(link)
        async with trio.open_nursery() as nursery:
            await nursery.start(self._feed, link)
            nursery.start_soon(self._watch, link)
            try:
                return await self._read(link, retiring)
            finally:
                link.finished = True
                # Left behind by a worker killed for breaking the protocol.
                self._unsend_all(link)
                self._links.discard(link)
                if link in self._idle:
                    self._idle.remove(link)
                handed = link.handed
                link.handed = None
                if handed is not None and handed.state is _JobState.WAITING:
                    # Handed over just as the worker went: it never started.
                    self._hand_back(handed)
                nursery.cancel_scope.cancel()  # the feeder, parked or sending
        raise AssertionError("unreachable")  # pragma: no cover

    async def _watch(self, link: _Link) -> None:
        """Notice the worker's exit even while its pipes stay open.

        A process that a task started (or forked) may hold the worker's pipe
        ends after the worker died, so EOF may come late or never. Once the
        process has exited, the worker's pipes give what it wrote and then
        EOF without waiting (see ``Worker.receive``); the waits under way are
        cancelled here, so the reader settles the worker at once.
        """
        process = link.worker.process
        await process.wait()
        if not process.exited:
            return  # orphaned: its pipes say when it is gone (see ForkedProcess)
        for scope in (link.read_scope, link.write_scope):
            if scope is not None:
                scope.cancel()

    async def _feed(
        self,
        link: _Link,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send the jobs callers hand to the slot while its worker is idle,
        and the SKIP frames callers that gave up on jobs sent ahead ask for."""

        def abort(_: object) -> trio.lowlevel.Abort:
            link.parked = False
            if link in self._idle:
                self._idle.remove(link)
            return trio.lowlevel.Abort.SUCCEEDED

        link.feeder = trio.lowlevel.current_task()
        task_status.started()
        try:
            while not link.finished:
                if link.skips:
                    await self._send_skips(link)
                    continue
                if link.handed is None and not link.recheck:
                    # Nothing to do: park until _wake_feeder.
                    link.parked = True
                    await trio.lowlevel.wait_task_rescheduled(abort)
                    continue
                job = link.handed
                link.handed = None
                link.recheck = False
                if job is None or job.state is not _JobState.WAITING:
                    # Woken for the pool's close, or the caller was cancelled
                    # before this task woke.
                    job = self._next_job()
                    if job is None:
                        if self._closing or self._broken is not None:
                            link.stop_requested = True
                            if link.read_scope is not None:
                                link.read_scope.cancel()
                            return
                        self._idle.append(link)
                        continue
                await self._send(link, job)
        finally:
            link.feeder = None

    async def _send_skips(self, link: _Link) -> None:
        """Ask the worker to drop jobs sent ahead whose callers gave up, and
        signal it so that it does so even in the middle of a long task."""
        data = b"".join(
            [_protocol.number_frame(_protocol.SKIP, number) for number in link.skips]
        )
        link.skips.clear()
        worker = link.worker
        link.writing = True
        try:
            rest = worker.write_now([data])
            if rest:
                with trio.CancelScope() as scope:
                    link.write_scope = scope
                    await worker.send(rest)
                link.write_scope = None
                if scope.cancelled_caught:
                    worker.kill()  # out of sync: the reader sees EOF
                    return
        except trio.BrokenResourceError:
            return  # dead: the reader sees EOF and settles the jobs
        finally:
            link.writing = False
        worker.process.signal(signal.SIGURG)

    async def _next_or_idle(self, link: _Link) -> bool:
        """Send the next queued job to the free worker, or make the slot idle.

        Returns False if the worker must stop: the pool closes (and has
        nothing left to run) or broke.
        """
        job = self._next_job()
        if job is not None:
            await self._send(link, job)
            return True
        if self._closing or self._broken is not None:
            return False
        self._idle.append(link)  # the feeder is parked: callers wake it
        return True

    async def _send(self, link: _Link, job: _Job) -> None:
        """Start a waiting job on the link's free worker: write it whole.

        If the worker is gone, or the write is cancelled halfway (the stream
        is then out of sync, so the worker is killed), the reader sees EOF and
        settles the job.
        """
        worker = link.worker
        if worker.known_dead:
            # Known dead before its pipe says so: a forked worker whose fork
            # server died is settled as killed at once (PR_SET_PDEATHSIG), but
            # may still read a task before the signal lands. The job goes to
            # another worker; the reader sees EOF and ends this one.
            self._hand_back(job)
            if link.read_scope is not None:
                link.read_scope.cancel()
            return
        job.state = _JobState.RUNNING
        self._tasks_waiting -= 1
        self._tasks_running += 1
        link.current = job
        link.sent = False
        if _PARENT_FAULTS is not None:
            with trio.CancelScope() as job.scope:
                await _parent_fault(
                    _PARENT_FAULTS, worker, "before_send", link.tasks_done + 1
                )
            job.scope = None
            if job.state is _JobState.CANCELLED:
                worker.kill()
                return
        try:
            rest = worker.write_now(job.pieces)
            if rest:
                # The pipe is full (a large task): the caller may give up
                # while the rest is written.
                with trio.CancelScope() as scope:
                    job.scope = link.write_scope = scope
                    await worker.send(rest)
                job.scope = link.write_scope = None
                if scope.cancelled_caught:
                    worker.kill()
                    return
        except trio.BrokenResourceError:
            return  # the worker is dead: the reader sees EOF
        link.sent = True
        _number(link, job)
        link.sure_started = False
        link.started_at = now = trio.current_time()
        if job.time_limit is not None:
            # Counted from the moment the worker has the task.
            job.deadline = now + job.time_limit
        read_scope = link.read_scope
        if read_scope is not None:
            # Arm the reader's wait for the answer.
            job.scope = read_scope
            if job.time_limit is not None:
                read_scope.deadline = job.deadline

    async def _read(self, link: _Link, retiring: Callable[[], None]) -> _End:
        """Receive and deliver the worker's answers until it must go.

        The waits for answers run in one cancel scope, ``link.read_scope``,
        kept across answers (entering a scope per answer costs more than the
        rest of a round trip's bookkeeping). It is cancelled by a caller that
        gives up on the running job, by the running job's time limit (its
        deadline) and by the feeder when an idle worker must stop. A
        cancellation can land late (a deadline that expired just as the
        answer came in), so when it arrives the reason is checked against the
        current job and, if none holds, the scope is simply renewed.
        """
        worker = link.worker
        if not await self._next_or_idle(link):
            return await self._ended(link, _End.CLOSED, retiring)
        try:
            while True:
                end: _End | _Ended | None = None
                with trio.CancelScope() as scope:
                    link.read_scope = scope
                    job = link.current
                    if job is None:
                        if worker.known_dead:
                            scope.cancel()  # known dead: see below
                    elif link.sent and not link.killed and not worker.process.exited:
                        job.scope = scope
                        if link.hear_first:
                            scope.deadline = trio.current_time() + _HEAR_FIRST
                        else:
                            scope.deadline = job.deadline
                            if job.state is _JobState.CANCELLED:
                                scope.cancel()
                    end = await self._answers(link)
                link.read_scope = None
                job = link.current
                if job is not None:
                    job.scope = None
                if end is not None:
                    return await self._ended(link, end, retiring)
                # The scope was cancelled: find out why.
                link.hear_first = False
                if link.killed or worker.process.exited:
                    # Read its answers to the end. Once it has exited, EOF
                    # comes at once, even if a process it started holds its
                    # pipe.
                    continue
                if job is None:
                    if link.stop_requested:
                        return await self._ended(link, _End.CLOSED, retiring)
                    if worker.known_dead:
                        # Went with its fork server: lost, even if its pipe
                        # has not said so yet (see _send).
                        return await self._ended(link, _Ended.EOF, retiring)
                    continue  # a stray cancellation: the worker idles on
                if not link.sent:
                    # Cancelled while the reader itself wrote the job: the
                    # stream is out of sync.
                    worker.kill()
                    return await self._ended(link, _Ended.EOF, retiring)
                if (
                    job.state is _JobState.CANCELLED
                    or trio.current_time() >= job.deadline
                ):
                    if link.heard is not job and worker.answer_waiting():
                        link.heard = job
                        link.hear_first = True
                        continue
                    self._stop_job(worker, job)
                    if not link.ahead:
                        return _End.LOST  # killed as its block ends
                    # Jobs sent ahead: the worker may have started the next
                    # one already. Kill it and read its answers to the end.
                    worker.kill()
                    link.killed = True
                # Else a late cancellation meant for an earlier job: serve on.
        except BaseException:
            # The pool is being torn down around the running job.
            job = link.current
            if job is not None:
                job.error = trio.ClosedResourceError(
                    "the pool closed while the task ran"
                )
                self._finish(job, failed=True)
            self._unsend_all(
                link, trio.ClosedResourceError("the pool closed before the task ran")
            )
            raise

    async def _answers(self, link: _Link) -> _End | _Ended | None:
        """The reader's loop inside its scope: take an answer, deliver it,
        send the next job (and more ahead), again. Returns why it stopped
        (None: the scope was cancelled); what takes time after that runs
        outside the scope."""
        worker = link.worker
        limit = self._config.max_tasks_per_child
        while True:
            # The next answer cannot be there before a job went out: wait for
            # the pipe rather than try a read that would fail.
            frame = await worker.receive(wait_first=True)
            if frame is None:
                return _Ended.EOF
            kind = frame.kind
            if kind == _protocol.SKIPPED:
                if not self._skipped(link, frame):
                    return _End.LOST
                if link.hear_first and not worker.answer_waiting():
                    return None  # no answer came: act on the cancellation now
                continue
            job = link.current
            if job is not None and kind == _protocol.FATAL:
                link.fatal_frame = frame
                return _Ended.FATAL
            if job is None or not link.sent:
                _log.error("idle worker %d sent %r; killing it", worker.pid, frame)
                return _End.LOST
            link.current = None
            job.scope = None
            scope = link.read_scope
            if scope is not None and scope.deadline != math.inf:
                scope.deadline = math.inf
            link.hear_first = False
            if kind not in _ANSWERS:
                job.error = BrokenWorkerError(
                    f"worker {worker.pid} broke the protocol: it sent {frame!r}",
                    worker.pid,
                    None,
                )
                self._finish(job, failed=True)
                return _End.LOST
            job.frame = frame
            job.link = None
            self._finish(job, failed=kind != _protocol.RESULT)
            link.tasks_done += 1
            now = trio.current_time()
            link.last_duration = now - link.started_at
            flags = frame.flags
            if flags & _protocol.OVER_MEMORY:
                # The worker starts nothing more; _ended puts back what it holds.
                _log.info("worker %d retired over max_memory_per_child", worker.pid)
                return _End.RETIRED
            if link.ahead:
                self._start_ahead(link, now, sure=bool(flags & _protocol.AHEAD))
            elif flags & _protocol.AHEAD:
                _log.error(
                    "worker %d started a task it was not sent; killing it", worker.pid
                )
                return _End.LOST
            if limit is not None and link.tasks_done >= limit:
                _log.info(
                    "worker %d retired after %d tasks", worker.pid, link.tasks_done
                )
                return _End.RETIRED
            if link.killed:
                continue  # read on to its end
            if link.current is None:
                job = self._next_job()
                if job is not None:
                    await self._send(link, job)
                elif self._closing or self._broken is not None:
                    return _End.CLOSED
                else:
                    self._idle.append(link)  # the feeder is parked: callers wake it
                    continue
            if self._waiting:
                self._send_ahead(link)

    def _start_ahead(self, link: _Link, now: float, *, sure: bool) -> None:
        """The worker answered its current job and now runs the first job
        sent ahead: it said so (``sure``), or it starts it once read."""
        job = link.ahead.popleft()
        job.state = _JobState.RUNNING
        self._tasks_waiting -= 1
        self._tasks_running += 1
        link.current = job
        link.sent = True
        link.sure_started = sure
        link.started_at = now
        if job.time_limit is not None:
            job.deadline = now + job.time_limit
        scope = link.read_scope
        if link.killed or scope is None:
            return
        job.scope = scope
        if job.time_limit is not None:
            scope.deadline = job.deadline
        if job.skip and self._abandon(job, kill=job.kill_on_cancel):
            # Given up while ahead, but started before the worker saw the
            # SKIP: cancelled like a running task (the worker is killed).
            _wake(job)

    def _send_ahead(self, link: _Link) -> None:
        """Pipelining: while callers queue up, write more small jobs to this
        busy worker, so that it finds the next one waiting when it answers.

        Only behind a job that is short (by the last one's time), so that a
        job never waits long behind another while a worker may be free; only
        as many as ``max_tasks_per_child`` leaves room for; only frames the
        pipe takes whole at once. Each stays cancellable (see _abandon).
        """
        job = link.current
        if (
            job is None
            or not link.sent
            or job.state is not _JobState.RUNNING
            or link.writing
            or link.last_duration > _AHEAD_AFTER
            or link.worker.known_dead  # see _send
        ):
            return
        room = _AHEAD - len(link.ahead)
        limit = self._config.max_tasks_per_child
        if limit is not None:
            room = min(room, limit - link.tasks_done - 1 - len(link.ahead))
        worker = link.worker
        while room > 0:
            job = self._next_job()
            if job is None:
                return
            pieces = job.pieces
            if len(pieces) != 1 or len(pieces[0]) > _pipes.ATOMIC_WRITE:
                self._waiting.appendleft(job)
                return
            try:
                written = worker.write_whole(pieces[0])  # type: ignore[arg-type]
            except trio.BrokenResourceError:
                written = False  # dead: the reader sees EOF
            if not written:
                self._waiting.appendleft(job)
                return
            job.state = _JobState.SENT
            _number(link, job)
            job.link = link
            link.ahead.append(job)
            room -= 1

    def _skipped(self, link: _Link, frame: _protocol.Frame) -> bool:
        """The worker dropped a job sent ahead, as its caller asked."""
        (number,) = _protocol.TASK_NUMBER.unpack(frame.payload)
        for job in link.ahead:
            if job.number == number:
                if not job.skip:
                    break
                link.ahead.remove(job)
                job.link = None
                self._cancelled_ahead(job)
                return True
        _log.error(
            "worker %d dropped task %d it was not asked to; killing it",
            link.worker.pid,
            number,
        )
        return False

    async def _ended(
        self, link: _Link, end: _End | _Ended, retiring: Callable[[], None]
    ) -> _End:
        """Finish the worker's service for the reason ``end``."""
        worker = link.worker
        timeout = self._config.shutdown_timeout
        if end is _End.RETIRED:
            self._unsend_all(link)
            retiring()
            await worker.stop(timeout)
            return end
        if end is _End.CLOSED:
            await worker.stop(timeout)
            return end
        if end is _Ended.FATAL:
            job = link.current
            assert job is not None
            assert link.fatal_frame is not None
            await self._fatal(worker, job, link.fatal_frame)
            link.fatal_frame = None
            end = _Ended.EOF
        if end is _Ended.EOF:
            await self._lost(worker, link)
        return _End.LOST

    def _stop_job(self, worker: Worker, job: _Job) -> None:
        """The job's caller gave up on it, or its time limit expired: the
        worker is killed (when its owner's block ends)."""
        if job.state is _JobState.CANCELLED:
            _log.info("worker %d killed: its task was cancelled", worker.pid)
            return
        assert job.time_limit is not None
        _log.warning(
            "worker %d killed: task exceeded its time limit of %g s",
            worker.pid,
            job.time_limit,
        )
        job.error = TimeLimitExceeded(
            f"the task exceeded its time limit of {job.time_limit:g} s; "
            f"worker {worker.pid} was killed",
            job.time_limit,
        )
        self._finish(job, failed=True)

    async def _fatal(self, worker: Worker, job: _Job, frame: _protocol.Frame) -> None:
        """A task raised a BaseException that ends its worker: keep it as
        the job's error's cause and wait for the worker to exit."""
        try:
            job.fatal_cause = _exception_from(frame)
        except Exception as exc:
            # Not what a FATAL frame holds; the worker is ending (or gets
            # killed below) all the same.
            job.fatal_cause = exc
        with trio.move_on_after(self._config.shutdown_timeout):
            if await worker.receive() is not None:
                worker.kill()

    async def _lost(self, worker: Worker, link: _Link) -> None:
        """The worker's pipe is at EOF (or it exited): it died, was killed,
        or broke its pipe (then it is killed now). Settle its jobs."""
        exitcode = await worker.reap_after_eof()
        job = link.current
        # Jobs sent ahead never started: the worker starts one only after it
        # has answered the one before, and every answer has been read.
        self._unsend_all(link)
        if job is None:
            if link.killed:
                # Killed for a task of its own (cancelled, or over its time
                # limit), whose answers were read to the end: on purpose.
                _log.info("worker %d killed (%s)", worker.pid, _ended(worker, exitcode))
            else:
                _log.warning(
                    "idle worker %d died (%s)", worker.pid, _ended(worker, exitcode)
                )
            return
        if job.state is not _JobState.RUNNING:
            return  # settled already: killed for its cancellation or time limit
        if not link.sent or (
            not link.sure_started and worker.task_bytes_read() < job.end
        ):
            # The worker died before it read the whole task, so the task never
            # started: like a task handed to a worker that died, it runs on
            # another worker (API.md).
            _log.warning(
                "worker %d died before it read its task (%s); the task goes "
                "to another worker",
                worker.pid,
                _ended(worker, exitcode),
            )
            self._requeue(job)
            return
        _log.warning(
            "worker %d died running a task (%s)", worker.pid, _ended(worker, exitcode)
        )
        job.error = BrokenWorkerError(
            f"worker {worker.pid} died while running the task "
            f"({_ended(worker, exitcode)})",
            worker.pid,
            exitcode,
        )
        job.error.__cause__ = job.fatal_cause
        self._finish(job, failed=True)

    # Lifecycle

    def _open(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._thread = _context.current_thread()
        self._slots_left = len(self._slots)
        if self._config.start_method == "forkserver":
            nursery.start_soon(self._run_forkserver, name="triopool fork server")
        for slot in self._slots:
            nursery.start_soon(
                self._run_slot, slot, name=f"triopool slot {slot.number}"
            )

    def _close(self) -> None:
        """Normal exit: run what was submitted, then stop the workers."""
        self._closing = True
        self._wake_idle()

    def _abort(self) -> None:
        """Exit by error or cancellation: kill every worker now."""
        self._closing = True
        self._fail_waiting(lambda: trio.ClosedResourceError("the pool closed"))
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()


async def _parent_fault(
    plan: _faults.Plan, worker: Worker, stage: str, task: int | None = None
) -> None:
    """Inject a test's fault at a parent-side stage (see ``_faults``)."""
    fault = plan.due(stage, task)
    if fault is None:
        return
    _log.debug("fault injected at %s: %r (worker %d)", stage, fault, worker.pid)
    if fault.action == "sleep":
        await trio.sleep(fault.argument)
    else:
        # Kill and reap, so the worker's pipe ends are closed for certain.
        worker.kill()
        await worker.process.wait()


def _number(link: _Link, job: _Job) -> None:
    """Record a job just written whole to the link's worker."""
    link.numbered += 1
    job.number = link.numbered
    job.end = link.worker.bytes_written


def _wake_feeder(link: _Link) -> None:
    """Wake the link's feeder if it is parked (see _Link.feeder): whoever
    sets work for it calls this, and a feeder already awake finds the work
    before it parks again."""
    if link.parked:
        link.parked = False
        assert link.feeder is not None
        trio.lowlevel.reschedule(link.feeder)


def _wake(job: _Job) -> None:
    """Wake the job's parked caller (see run_sync), once."""
    caller = job.caller
    if caller is not None:
        job.caller = None
        trio.lowlevel.reschedule(caller)


def _ended(worker: Worker, exitcode: int | None) -> str:
    """How a worker's process ended, for messages."""
    if worker.protocol_error is not None:
        return f"killed for breaking the protocol: {worker.protocol_error}"
    return describe_exit(exitcode)


def _describe_callable(fn: object) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    module = getattr(fn, "__module__", None)
    if name and module:
        return f"{module}.{name}"
    return repr(fn)


def _from_main(fn: object) -> bool:
    """Whether ``fn`` (or the function of a partial) comes from ``__main__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__module__", None) == "__main__"


def _exception_from(frame: _protocol.Frame) -> BaseException:
    """Rebuild a worker's exception from an ERROR or FATAL frame."""
    # A large exception pickle travels out of band, like any large bytes.
    exc_pickle, type_name, message, traceback_text = _protocol.loads(
        frame.payload, frame.buffers
    )
    return _rebuild_exception(exc_pickle, type_name, message, traceback_text)


def _rebuild_exception(
    exc_pickle: bytes | None, type_name: str, message: str, traceback_text: str
) -> BaseException:
    """The worker's exception, or a RemoteError if it does not unpickle here;
    its ``__cause__`` carries the worker's traceback."""
    exc: BaseException | None = None
    if exc_pickle is not None:
        try:
            exc = pickle.loads(exc_pickle)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(type_name, message, traceback_text)
    exc.__cause__ = RemoteTraceback(traceback_text)
    return exc


def _outcome(job: _Job) -> Any:
    if job.error is not None:
        raise job.error
    frame = job.frame
    assert frame is not None
    if frame.kind == _protocol.RESULT:
        try:
            return _protocol.loads(frame.payload, frame.buffers)
        except Exception as exc:
            raise SerializationError(
                f"could not unpickle the task's result: {type(exc).__name__}: {exc}"
            ) from exc
    if frame.kind == _protocol.ERROR:
        try:
            remote = _exception_from(frame)
        except Exception as exc:
            raise SerializationError(
                f"could not unpickle the task's exception: {type(exc).__name__}: {exc}"
            ) from exc
        raise remote
    what, exc_pickle, type_name, message, traceback_text = _protocol.loads(
        frame.payload, frame.buffers
    )
    hint = ""
    if what == "the result" and type_name in _BY_REFERENCE_ERRORS:
        # The worker shares this process's sys.path: no cloudpickle here
        # means none there either.
        hint = _protocol.cloudpickle_hint(pickle.PicklingError())
    serialization_error = SerializationError(
        f"could not {'unpickle' if what == 'the task' else 'pickle'} {what} "
        f"in the worker: {type_name}: {message}{hint}"
    )
    # The pickling error itself, as API.md promises, with the worker's
    # traceback as its own cause.
    serialization_error.__cause__ = _rebuild_exception(
        exc_pickle, type_name, message, traceback_text
    )
    raise serialization_error


# The errors plain pickle raises when it cannot send a function or class by
# reference, as the worker names them.
_BY_REFERENCE_ERRORS = frozenset(
    {"_pickle.PicklingError", "pickle.PicklingError", "builtins.AttributeError"}
)


def _main_module() -> tuple[str | None, str | None]:
    """Where the workers find the parent's ``__main__``: (path, module name)."""
    import sys

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name is not None and name != "__main__":
        if name.endswith(".__main__"):
            # A package's __main__ (python -m pkg) is a command line: running it
            # again would run the command. Like multiprocessing, skip it.
            return None, None
        return None, name
    path = getattr(main, "__file__", None)
    if isinstance(path, str) and path.endswith(".py") and os.path.exists(path):
        return os.path.abspath(path), None
    return None, None


def _config_frame(config: PoolConfig) -> list[bytes | memoryview]:
    import sys

    initializer = None
    if config.initializer is not None:
        try:
            initializer = pickle.dumps((config.initializer, config.initargs), 5)
        except Exception as exc:
            raise TypeError(
                f"initializer and initargs must be picklable: {type(exc).__name__}: {exc}"
            ) from exc
    main_path, main_name = _main_module()
    if main_path is not None or main_name is not None:
        # Workers run the main script as __mp_main__, so objects whose classes
        # it defines come back under that name; make it resolve here too, as
        # multiprocessing does.
        sys.modules.setdefault("__mp_main__", sys.modules["__main__"])
    payload = pickle.dumps(
        {
            "sys_path": list(sys.path),
            # The main script may read sys.argv at import, as it does when it
            # is run again in the worker (multiprocessing passes it on too).
            "sys_argv": list(sys.argv),
            "main_path": main_path,
            "main_name": main_name,
            "initializer": initializer,
            "max_memory": config.max_memory_per_child,
            "authkey": _multiprocessing_authkey(),
        },
        5,
    )
    return _protocol.encode_frame(_protocol.CONFIG, payload)


def _multiprocessing_authkey() -> bytes:
    """This process's ``multiprocessing`` authkey, for the workers.

    A ``multiprocessing.Manager()`` proxy sent as an argument connects back to
    its manager with the key of the process it is in; the workers need the
    parent's. They set it only if a task imports ``multiprocessing`` (see
    ``_child._ParentAuthkey``), so the key costs them nothing otherwise. Here
    the import costs a few milliseconds, once, and covers a program that
    imports ``multiprocessing`` after its pool opened.
    """
    import multiprocessing.process

    return bytes(multiprocessing.process.current_process().authkey)


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
    if backend is not None:
        options = dict(locals())  # every option, so new ones are checked too
        del options["backend"]
        from ._backend_pool import open_backend_pool

        return open_backend_pool(backend, options)
    config = PoolConfig(
        workers=_usable_cpus() if workers is None else workers,
        start_method=start_method,
        forkserver_preload=_as_tuple("forkserver_preload", forkserver_preload),
        initializer=initializer,
        initargs=_as_tuple("initargs", initargs),
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
        start_timeout=start_timeout,
        max_start_failures=max_start_failures,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        kill_on_cancel=kill_on_cancel,
        shutdown_timeout=shutdown_timeout,
    )
    pool = Pool(config)  # pickles the initializer: fails now if it cannot
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
        pool._closing = True
        pool._closed = True
        pool._fail_waiting(lambda: trio.ClosedResourceError("the pool closed"))
    if body_error is not None:
        raise body_error


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc

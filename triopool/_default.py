"""The default pool: :func:`run_sync` without opening a pool first.

Each ``trio.run`` gets its own default pool, kept in a :class:`trio.lowlevel.RunVar`.
It is opened on first use by a system task that holds ``async with open_pool()``
until the run ends: when the main task returns, Trio cancels its system tasks,
so the pool's block exits, killing and reaping every worker and closing every
fd, before ``trio.run`` returns. Nothing outlives the run; no ``atexit``.

Invariants: at most one default pool per run, however many tasks call
:func:`run_sync` at once for the first time (the first caller starts it, the
others wait for it); the options come from :func:`configure_default_pool`, read
once, when the pool starts.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import attrs
import trio

from . import _context
from ._config import (
    DEFAULT_POOL_IDLE_TIMEOUT,
    DEFAULT_POOL_MIN_WORKERS,
    DEFAULTS,
    POOL_DEFAULT,
    Options,
)
from ._errors import BrokenWorkerError
from ._pool import Pool, open_with_options

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable, Sequence
    from types import CoroutineType
    from typing import TypeVarTuple, Unpack

    from ._backend import Backend
    from ._config import PoolDefault, RetryOn
    from ._typing import AnyResultCallable, AsyncCallable, AsyncFunctionPassedToRunSync

    Ts = TypeVarTuple("Ts")

T = TypeVar("T")


class _State(enum.Enum):
    STARTING = "starting"
    OPEN = "open"
    FAILED = "failed"
    CLOSED = "closed"


class _DefaultPool:
    """This run's default pool, from its first use until the run ends."""

    def __init__(self) -> None:
        self.state = _State.STARTING
        self.ready = trio.Event()
        self.pool: Pool | None = None
        self.error: BaseException | None = None

    async def hold(self, manager: contextlib.AbstractAsyncContextManager[Pool]) -> None:
        """The system task: keep the pool open until the run ends."""
        try:
            async with manager as pool:
                self.pool = pool
                self.state = _State.OPEN
                self.ready.set()
                await trio.sleep_forever()
        except Exception as exc:
            # A system task must not raise: that would crash the whole run.
            # Callers get the error instead.
            self.error = exc
            self.state = _State.FAILED
        finally:
            if self.state is not _State.FAILED:
                self.state = _State.CLOSED
            self.ready.set()


_RUN_STATE: trio.lowlevel.RunVar[_DefaultPool] = trio.lowlevel.RunVar(
    "triopool_default_pool"
)
# The options of default pools started from now on; plain data, not a resource.
_options: Options = DEFAULTS
_backend: Backend | None = None


def configure_default_pool(
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
) -> None:
    """Set the options of the default pool used by :func:`triopool.run_sync`.

    Takes the arguments of :func:`triopool.open_pool`, with the same defaults,
    and checks them the same way (:class:`ValueError` or :class:`TypeError` at
    once). Each call replaces the whole configuration: options not passed go
    back to their defaults, so ``configure_default_pool()`` restores them all.
    With ``backend``, each run's default pool runs its tasks on that cluster
    backend (see "Running on a cluster"): the backend starts with the run's
    default pool and stops when the run ends, once per run.

    Unless ``min_workers`` and ``idle_timeout`` are given (they go
    together), the default pool releases workers idle for 10 minutes
    (``min_workers=0``, ``idle_timeout=600``) and starts them again when
    tasks come; pass ``min_workers=0, idle_timeout=math.inf`` to keep them
    all.

    The configuration is process-wide and is read when a run's default pool
    starts, on its first use. It therefore applies to every ``trio.run``
    whose default pool starts afterwards. Calling it inside a run whose
    default pool has already started raises :class:`RuntimeError`: that pool
    keeps its options until the run ends, and silently ignoring the new ones
    would hide the mistake.

    Example::

        # Before the run's first triopool.run_sync(), or before trio.run():
        triopool.configure_default_pool(workers=2, max_tasks_per_child=100)
        total = await triopool.run_sync(sum, range(10))

    Raises:
        RuntimeError: This run's default pool has already started.
    """
    global _options, _backend
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
    # open_pool checks every option (and pickles the initializer) before it
    # starts anything; the manager it returns is never entered. The values
    # go in as given: tuple("numpy") would pass as five module names.
    open_with_options(options, backend)
    try:
        state = _RUN_STATE.get()
    except LookupError:
        state = None  # no default pool in this run yet
    except RuntimeError:
        # Outside trio.run; maybe in a thread of one (trio.to_thread).
        state = _state_seen_from_thread()
    if state is not None and state.state is not _State.CLOSED:
        raise RuntimeError(
            "the default pool of this trio.run has already started; call "
            "configure_default_pool() before the first triopool.run_sync()"
        )
    _options = options.frozen()
    _backend = backend


def _elastic(options: Options, backend: Backend | None) -> Options:
    """The default pool's options: a local one whose ``min_workers`` and
    ``idle_timeout`` were left at None releases workers idle for 10 min."""
    if backend is not None or (
        options.min_workers is not None or options.idle_timeout is not None
    ):
        return options
    return attrs.evolve(
        options,
        min_workers=DEFAULT_POOL_MIN_WORKERS,
        idle_timeout=DEFAULT_POOL_IDLE_TIMEOUT,
    )


def _state_seen_from_thread() -> _DefaultPool | None:
    """The default pool of the run whose ``trio.to_thread`` thread this is;
    None in a thread that no run started."""

    def get() -> _DefaultPool | None:
        try:
            return _RUN_STATE.get()
        except LookupError:
            return None

    try:
        return trio.from_thread.run_sync(get)
    except RuntimeError:  # not a Trio thread, or its run has finished
        return None


async def _current_default_pool() -> Pool:
    try:
        state = _RUN_STATE.get()
    except LookupError:
        _context.check_start("triopool.run_sync()")
        state = _DefaultPool()
        # Built here, in the caller, so a bad configuration or an initializer
        # that cannot be pickled raises in the caller.
        manager = open_with_options(_elastic(_options, _backend), _backend)
        _RUN_STATE.set(state)
        trio.lowlevel.spawn_system_task(
            state.hold, manager, name="triopool default pool"
        )
    if state.state is _State.STARTING:
        await state.ready.wait()
    if state.state is _State.OPEN:
        assert state.pool is not None
        return state.pool
    if state.state is _State.FAILED:
        assert state.error is not None
        raise trio.ClosedResourceError(
            "the default pool could not be opened"
        ) from state.error
    raise trio.ClosedResourceError("the default pool closed: the run is ending")


# For type checkers (see _typing): an async function is an error.
@overload
def run_sync(  # type: ignore[overload-overlap]
    fn: AnyResultCallable,
    *args: object,
    time_limit: float | PoolDefault | None = POOL_DEFAULT,
    soft_time_limit: float | PoolDefault | None = POOL_DEFAULT,
    kill_on_cancel: bool | PoolDefault = POOL_DEFAULT,
    retries: int | PoolDefault = POOL_DEFAULT,
    retry_on: RetryOn | PoolDefault = POOL_DEFAULT,
) -> CoroutineType[Any, Any, Any]: ...
@overload
def run_sync(  # type: ignore[overload-overlap]
    fn: AsyncCallable,
    *args: object,
    time_limit: float | PoolDefault | None = POOL_DEFAULT,
    soft_time_limit: float | PoolDefault | None = POOL_DEFAULT,
    kill_on_cancel: bool | PoolDefault = POOL_DEFAULT,
    retries: int | PoolDefault = POOL_DEFAULT,
    retry_on: RetryOn | PoolDefault = POOL_DEFAULT,
) -> AsyncFunctionPassedToRunSync: ...
@overload
def run_sync(
    fn: Callable[[Unpack[Ts]], T],
    *args: *Ts,
    time_limit: float | PoolDefault | None = POOL_DEFAULT,
    soft_time_limit: float | PoolDefault | None = POOL_DEFAULT,
    kill_on_cancel: bool | PoolDefault = POOL_DEFAULT,
    retries: int | PoolDefault = POOL_DEFAULT,
    retry_on: RetryOn | PoolDefault = POOL_DEFAULT,
) -> CoroutineType[Any, Any, T]: ...
async def run_sync(  # type: ignore[misc]
    fn: Callable[[Unpack[Ts]], T],
    *args: *Ts,
    time_limit: float | PoolDefault | None = POOL_DEFAULT,
    soft_time_limit: float | PoolDefault | None = POOL_DEFAULT,
    kill_on_cancel: bool | PoolDefault = POOL_DEFAULT,
    retries: int | PoolDefault = POOL_DEFAULT,
    retry_on: RetryOn | PoolDefault = POOL_DEFAULT,
) -> T:
    """Run ``fn(*args)`` in this run's default pool and return its result.

    The same as :meth:`Pool.run_sync` on a pool that this ``trio.run`` opens
    on first use (with the options of :func:`configure_default_pool`) and
    closes when it ends. Concurrent first calls share one pool. Use
    :func:`open_pool` instead when the pool's lifetime should be explicit.

    Example::

        big = await triopool.run_sync(pow, 3, 100_000)

    Raises:
        trio.ClosedResourceError: The default pool could not be opened (the
            reason is the ``__cause__``) or the run is ending.
        RuntimeError: Called outside ``trio.run`` (from asyncio, say), or in
            a worker process importing the main script.

    And everything :meth:`Pool.run_sync` raises.
    """
    try:
        await trio.lowlevel.checkpoint_if_cancelled()
    except RuntimeError:
        raise _context.not_in_trio("triopool.run_sync()") from None
    pool = await _current_default_pool()
    return await pool.run_sync(
        fn,
        *args,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        kill_on_cancel=kill_on_cancel,
        retries=retries,
        retry_on=retry_on,
    )

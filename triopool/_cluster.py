"""The cluster scheduler: a pool's calls run on a cluster engine through a
:class:`Backend`.

``open_pool(backend=...)`` gives a :class:`~triopool.Pool` whose scheduler is
a :class:`ClusterScheduler`: the pool checks each call's arguments, this
module refuses what the backend cannot honour and runs the rest on the
engine. The local scheduler's code is not involved, so its fast path is
unchanged.

Invariants:

- At most ``capacity`` calls (the engine's worker slots) are submitted to the
  engine at once; the rest wait in the pool's own FIFO queue, where
  cancelling them is free and certain: they never reach the engine. Only the
  pool's dispatcher task submits, so a burst of callers never makes the Trio
  thread submit more than that many calls in a row.
- The capacity follows the engine (the backend's ``capacity()``, see
  ``_follow_capacity``) unless ``open_pool(workers=N)`` fixed it. It is never
  below one; when it shrinks, the calls already in the engine run on and no
  more are submitted until they are fewer than the capacity.
- A submitted call is in flight until its outcome comes back through the
  run's :class:`trio.lowlevel.TrioToken`; only then does its slot count as
  free. The engine's callback threads never touch the pool.
- Leaving the block cancels every call still in flight (killing it where the
  engine can) and stops the engine only if the backend started it; nothing
  that fails while cancelling keeps it from being stopped.
- The worker counters count the engine's worker slots as the pool's workers
  (see :meth:`ClusterScheduler.statistics`), so they keep the identity
  :class:`~triopool.PoolStatistics` states.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._backend import Backend, Outcome, TrioBridge
from ._config import (
    DEFAULTS,
    PoolConfig,
    _check_limits,
    _no_limit_if_inf,
    retry_classes,
)
from ._errors import BrokenWorkerError, TimeLimitExceeded
from ._handles import ClusterHandles
from ._stats import PoolStatistics

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping
    from typing import Final

    from ._config import Options
    from ._events import EventStream
    from ._handle import Handle
    from ._stats import WorkerInsight

__all__ = ["ClusterScheduler", "open_cluster_scheduler"]

_log = logging.getLogger("triopool")

# Seconds between two questions to the engine about its capacity (a backend
# may say otherwise with a ``capacity_interval`` attribute).
CAPACITY_INTERVAL = 1.0

# The open_pool options a backend pool implements; any other option must stay
# at its default. (``workers`` fixes how many calls are in the engine at once,
# instead of following the engine's capacity.)
# ``forward_logs`` is accepted either way and has no effect: the engine
# collects its workers' logs itself (see docs/cluster.rst).
_SUPPORTED = frozenset(
    {
        "workers",
        "time_limit",
        "kill_on_cancel",
        "max_tasks_per_child",
        "shutdown_timeout",
        "retries",
        "retry_on",
        "forward_logs",
    }
)


# Why a backend pool refuses some options: the engine owns its workers.
_WHY_NOT: Final = {
    "min_workers": ": the cluster's workers are the engine's, which sizes them itself",
    "idle_timeout": ": the cluster's workers are the engine's, which sizes them itself",
    "max_lifetime_per_child": (
        ": the cluster's workers are the engine's, which decides when they end"
    ),
}


class _State(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    DONE = 2
    CANCELLED = 3


@attrs.define(eq=False)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    time_limit: float | None
    kill_on_cancel: bool
    retries: int
    retry_on: tuple[type[BaseException], ...]
    engine_options: dict[str, Any] = attrs.field(factory=dict)
    done: trio.Event = attrs.field(factory=trio.Event)
    state: _State = _State.WAITING
    outcome: Outcome | None = None
    handle: object = None
    # The caller's wait; its deadline is the hard time limit once submitted.
    scope: trio.CancelScope | None = None
    cancel_sent: bool = False
    # Its caller gave up on it and the engine was asked to kill its worker.
    killed: bool = False


def _check_values(options: Mapping[str, Any]) -> None:
    """Check every option set away from its default with the local pool's own
    validators (those of :class:`PoolConfig`), so a bad value raises the same
    TypeError or ValueError whatever the pool runs on, before the backend is
    asked whether it can honour the option."""
    defaults = DEFAULTS.as_dict()
    fields = attrs.fields_dict(PoolConfig)
    for option, value in options.items():
        field = fields.get(option)
        # Skip the default object itself only: PoolConfig would refuse some
        # defaults (workers=None stands for the CPU count), and an equal value
        # may still have the wrong type (kill_on_cancel=1 == True).
        if field is None or field.validator is None or value is defaults.get(option):
            continue
        field.validator(None, field, value)
    _check_limits(options.get("time_limit"), options.get("soft_time_limit"), "")


def _check_retries(
    backend: Backend, retries: int, retry_on: tuple[type[BaseException], ...]
) -> None:
    """Refuse retries the engine cannot run as asked (its own retry is used:
    see the backend's ``check_retries``)."""
    if not retries:
        return
    check = getattr(backend, "check_retries", None)
    if check is None:
        raise ValueError(
            f"{backend.name} cannot run a task again, so retries={retries!r} "
            "cannot be honoured: leave it at 0"
        )
    check(retries, retry_on)


def _check_options(backend: Backend, options: Mapping[str, Any]) -> None:
    """Refuse options the backend cannot honour, naming both."""
    defaults = DEFAULTS.as_dict()
    name = backend.name
    for option, value in options.items():
        default = defaults.get(option)
        if option in _SUPPORTED or value == default:
            continue
        raise ValueError(
            f"{name} does not support {option}={value!r}: leave it at its "
            f"default{_WHY_NOT.get(option, '')}"
        )
    capabilities = backend.capabilities
    if not capabilities.kill_running:
        if options.get("kill_on_cancel", True):
            raise ValueError(
                f"{name} cannot stop a running task, so kill_on_cancel=True "
                "cannot be honoured: pass kill_on_cancel=False"
            )
        if options.get("time_limit") is not None:
            raise ValueError(
                f"{name} cannot stop a running task, so time_limit cannot be "
                "enforced: leave it at None"
            )
    _check_retries(
        backend,
        options.get("retries", 0),
        retry_classes(options.get("retry_on", DEFAULTS.retry_on)),
    )
    if not capabilities.max_tasks_per_child and (
        options.get("max_tasks_per_child") is not None
    ):
        raise ValueError(
            f"{name} cannot retire workers, so max_tasks_per_child cannot be "
            "honoured: leave it at None"
        )


def _check_engine_options(backend: Backend, options: object) -> dict[str, Any]:
    """The backend's check of a call's ``engine_options`` (see Backend)."""
    check = getattr(backend, "check_engine_options", None)
    if check is None:
        if options:
            raise ValueError(
                f"{backend.name} takes no engine_options, got {options!r}: remove it"
            )
        return {}
    checked: dict[str, Any] = check(options)
    return checked


def open_cluster_scheduler(backend: Backend, options: Options) -> ClusterScheduler:
    """Check ``options`` (``open_pool``'s arguments) against ``backend`` and
    return the scheduler. Nothing starts until its :meth:`~ClusterScheduler.running`
    block is entered.
    """
    for attribute in ("name", "capabilities", "start", "submit", "cancel", "stop"):
        if not hasattr(backend, attribute):
            raise TypeError(f"backend must be a triopool backend, got {backend!r}")
    given = options.as_dict()
    _check_values(given)
    _check_options(backend, given)
    return ClusterScheduler(
        backend,
        time_limit=_no_limit_if_inf(options.time_limit),
        kill_on_cancel=options.kill_on_cancel,
        max_tasks_per_child=options.max_tasks_per_child,
        shutdown_timeout=options.shutdown_timeout,
        retries=options.retries,
        retry_on=retry_classes(options.retry_on),
        workers=options.workers,
    )


class ClusterScheduler:
    """Runs a pool's calls on a cluster engine (a :class:`Scheduler` of
    ``_scheduler``)."""

    def __init__(
        self,
        backend: Backend,
        *,
        time_limit: float | None,
        kill_on_cancel: bool,
        max_tasks_per_child: int | None,
        shutdown_timeout: float,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (BrokenWorkerError,),
        workers: int | None = None,
    ) -> None:
        self._backend = backend
        # open_pool(workers=N): the capacity, fixed; None follows the engine.
        self._fixed_capacity = workers
        self.time_limit = time_limit
        self.kill_on_cancel = kill_on_cancel
        self.retries = retries
        self.retry_on = retry_on
        self.soft_time_limit: float | None = None  # refused by open_cluster_scheduler
        self._max_tasks_per_child = max_tasks_per_child
        self._shutdown_timeout = shutdown_timeout
        self._capacity = 0
        self._waiting: deque[_Job] = deque()
        self._in_engine: set[_Job] = set()
        self._kick = trio.Event()
        self._bridge: TrioBridge | None = None
        self._open = False
        self._closing = False
        self._closed = False
        self._tasks_waiting = 0
        self._tasks_running = 0
        self._tasks_completed = 0
        self._tasks_failed = 0
        self._tasks_cancelled = 0
        self._tasks_submitted = 0
        self._workers_started = 0
        self._workers_lost = 0
        self._workers_stopped = 0
        self._handles = ClusterHandles(backend)

    def describe(self) -> str:
        state = "closed" if self._closed else "open" if self._open else "starting"
        return f"{state} backend={self._backend!r}"

    def check_usable(self) -> None:
        if self._closing or self._closed or not self._open:
            raise trio.ClosedResourceError("the pool is closed")

    def statistics(self) -> PoolStatistics:
        """A snapshot of the counters (cheap: no I/O).

        The engine's processes are not the pool's: here a *worker* is one of
        the engine's worker slots the pool uses (Ray: a CPU; Dask: a worker
        thread), and the counters say what the pool did with them and what
        the engine reported, no more:

        - ``workers``: the slots the pool uses now: ``open_pool(workers=N)``,
          else the engine's capacity, followed while the pool runs (see
          ``_follow_capacity``).
        - ``workers_alive``: the slots while the block runs; 0 once it exits.
          ``workers_busy`` are the slots holding a call the engine has not
          finished (a call being killed included), ``workers_idle`` the rest.
        - ``workers_lost``: calls whose engine worker died: killed by the
          pool (a time limit, or cancellation with ``kill_on_cancel``) and
          confirmed by the engine, or reported by the engine as a crash
          (:class:`~triopool.BrokenWorkerError`).
        - ``workers_started``: the slots taken when the pool opened, plus those
          the engine's capacity grew by, plus one per lost worker, which the
          engine replaces on its own.
        - ``workers_stopped``: the slots the engine's capacity shrank by, plus
          those given back when the pool closed.
        - ``workers_recycled`` and ``start_failures`` stay 0: the engine
          retires (Ray's ``max_calls``) and starts its processes where the
          pool cannot see.

        So ``workers_started == workers_alive + workers_recycled +
        workers_lost + start_failures + workers_stopped`` holds as for the
        local pool.
        """
        alive = 0 if self._closed else self._capacity
        busy = min(len(self._in_engine), alive)
        return PoolStatistics(
            workers=self._capacity,
            workers_alive=alive,
            workers_idle=alive - busy,
            workers_busy=busy,
            tasks_waiting=self._tasks_waiting,
            tasks_running=self._tasks_running,
            tasks_completed=self._tasks_completed,
            tasks_failed=self._tasks_failed,
            tasks_cancelled=self._tasks_cancelled,
            tasks_submitted=self._tasks_submitted,
            workers_started=self._workers_started,
            workers_recycled=0,
            workers_lost=self._workers_lost,
            start_failures=0,
            workers_stopped=self._workers_stopped,
        )

    def insight(self) -> tuple[WorkerInsight, ...]:
        """``()``: the engine's processes are not the pool's, so there is no
        per-worker insight on a cluster."""
        return ()

    def events(
        self, buffer: int
    ) -> contextlib.AbstractAsyncContextManager[EventStream]:
        """Refused: the engine runs the calls where the pool cannot watch."""
        raise NotImplementedError(
            f"events() is not available with {self._backend!r}: a cluster engine "
            "runs the tasks where the pool cannot watch them; poll statistics() "
            "instead (its task counters work the same)"
        )

    async def run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        time_limit: float | None,
        soft_time_limit: float | None,
        kill_on_cancel: bool,
        retries: int,
        retry_on: tuple[type[BaseException], ...],
        *,
        engine_options: object = None,
    ) -> Any:
        """Run ``fn(*args)`` on the engine and return its result, with the
        semantics of :meth:`triopool.Pool.run_sync` as far as the backend
        can honour them: an option it cannot honour raises
        :class:`ValueError` naming both. ``engine_options`` are the engine's
        own options for this call, checked by the backend."""
        name = self._backend.name
        if soft_time_limit is not None:
            raise ValueError(f"{name} does not support soft_time_limit")
        if not self._backend.capabilities.kill_running:
            if kill_on_cancel:
                raise ValueError(
                    f"{name} cannot stop a running task: kill_on_cancel=True "
                    "cannot be honoured"
                )
            if time_limit is not None:
                raise ValueError(
                    f"{name} cannot stop a running task: time_limit cannot be enforced"
                )
        _check_retries(self._backend, retries, retry_on)
        engine = _check_engine_options(self._backend, engine_options)
        self.check_usable()
        fn, args = self._handles.lift(fn, tuple(args))
        job = _Job(fn, args, time_limit, kill_on_cancel, retries, retry_on)
        job.engine_options = engine
        self._tasks_submitted += 1
        self._tasks_waiting += 1
        self._waiting.append(job)
        self._kick.set()
        try:
            with trio.CancelScope() as job.scope:
                if job.state is _State.RUNNING:
                    self._arm_time_limit(job)
                await job.done.wait()
        except trio.Cancelled:
            if job.state is _State.RUNNING and not job.kill_on_cancel:
                # Like trio.to_thread.run_sync: wait for the outcome;
                # Cancelled comes at the next checkpoint.
                with trio.CancelScope(shield=True):
                    await job.done.wait()
            else:
                self._abandon(job)
                raise
        except BaseException:
            self._abandon(job)
            raise
        finally:
            job.scope = None
        if job.state is _State.RUNNING:
            # The hard time limit expired (nothing else cancels job.scope).
            assert job.time_limit is not None
            self._abandon(job)
            self._tasks_cancelled -= 1
            self._tasks_failed += 1
            raise TimeLimitExceeded(
                f"the task exceeded its time limit of {job.time_limit:g} s; "
                f"{name} killed it",
                job.time_limit,
            )
        assert job.outcome is not None
        return job.outcome.unwrap()

    async def put(self, obj: object) -> Handle[Any]:
        self.check_usable()
        return await self._handles.put(obj, self.check_usable)

    def release(self, handle: Handle[Any]) -> None:
        self.check_usable()
        self._handles.release(handle)

    # The dispatcher and the engine's callbacks (all on the Trio thread)

    async def _dispatch(self) -> None:
        backend = self._backend
        assert self._bridge is not None
        while True:
            while self._waiting and len(self._in_engine) < self._capacity:
                job = self._waiting.popleft()
                if job.state is not _State.WAITING:
                    continue
                job.state = _State.RUNNING
                self._tasks_waiting -= 1
                self._tasks_running += 1
                deliver = self._bridge.callback(functools.partial(self._deliver, job))
                # Only a backend with check_retries (check_engine_options)
                # takes these keywords (see Backend): passed only when set.
                extra: dict[str, Any] = {}
                if job.retries:
                    extra.update(retries=job.retries, retry_on=job.retry_on)
                if job.engine_options:
                    extra["engine_options"] = job.engine_options
                if self._on_request(job):
                    extra["killable"] = True
                try:
                    if extra:
                        submit: Any = backend.submit
                        job.handle = submit(job.fn, job.args, deliver, **extra)
                    else:
                        job.handle = backend.submit(job.fn, job.args, deliver)
                except Exception as exc:
                    self._finish(job, Outcome(error=exc))
                else:
                    self._in_engine.add(job)
                    self._arm_time_limit(job)
                # Submitting is synchronous: let other tasks run in between.
                await trio.lowlevel.cancel_shielded_checkpoint()
            if self._closing and not self._waiting and not self._in_engine:
                return
            self._kick = trio.Event()
            await self._kick.wait()

    def _on_request(self, job: _Job) -> bool:
        """Whether ``job`` must be submitted as killable: only a backend that
        kills on request (see Capabilities) is told, and only for a call that
        may need it."""
        return self._backend.capabilities.kill_on_request and (
            job.kill_on_cancel or job.time_limit is not None
        )

    def _can_kill(self, job: _Job) -> bool:
        capabilities = self._backend.capabilities
        return capabilities.kill_running and (
            not capabilities.kill_on_request or self._on_request(job)
        )

    async def _follow_capacity(self, capacity: Callable[[], int]) -> None:
        """Keep ``self._capacity`` at the engine's capacity (the backend's
        ``capacity()``, asked in a thread every ``capacity_interval``
        seconds, idle or not: a map sizes itself from the count when it
        starts, so it must be fresh then too)."""
        interval = getattr(self._backend, "capacity_interval", CAPACITY_INTERVAL)
        while True:
            try:
                # Not abandoned on cancel: the question ends before the
                # backend stops (an engine's client is not asked while it
                # disconnects).
                now = await trio.to_thread.run_sync(capacity)
            except Exception as exc:
                # The engine will answer again; keep the capacity it had.
                _log.debug(
                    "could not ask %s for its capacity: %r",
                    self._backend.name,
                    exc,
                    extra={"event": "capacity_unknown", "error": repr(exc)},
                )
            else:
                self._set_capacity(now)
            await trio.sleep(interval)

    def _set_capacity(self, capacity: int) -> None:
        """Use ``capacity`` slots from now on (at least one). Growing submits
        waiting calls at once; shrinking lets the calls in the engine finish
        and submits no more until they are fewer than the capacity."""
        capacity = max(1, int(capacity))
        previous = self._capacity
        if capacity == previous or self._closed:
            return
        self._capacity = capacity
        if capacity > previous:
            self._workers_started += capacity - previous
            self._kick.set()
        else:
            self._workers_stopped += previous - capacity
        _log.debug(
            "%s capacity %d -> %d",
            self._backend.name,
            previous,
            capacity,
            extra={
                "event": "capacity_changed",
                "capacity": capacity,
                "previous": previous,
            },
        )

    async def _follow_capacity_in(
        self, scope: trio.CancelScope, capacity: Callable[[], int]
    ) -> None:
        with scope:
            await self._follow_capacity(capacity)

    async def _dispatch_then_stop(self, following: trio.CancelScope) -> None:
        """The dispatcher; once it is done (the pool closes), so is the
        capacity follower."""
        try:
            await self._dispatch()
        finally:
            following.cancel()

    def _arm_time_limit(self, job: _Job) -> None:
        if job.time_limit is not None and job.scope is not None:
            job.scope.deadline = trio.current_time() + job.time_limit

    def _deliver(self, job: _Job, outcome: Outcome) -> None:
        self._in_engine.discard(job)
        if outcome.error is not None and (
            job.killed or isinstance(outcome.error, BrokenWorkerError)
        ):
            # Its engine worker died; the engine puts another in the slot. (A
            # call that ended before its kill took effect returned a value.)
            self._workers_lost += 1
            self._workers_started += 1
        self._finish(job, outcome)
        self._kick.set()

    def _finish(self, job: _Job, outcome: Outcome) -> None:
        if job.state is not _State.RUNNING:
            return  # its caller is gone
        job.state = _State.DONE
        job.outcome = outcome
        self._tasks_running -= 1
        if outcome.error is None:
            self._tasks_completed += 1
        else:
            self._tasks_failed += 1
        job.done.set()

    def _abandon(self, job: _Job) -> None:
        """The caller stops waiting: a queued job never runs, a submitted one
        is cancelled (killed where the engine can)."""
        if job.state is _State.WAITING:
            job.state = _State.CANCELLED
            self._tasks_waiting -= 1
            self._tasks_cancelled += 1
        elif job.state is _State.RUNNING:
            job.state = _State.CANCELLED
            self._tasks_running -= 1
            self._tasks_cancelled += 1
            if job in self._in_engine:
                kill = self._can_kill(job)
                self._cancel(job, kill=kill)
                job.killed = kill

    def _cancel(self, job: _Job, *, kill: bool) -> None:
        if not job.cancel_sent:
            job.cancel_sent = True
            self._backend.cancel(job.handle, kill=kill)

    def _cancel_all(self) -> None:
        """Fail every call still waiting or running, then cancel the submitted
        ones in the engine: its callers are answered first, so an engine
        whose cancel raises leaves none of them waiting."""
        for job in list(self._waiting):
            if job.state is _State.WAITING:
                job.state = _State.RUNNING
                self._tasks_waiting -= 1
                self._tasks_running += 1
                self._finish(
                    job, Outcome(error=trio.ClosedResourceError("the pool closed"))
                )
        self._waiting.clear()
        in_engine = list(self._in_engine)
        for job in in_engine:
            self._finish(
                job,
                Outcome(
                    error=trio.ClosedResourceError("the pool closed while the task ran")
                ),
            )
        for job in in_engine:
            self._cancel(job, kill=self._can_kill(job))

    # Lifecycle

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        backend = self._backend
        self._bridge = TrioBridge(trio.lowlevel.current_trio_token())
        started = False
        body_error: BaseException | None = None
        try:
            # Engines start with blocking calls (seconds): in a thread, so the
            # Trio loop keeps running. Not abandoned on cancel: we must stop it.
            engine_capacity = await trio.to_thread.run_sync(
                backend.start, self._max_tasks_per_child
            )
            started = True
            self._capacity = self._fixed_capacity or max(1, engine_capacity)
            self._workers_started = self._capacity
            self._open = True
            async with trio.open_nursery() as nursery:
                # Optional (see Backend): how many calls the engine takes now.
                follow: Callable[[], int] | None = getattr(backend, "capacity", None)
                following = trio.CancelScope()
                if self._fixed_capacity is None and callable(follow):
                    nursery.start_soon(
                        self._follow_capacity_in,
                        following,
                        follow,
                        name=f"triopool {backend.name} capacity",
                    )
                nursery.start_soon(
                    self._dispatch_then_stop,
                    following,
                    name=f"triopool {backend.name} dispatcher",
                )
                try:
                    yield
                except BaseException as exc:
                    body_error = exc
                    self._closing = True
                    self._cancel_all()
                    nursery.cancel_scope.cancel()
                else:
                    self._closing = True
                    self._kick.set()  # the dispatcher returns once all is done
        finally:
            self._closing = True
            self._closed = True
            self._handles.close()
            self._workers_stopped += self._capacity
            try:
                with trio.CancelScope(shield=True):
                    self._cancel_all()
                    # Let the engine report the cancelled calls, so none is left
                    # half-known to the engine when the client goes.
                    with trio.move_on_after(self._shutdown_timeout):
                        while self._in_engine:
                            self._kick = trio.Event()
                            await self._kick.wait()
            finally:
                # Whatever failed above (a backend's cancel, Ctrl-C while
                # waiting), a cluster this pool started must not outlive it.
                self._bridge.close()
                if started:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(backend.stop)
        if body_error is not None:
            raise body_error

"""The cut between :class:`~triopool.Pool` and what runs its tasks.

:class:`~triopool.Pool` is the one public face: it checks a call's arguments,
fills in the pool's defaults and hands the call to its :class:`Scheduler`.
Two schedulers exist: the local one (``_local``: a job queue served by worker
processes in slots) and the cluster one (``_cluster``: the same calls on Ray
or Dask through a backend). This module imports neither; they import nothing
of the pool.

Invariants:

- :meth:`Scheduler.run` gets values already checked and resolved: never
  ``POOL_DEFAULT``, never an infinite limit (``None`` is no limit). What the
  scheduler itself cannot honour it refuses with ``ValueError`` naming the
  option and the scheduler.
- A scheduler is usable only inside the block of its :meth:`Scheduler.running`;
  before and after it, :meth:`Scheduler.check_usable` raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

    from ._events import EventStream
    from ._handle import Handle
    from ._stats import PoolStatistics, WorkerInsight


class Scheduler(Protocol):
    """What a :class:`~triopool.Pool` needs of whatever runs its tasks."""

    @property
    def time_limit(self) -> float | None:
        """The pool's default hard time limit (``None``: no limit)."""
        ...

    @property
    def soft_time_limit(self) -> float | None:
        """The pool's default soft time limit (``None``: no limit)."""
        ...

    @property
    def kill_on_cancel(self) -> bool:
        """The pool's default ``kill_on_cancel``."""
        ...

    @property
    def retries(self) -> int:
        """The pool's default ``retries``."""
        ...

    @property
    def retry_on(self) -> tuple[type[BaseException], ...]:
        """The pool's default ``retry_on``, checked."""
        ...

    def running(self) -> AbstractAsyncContextManager[None]:
        """Run the scheduler for the block: start it on entry; on exit, let
        submitted calls finish (a normal exit) or cancel them (an exception),
        and stop. An exception from the block leaves it as itself."""
        ...

    def check_usable(self) -> None:
        """Raise if no call may start now: :class:`trio.ClosedResourceError`
        when closed, :class:`~triopool.BrokenPoolError` when broken,
        :class:`RuntimeError` from outside the run that opened it."""
        ...

    def run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        time_limit: float | None,
        soft_time_limit: float | None,
        kill_on_cancel: bool,
        retries: int,
        retry_on: tuple[type[BaseException], ...],
    ) -> Awaitable[Any]:
        """Run ``fn(*args)`` with these limits, again after a failure named
        in ``retry_on`` up to ``retries`` times; return its outcome or raise."""
        ...

    async def put(self, obj: object) -> Handle[Any]:
        """Store ``obj`` once where the workers get it; a handle that tasks
        receive as ``obj`` (see ``_handles``). Raise as :meth:`check_usable`."""
        ...

    def release(self, handle: Handle[Any]) -> None:
        """Forget a handle of :meth:`put`: :class:`ValueError` if it is not
        a live one of this scheduler. Raise as :meth:`check_usable`."""
        ...

    def statistics(self) -> PoolStatistics:
        """A snapshot of the counters (cheap: no I/O)."""
        ...

    def insight(self) -> tuple[WorkerInsight, ...]:
        """What each worker slot did (cheap: no I/O); ``()`` where the
        scheduler has no workers of its own."""
        ...

    def events(self, buffer: int) -> AbstractAsyncContextManager[EventStream]:
        """A subscription to the scheduler's events (see ``_events``), with a
        buffer of ``buffer`` events; raise :class:`trio.ClosedResourceError`
        once closed, :class:`NotImplementedError` where it has none."""
        ...

    def describe(self) -> str:
        """A few words for the pool's repr: its state and its size."""
        ...

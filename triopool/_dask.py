"""Run a pool's tasks on a Dask cluster (the ``dask`` extra).

Dask is imported when the pool opens, never by ``import triopool``. The
backend uses a synchronous ``distributed.Client`` (its own event-loop thread):
no asyncio loop ever runs in Trio's thread, and no trio-asyncio.

Dask cannot stop a task that has started: a cancelled running task runs to
its end on its worker and its result is dropped. The backend says so in its
capabilities, and the pool refuses ``kill_on_cancel=True``,
``max_tasks_per_child`` and ``time_limit`` rather than ignoring them.
"""

from __future__ import annotations

import traceback
import uuid
from typing import TYPE_CHECKING, Any

from ._backend import (
    Capabilities,
    Outcome,
    check_engine_options,
    with_remote_traceback,
)
from ._errors import BrokenWorkerError, SerializationError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["DaskBackend"]

# The keyword arguments of ``Client.submit`` that a pool passes on as they are.
DASK_TASK_OPTIONS = frozenset(
    {"resources", "workers", "allow_other_workers", "priority", "fifo_timeout"}
)
# ``Client.submit`` arguments the pool sets from its own: the option to use
# instead.
_DASK_RESERVED = {
    "retries": "the pool's retries",
    "key": "nothing: each call has a key of its own",
    "pure": "nothing: each call runs, never cached",
    "actor": "nothing: a call is a task",
    "actors": "nothing: a call is a task",
}


def _quiet_plugin(prefix: str) -> Any:
    """A Dask worker plugin that drops the worker's ``Compute Failed`` log
    record for the pool's own tasks (keys starting with ``prefix``) while the
    pool is open: the caller receives that exception, so the worker's report
    of it is noise. Any other record, another client's tasks included, is
    left alone.

    Defined in a function so that the classes travel by value (cloudpickle):
    a worker need not have triopool installed.
    """
    import logging

    from distributed.diagnostics.plugin import (  # pyright: ignore[reportMissingImports]  # an optional extra
        WorkerPlugin,
    )

    def keep(record: logging.LogRecord) -> bool:
        args = record.args
        return not (
            isinstance(record.msg, str)
            and record.msg.startswith("Compute Failed")
            and isinstance(args, tuple)
            and bool(args)
            and str(args[0]).startswith(prefix)
        )

    class QuietTaskErrors(WorkerPlugin):  # type: ignore[misc]
        def setup(self, worker: Any) -> None:
            logging.getLogger("distributed.worker").addFilter(keep)

        def teardown(self, worker: Any) -> None:
            logging.getLogger("distributed.worker").removeFilter(keep)

    return QuietTaskErrors()


class DaskBackend:
    """Run tasks as Dask futures: ``open_pool(backend=DaskBackend(), kill_on_cancel=False)``.

    Each call is one ``client.submit(fn, *args)`` under a key of its own:
    never cached, never merged with an equal call.

    Args:
        address: A scheduler address (``"tcp://127.0.0.1:8786"``) to connect
            to; that cluster is left running. ``None`` starts a
            ``LocalCluster`` of worker processes on 127.0.0.1 that the pool
            owns and closes on exit. The owned cluster fails a task at the
            first worker death (``allowed-failures`` 0), so a crash surfaces
            as :class:`~triopool.BrokenWorkerError` at once; a cluster you
            started keeps its own setting (by default Dask retries the task on
            another worker 3 times before giving up).
        n_workers: Worker processes of an owned cluster (``None``: Dask's
            default).
        threads_per_worker: Threads per worker process of an owned cluster.
        worker_timeout: Seconds to wait, when the pool opens, for a cluster
            at ``address`` to have at least one worker.
        task_options: ``Client.submit`` options for every call of the pool
            (``{"resources": {"GPU": 1}, "priority": 10}``): any of
            ``resources``, ``workers``, ``allow_other_workers``, ``priority``
            and ``fifo_timeout``. A call's ``engine_options`` override them
            key by key. An unknown key raises :class:`ValueError` naming it
            and the valid ones.

    The pool keeps as many calls in flight as the cluster has worker threads,
    and follows the cluster as workers join or leave (an adaptive cluster
    included); ``open_pool(workers=N)`` fixes it at N. ``retries`` maps to Dask's own ``retries``, which runs
    again a task that raised any exception: it needs ``retry_on=(Exception,)``.

    Example::

        backend = triopool.DaskBackend(n_workers=2)
        async with triopool.open_pool(backend=backend, kill_on_cancel=False) as pool:
            print(await pool.run_sync(sum, [1, 2, 3]))
    """

    name = "DaskBackend"
    capabilities = Capabilities(kill_running=False, max_tasks_per_child=False)
    # Seconds between two calls of capacity() while the pool has calls.
    capacity_interval = 1.0

    def __init__(
        self,
        address: str | None = None,
        *,
        n_workers: int | None = None,
        threads_per_worker: int = 1,
        worker_timeout: float = 60.0,
        task_options: Mapping[str, Any] | None = None,
    ) -> None:
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a str or None, got {address!r}")
        self.task_options = self.check_engine_options(task_options, "task_options")
        self.address = address
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self.worker_timeout = worker_timeout
        self._client: Any = None
        self._cluster: Any = None
        self._killed_worker: type[BaseException] | None = None
        # The pool's task keys start with this, so that the quiet plugin
        # (see _quiet_plugin) knows them from other clients' tasks.
        self._key_prefix = ""
        self._plugin_name = ""

    def __repr__(self) -> str:
        return f"DaskBackend(address={self.address!r})"

    def start(self, max_tasks_per_child: int | None) -> int:
        """Connect to (or start) the cluster; return its total thread count."""
        assert max_tasks_per_child is None  # refused by the pool
        import dask  # pyright: ignore[reportMissingImports]  # an optional extra
        import distributed  # pyright: ignore[reportMissingImports]  # an optional extra
        from distributed.scheduler import KilledWorker  # pyright: ignore[reportMissingImports]  # an optional extra

        self._killed_worker = KilledWorker
        if self.address is None:
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                self._cluster = distributed.LocalCluster(
                    n_workers=self.n_workers,
                    threads_per_worker=self.threads_per_worker,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    # Its HTTP routes (health, metrics) on a free loopback
                    # port, not the fixed 8787 another cluster may hold.
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                )
            try:
                self._client = distributed.Client(self._cluster, set_as_default=False)
            except BaseException:
                self._cluster.close()
                self._cluster = None
                raise
        else:
            self._client = distributed.Client(self.address, set_as_default=False)
            try:
                self._client.wait_for_workers(1, timeout=self.worker_timeout)
            except BaseException:
                self._client.close()
                self._client = None
                raise
        token = uuid.uuid4().hex[:12]
        self._key_prefix = f"triopool-{token}-"
        self._plugin_name = f"triopool-quiet-{token}"
        try:
            self._client.register_plugin(
                _quiet_plugin(self._key_prefix), name=self._plugin_name
            )
        except BaseException:
            self.stop()
            raise
        return self.capacity()

    def capacity(self) -> int:
        """The worker threads of the cluster now (at least 1): it follows
        workers that join or leave."""
        threads: int = sum(self._client.nthreads().values())
        return max(1, threads)

    def check_engine_options(
        self, options: object, where: str = "engine_options"
    ) -> dict[str, Any]:
        """Return ``options`` as a dict of ``Client.submit`` options, or raise
        naming the keys it does not take (the values are Dask's to check)."""
        return check_engine_options(
            "DaskBackend", where, options, DASK_TASK_OPTIONS, _DASK_RESERVED
        )

    def check_retries(
        self, retries: int, retry_on: tuple[type[BaseException], ...]
    ) -> None:
        """Dask's ``retries`` runs again a task that raised anything; it
        cannot tell one exception type from another."""
        if Exception not in retry_on:
            raise ValueError(
                "DaskBackend retries a task that raised any exception (Dask's "
                f"retries) and cannot retry only retry_on={retry_on!r}; pass "
                "retry_on=(Exception,) to accept that (a worker death is "
                "retried as the cluster's distributed.scheduler.allowed-failures "
                "says), or leave retries at 0"
            )

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        on_done: Callable[[Outcome], None],
        *,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (),
        engine_options: Mapping[str, Any] | None = None,
    ) -> object:
        """Submit one Dask future; ``on_done`` fires on Dask's callback thread."""
        extra = {**self.task_options, **(engine_options or {})}
        if retries:
            extra["retries"] = retries
        name = getattr(fn, "__name__", None) or type(fn).__name__
        key = f"{self._key_prefix}{name}-{uuid.uuid4().hex}"
        try:
            future = self._client.submit(fn, *args, key=key, **extra)
        except Exception as exc:
            raise SerializationError(
                f"could not send the task to Dask: {type(exc).__name__}: {exc}"
            ) from exc

        def done(future: Any) -> None:
            on_done(self._outcome(future))

        future.add_done_callback(done)
        return future

    def _outcome(self, future: Any) -> Outcome:
        status = future.status
        if status == "finished":
            try:
                return Outcome(value=future.result())
            except Exception as exc:
                return Outcome(error=exc)
        if status == "cancelled":
            return Outcome(error=RuntimeError("the Dask task was cancelled"))
        try:
            remote = future.exception()
            tb = future.traceback()
        except Exception as lookup_error:
            return Outcome(error=lookup_error)
        assert self._killed_worker is not None
        if isinstance(remote, self._killed_worker):
            broken = BrokenWorkerError(
                f"the Dask worker died while running the task: {remote}", None, None
            )
            broken.__cause__ = remote
            return Outcome(error=broken)
        text = "".join(traceback.format_tb(tb)) if tb is not None else None
        if text:
            text = "Traceback (most recent call last):\n" + text
            text += "".join(traceback.format_exception_only(remote))
        return Outcome(error=with_remote_traceback(remote, text))

    def cancel(self, handle: object, *, kill: bool) -> None:
        """Release the future: a queued task never runs; a running one runs on."""
        try:
            handle.cancel()  # type: ignore[attr-defined]
        except Exception:
            pass  # the client is closing, or the task already finished

    def stop(self) -> None:
        """Close the client, and the cluster if this backend started it."""
        client, self._client = self._client, None
        cluster, self._cluster = self._cluster, None
        try:
            if client is not None:
                if cluster is None and self._plugin_name:
                    # A cluster the pool does not own keeps running: leave
                    # its workers' logging as it was.
                    try:
                        client.unregister_worker_plugin(self._plugin_name)
                    except Exception:
                        pass  # the cluster is going or gone; nothing to restore
                client.close()
        finally:
            if cluster is not None:
                cluster.close()

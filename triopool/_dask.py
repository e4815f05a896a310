"""Run a pool's tasks on a Dask cluster (the ``dask`` extra).

Dask is imported when the pool opens, never by ``import triopool``. The
backend uses a synchronous ``distributed.Client`` (its own event-loop thread):
no asyncio loop ever runs in Trio's thread, and no trio-asyncio.

Dask cannot stop a task that runs in a worker's thread: a cancelled running
task runs to its end and its result is dropped. So a call that may have to be
stopped (``kill_on_cancel=True`` or a ``time_limit``: the pool passes
``killable=True``) runs in a child process of its Dask worker instead (see
``_dask_child``), which is killed when the client releases the task; the
other calls run in the worker's thread as they are. The pool refuses
``max_tasks_per_child`` rather than ignoring it.
"""

from __future__ import annotations

import traceback
import uuid
from typing import TYPE_CHECKING, Any

from . import _dask_child
from ._backend import (
    Capabilities,
    Outcome,
    check_engine_options,
    with_remote_traceback,
)
from ._errors import BrokenWorkerError, RemoteError, SerializationError

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

# distributed.Future, once a pool has asked (see DaskBackend.is_ref).
_future_type: Any = None


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
    never cached, never merged with an equal call. A call with
    ``kill_on_cancel=True`` (the pool's default) or a ``time_limit`` runs in
    a child process of its Dask worker instead, which the worker kills when
    the call is cancelled or its time limit passes; that costs a Python
    start per call, so pass ``kill_on_cancel=False`` to a pool whose tasks
    need not be stopped midway.

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
    capabilities = Capabilities(
        kill_running=True, max_tasks_per_child=False, kill_on_request=True
    )
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
        import cloudpickle  # pyright: ignore[reportMissingImports]  # comes with Dask
        import dask  # pyright: ignore[reportMissingImports]  # an optional extra
        import distributed  # pyright: ignore[reportMissingImports]  # an optional extra
        from distributed.scheduler import KilledWorker  # pyright: ignore[reportMissingImports]  # an optional extra

        self._killed_worker = KilledWorker
        # The killable calls' runner travels by value: a worker need not
        # have triopool installed (see _dask_child).
        cloudpickle.register_pickle_by_value(_dask_child)
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
        killable: bool = False,
    ) -> object:
        """Submit one Dask future; ``on_done`` fires on Dask's callback thread.

        A ``killable`` call runs in a child process of the Dask worker (see
        ``_dask_child``), killed once the future is released."""
        extra = {**self.task_options, **(engine_options or {})}
        if retries:
            extra["retries"] = retries
        name = getattr(fn, "__name__", None) or type(fn).__name__
        key = f"{self._key_prefix}{name}-{uuid.uuid4().hex}"
        try:
            if killable:
                future = self._client.submit(
                    _dask_child.run_killable, fn, *args, key=key, **extra
                )
            else:
                future = self._client.submit(fn, *args, key=key, **extra)
        except Exception as exc:
            raise SerializationError(
                f"could not send the task to Dask: {type(exc).__name__}: {exc}"
            ) from exc

        def done(future: Any) -> None:
            outcome = self._outcome(future)
            if killable and outcome.error is None:
                outcome = _child_outcome(outcome.value)
            on_done(outcome)

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
        died = _pop_attribute(remote, _dask_child.DIED_ATTRIBUTE)
        if isinstance(remote, ChildProcessError) and died is not None:
            pid, exitcode = died
            broken = BrokenWorkerError(
                f"the task's process on its Dask worker died (exit status "
                f"{exitcode}) while running the task",
                pid,
                exitcode,
            )
            broken.__cause__ = remote
            return Outcome(error=broken)
        child_text = _pop_attribute(remote, _dask_child.TRACEBACK_ATTRIBUTE)
        if isinstance(child_text, str):
            # It ran in a child process: that traceback is the task's own.
            return Outcome(error=with_remote_traceback(remote, child_text))
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

    @property
    def client(self) -> Any:
        """The pool's ``distributed.Client`` while the pool is open (else
        ``None``): futures it makes (``backend.client.scatter(data)``) may be
        passed to the pool's calls, which resolve them. Dask refuses futures
        of another client."""
        return self._client

    def put(self, obj: object) -> object:
        """``client.scatter``: the object on the cluster's workers, once
        (blocking); a Dask ``Future``."""
        try:
            # In a list, so that a list or dict is put whole, not item by item.
            futures = self._client.scatter([obj], hash=False)
        except Exception as exc:
            raise SerializationError(
                f"could not scatter the object to Dask: {type(exc).__name__}: {exc}"
            ) from exc
        return futures[0]

    def release(self, ref: object) -> None:
        """Release a scattered object's future: Dask forgets the object once
        no task needs it."""
        try:
            ref.release()  # type: ignore[attr-defined]
        except Exception:
            pass  # the client is closing

    def is_ref(self, obj: object) -> bool:
        """Whether ``obj`` is a Dask ``Future`` (resolved before the task runs)."""
        global _future_type
        if _future_type is None:
            from distributed import Future  # pyright: ignore[reportMissingImports]  # an optional extra

            _future_type = Future
        return isinstance(obj, _future_type)

    def cancel(self, handle: object, *, kill: bool) -> None:
        """Release the future: a queued task never runs; a running one runs
        on, unless it is a killable call, whose child process its worker
        then kills."""
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


def _pop_attribute(error: BaseException, name: str) -> Any:
    """Remove and return what ``_dask_child`` set on an exception it raised
    (``None`` if it set nothing), so that the caller's exception is the
    task's as it was."""
    values = getattr(error, "__dict__", None)
    if not isinstance(values, dict):
        return None
    return values.pop(name, None)


def _child_outcome(value: Any) -> Outcome:
    """The outcome of a killable call from what ``_dask_child.run_in_child``
    returned (its raised outcomes are mapped by ``DaskBackend._outcome``)."""
    tag = value[0]
    if tag == "value":
        return Outcome(value=value[1])
    if tag == "unpicklable-value":
        return Outcome(
            error=SerializationError(
                f"the task's result could not be pickled: {value[1]}"
            )
        )
    if tag == "unpicklable-error":
        _, type_name, message, text = value
        return Outcome(error=RemoteError(type_name, message, text))
    # "killed": only a released task is killed, and its result never arrives.
    return Outcome(error=RuntimeError("the Dask task was killed"))

"""Run a pool's tasks on a Ray cluster (the ``ray`` extra).

Ray is imported when the pool opens, never by ``import triopool``. Ray's
driver connection is process-wide: the backend calls ``ray.init`` only if
nothing in this process has, and then ``ray.shutdown`` when the pool closes
(which stops the cluster only if that ``ray.init`` started it). A cluster the
backend did not start is never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from typing import TYPE_CHECKING, Any

from ._backend import (
    Capabilities,
    Outcome,
    check_engine_options,
    with_remote_traceback,
)
from ._errors import (
    BrokenWorkerError,
    RemoteError,
    SerializationError,
    TimeLimitExceeded,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

__all__ = ["RayBackend"]

# The options of Ray's ``f.options(...)`` that a pool passes on as they are.
RAY_TASK_OPTIONS = frozenset(
    {
        "num_cpus",
        "num_gpus",
        "memory",
        "resources",
        "accelerator_type",
        "runtime_env",
        "scheduling_strategy",
        "placement_group",
        "placement_group_bundle_index",
        "placement_group_capture_child_tasks",
        "name",
    }
)
# Ray options the pool sets from its own: the option to use instead.
_RAY_RESERVED = {
    "max_retries": "the pool's retries",
    "retry_exceptions": "the pool's retry_on",
    "max_calls": "the pool's max_tasks_per_child",
    "num_returns": "nothing: a task returns one value",
}

# What ``ray.init`` logs at WARNING about the pool's own doing, which a
# program that never configured logging would print: (logger, message start).
# The pool starts Ray in a worker thread, so Ray cannot set its SIGTERM
# handler (the pool stops the cluster itself); a local cluster the pool starts
# has token authentication on by default, which is what it should be.
_EXPECTED_INIT_RECORDS = (
    ("ray._private.worker", "SIGTERM handler is not set because"),
    (
        "ray._private.authentication.authentication_token_setup",
        "Token authentication is enabled for this Ray cluster",
    ),
)


def _amount(value: object) -> float:
    """A resource amount of a task option; anything else counts as none
    (Ray itself refuses it when the task is submitted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value)


def ray_capacity(
    resources: Mapping[str, float], task_options: Mapping[str, Any]
) -> int:
    """How many tasks of ``task_options`` fit at once in a cluster whose
    resources (``ray.cluster_resources()``: the totals of its alive nodes)
    are ``resources``: for each resource a task asks for (``num_cpus``, 1 by
    default; ``num_gpus``; ``memory``; ``resources``), how many times the
    cluster holds it, the fewest of them; at least 1. A task that asks for
    nothing counts one per CPU."""
    cpus = task_options.get("num_cpus")
    wants: dict[str, float] = {
        "CPU": 1.0 if cpus is None else _amount(cpus),
        "GPU": _amount(task_options.get("num_gpus")),
        "memory": _amount(task_options.get("memory")),
    }
    custom = task_options.get("resources")
    if isinstance(custom, dict):
        wants.update((str(name), _amount(value)) for name, value in custom.items())
    # A small tolerance: Ray keeps fractional resources to 4 decimals.
    fits = [
        math.floor(_amount(resources.get(name)) / amount + 1e-6)
        for name, amount in wants.items()
        if amount > 0
    ]
    if not fits:
        fits = [math.floor(_amount(resources.get("CPU")))]
    return max(1, min(fits))


@contextlib.contextmanager
def _quiet_init() -> Iterator[None]:
    """Drop exactly the records of ``_EXPECTED_INIT_RECORDS`` while the block
    runs (``ray.init``); every other record, and those loggers afterwards,
    are left alone."""
    filters = []
    for name, start in _EXPECTED_INIT_RECORDS:

        def keep(record: logging.LogRecord, start: str = start) -> bool:
            return not (isinstance(record.msg, str) and record.msg.startswith(start))

        logger = logging.getLogger(name)
        logger.addFilter(keep)
        filters.append((logger, keep))
    try:
        yield
    finally:
        for logger, keep in filters:
            logger.removeFilter(keep)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """The one remote function: the user's function travels as an argument,
    so Ray exports a single function definition per pool. The call's
    arguments are the task's own, so Ray resolves an ``ObjectRef`` among them
    (see ``_refs`` for those deeper in)."""
    return fn(*args)


def _fetch(ref: object) -> Any:
    """A put object, in a Ray task: ``ray.get`` (see ``_refs.Cached``)."""
    import ray  # pyright: ignore[reportMissingImports]  # an optional extra

    return ray.get(ref)


class _Keeper:
    """A thread that starts Ray, stays until :meth:`stop`, then shuts Ray down.

    ``ray.init`` starts the local cluster's processes so that they die with
    the *thread* that started them (Linux's parent-death signal follows the
    thread). The pool starts its backend in a Trio worker thread, which
    exits once idle for a while: Ray's processes, and the pool's tasks with
    them, would die ten seconds into a pool. So ``ray.init`` runs here, in a
    thread that lives as long as the cluster.
    """

    def __init__(
        self, init: Callable[[], object], shutdown: Callable[[], object]
    ) -> None:
        self._shutdown = shutdown
        self._ready = threading.Event()
        self._release = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(init,), name="triopool Ray keeper", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._errors:
            self._thread.join()
            raise self._errors.pop()

    def _run(self, init: Callable[[], object]) -> None:
        try:
            init()
        except BaseException as exc:
            self._errors.append(exc)
            self._ready.set()
            return
        self._ready.set()
        self._release.wait()
        try:
            self._shutdown()
        except BaseException as exc:
            self._errors.append(exc)

    def stop(self) -> None:
        """Shut Ray down (in the thread that started it); blocking."""
        self._release.set()
        self._thread.join()
        if self._errors:
            raise self._errors.pop()


class RayBackend:
    """Run tasks as Ray tasks: ``open_pool(backend=RayBackend())``.

    Each call is one Ray task with ``max_retries=0`` (a task runs at most
    once, as in the local pool) and one CPU. With ``retries``, Ray retries it
    itself: ``max_retries`` (a worker death, which Ray always retries then) and
    ``retry_exceptions`` (the task's own exception types named in
    ``retry_on``). Cancelling a running call with a
    kill uses ``ray.cancel(force=True)``, which kills its worker process.
    ``max_tasks_per_child`` maps to Ray's ``max_calls``.

    The pool keeps as many calls in flight as the cluster's resources hold
    tasks of ``task_options`` (by default one per CPU), and follows the
    cluster as nodes join or leave; ``open_pool(workers=N)`` fixes it at N.

    Args:
        address: ``None`` (or ``"local"``) starts a local Ray cluster bound to
            127.0.0.1 that the pool owns and stops on exit; ``"auto"`` or a
            ``"host:port"`` connects to a running cluster, which is left
            running.
        num_cpus: CPUs of a local cluster (``None``: Ray's default).
        init_kwargs: More keyword arguments for ``ray.init``.
        task_options: Ray task options for every call of the pool
            (``{"num_gpus": 1, "resources": {"model": 1}}``): any of
            ``num_cpus`` (default 1), ``num_gpus``, ``memory``,
            ``resources``, ``accelerator_type``, ``runtime_env``,
            ``scheduling_strategy``, ``placement_group``,
            ``placement_group_bundle_index``,
            ``placement_group_capture_child_tasks`` and ``name``. A call's
            ``engine_options`` override them key by key. An unknown key
            raises :class:`ValueError` naming it and the valid ones.

    Example::

        async with triopool.open_pool(backend=triopool.RayBackend()) as pool:
            print(await pool.run_sync(sum, [1, 2, 3]))
    """

    name = "RayBackend"
    capabilities = Capabilities(kill_running=True, max_tasks_per_child=True)
    # Seconds between two calls of capacity() while the pool has calls.
    capacity_interval = 1.0

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        init_kwargs: dict[str, Any] | None = None,
        task_options: Mapping[str, Any] | None = None,
    ) -> None:
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a str or None, got {address!r}")
        self.task_options = self.check_engine_options(task_options, "task_options")
        self.address = address
        self.num_cpus = num_cpus
        self.init_kwargs = dict(init_kwargs or {})
        self._ray: Any = None
        self._remote: Any = None
        self._initialized_here = False
        self._keeper: _Keeper | None = None

    def __repr__(self) -> str:
        return f"RayBackend(address={self.address!r})"

    def start(self, max_tasks_per_child: int | None) -> int:
        """Connect to (or start) Ray; return the cluster's CPU count."""
        # Keep a local cluster on this machine and quiet: no usage reports.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray  # pyright: ignore[reportMissingImports]  # an optional extra

        self._ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            local = self.address in (None, "local")
            if local:
                kwargs["_node_ip_address"] = "127.0.0.1"
                if self.num_cpus is not None:
                    kwargs["num_cpus"] = self.num_cpus
            kwargs.update(self.init_kwargs)
            address = "local" if local else self.address

            def init() -> None:
                with _quiet_init():
                    ray.init(address=address, **kwargs)

            self._keeper = _Keeper(init, ray.shutdown)
            self._initialized_here = True
        options: dict[str, Any] = {"max_retries": 0, "num_cpus": 1}
        options.update(self.task_options)
        if max_tasks_per_child is not None:
            options["max_calls"] = max_tasks_per_child
        self._remote = ray.remote(**options)(_call)
        return self.capacity()

    def capacity(self) -> int:
        """How many of the pool's tasks the cluster can run at once now (see
        :func:`ray_capacity`): it follows nodes that join or leave."""
        return ray_capacity(self._ray.cluster_resources(), self.task_options)

    def check_engine_options(
        self, options: object, where: str = "engine_options"
    ) -> dict[str, Any]:
        """Return ``options`` as a dict of Ray task options, or raise naming
        the keys Ray's tasks do not take (the values are Ray's to check)."""
        return check_engine_options(
            "RayBackend", where, options, RAY_TASK_OPTIONS, _RAY_RESERVED
        )

    def check_retries(
        self, retries: int, retry_on: tuple[type[BaseException], ...]
    ) -> None:
        """Refuse a ``retry_on`` that Ray's own retry cannot follow."""
        if any(issubclass(TimeLimitExceeded, cls) for cls in retry_on):
            raise ValueError(
                f"RayBackend cannot retry a task killed for its time limit (Ray "
                f"never runs a cancelled task again), but retry_on={retry_on!r} "
                "covers TimeLimitExceeded: name BrokenWorkerError and the "
                "task's own exception types only"
            )
        if not any(issubclass(BrokenWorkerError, cls) for cls in retry_on):
            raise ValueError(
                "RayBackend always retries a task whose worker died (Ray's "
                f"max_retries), but retry_on={retry_on!r} leaves out "
                "BrokenWorkerError: add it to retry_on"
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
        """Submit one Ray task; ``on_done`` fires on a Ray thread."""
        remote = self._remote
        options: dict[str, Any] = dict(engine_options or {})
        if retries:
            own = [cls for cls in retry_on if not issubclass(cls, BrokenWorkerError)]
            options.update(max_retries=retries, retry_exceptions=own or False)
        if options:
            # Ray checks the values here: its error reaches the caller as is.
            remote = remote.options(**options)
        try:
            ref = remote.remote(fn, *args)
        except Exception as exc:
            raise SerializationError(
                f"could not send the task to Ray: {type(exc).__name__}: {exc}"
            ) from exc

        def done(future: Any) -> None:
            on_done(self._outcome(future))

        ref.future().add_done_callback(done)
        return ref

    def _outcome(self, future: Any) -> Outcome:
        exceptions = self._ray.exceptions
        try:
            return Outcome(value=future.result())
        except exceptions.RayTaskError as exc:
            cause = exc.cause
            text = str(exc)
            if isinstance(cause, Exception):
                return Outcome(error=with_remote_traceback(cause, text))
            if isinstance(cause, BaseException):
                error = BrokenWorkerError(
                    f"the Ray task raised {type(cause).__name__}", None, None
                )
                error.__cause__ = cause
                return Outcome(error=error)
            return Outcome(error=RemoteError(type(exc).__name__, text, text))
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError) as exc:
            error = BrokenWorkerError(
                f"the Ray worker died while running the task: {exc}", None, None
            )
            error.__cause__ = exc
            return Outcome(error=error)
        except exceptions.TaskCancelledError as exc:
            return Outcome(error=exc)
        except Exception as exc:
            return Outcome(error=exc)

    # Tasks fetch a put object once per worker process and keep it: Ray would
    # copy a bytes object out of its store again for every task.
    fetch = staticmethod(_fetch)

    def put(self, obj: object) -> object:
        """``ray.put``: the object in Ray's object store, once (blocking)."""
        try:
            return self._ray.put(obj)
        except Exception as exc:
            raise SerializationError(
                f"could not put the object in Ray's object store: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def release(self, ref: object) -> None:
        """Forget a put object: Ray frees it once no task holds it."""
        # Ray counts references: the pool dropping its own is the release.

    def is_ref(self, obj: object) -> bool:
        """Whether ``obj`` is a Ray ``ObjectRef`` (resolved before the task runs)."""
        return isinstance(obj, self._ray.ObjectRef)

    def cancel(self, handle: object, *, kill: bool) -> None:
        """``ray.cancel``; with ``kill`` the worker running it is killed."""
        try:
            self._ray.cancel(handle, force=kill)
        except Exception:
            pass  # already finished

    def stop(self) -> None:
        """Disconnect from Ray if this backend connected; a cluster this
        backend did not start keeps running."""
        if self._initialized_here:
            self._initialized_here = False
            keeper, self._keeper = self._keeper, None
            assert keeper is not None
            keeper.stop()
        self._remote = None

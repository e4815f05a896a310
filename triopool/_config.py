"""A pool's options: their names and defaults, written once, and their checks.

:class:`Options` is ``open_pool``'s options as the caller gave them; it is the
one place their names and defaults are written. ``open_pool``,
``configure_default_pool`` and the backend pool all read them from here (the
public signatures repeat the defaults for readers and type checkers; a test
keeps them equal). :class:`PoolConfig` is the same options checked, once, for
the local pool.

Invariants:

- Every argument error names the parameter and the bad value, and is raised
  before any process starts.
- An option is a field of :class:`Options`; nothing else becomes one.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._errors import (
    BrokenPoolError,
    BrokenWorkerError,
    SerializationError,
    TimeLimitExceeded,
    WorkerStartError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Final, TypeAlias

    #: What ``retry_on`` may be: one exception class, or a sequence of them.
    RetryOn: TypeAlias = type[BaseException] | Sequence[type[BaseException]]


class PoolDefault(enum.Enum):
    """The type of :data:`POOL_DEFAULT`, which means "the pool's default".

    ``POOL_DEFAULT``, its one member, is the default of ``time_limit``,
    ``soft_time_limit``, ``kill_on_cancel``, ``retries`` and ``retry_on`` in
    :meth:`Pool.run_sync` (and of ``retries`` and ``retry_on`` in
    :meth:`Pool.map` and :meth:`Pool.imap`): the call uses the value given to
    :func:`open_pool`. Pass ``None`` instead to
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


def check_retries(name: str, value: object) -> None:
    """``retries``: how many more runs a failed task may have."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 0, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (0: no retry), got {value!r}")


# What no task's failure can be: the pool raises them before or around a
# task, never for one run of it.
_NEVER_A_RUN = (BrokenPoolError, WorkerStartError, SerializationError)


def retry_classes(value: object) -> tuple[type[BaseException], ...]:
    """``retry_on`` as a tuple of exception classes (one class alone is
    taken as a tuple of one, as ``except`` does); TypeError or ValueError
    naming the bad entry and the fix."""
    if isinstance(value, type):
        value = (value,)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            "retry_on must be a tuple of exception classes, such as "
            f"(BrokenWorkerError, TimeLimitExceeded), got {value!r}"
        )
    classes = tuple(value)
    for cls in classes:
        if not isinstance(cls, type) or not issubclass(cls, BaseException):
            raise TypeError(
                f"retry_on must hold exception classes, got {cls!r}: name the "
                "class itself, such as ValueError, not an instance or a name"
            )
        if not issubclass(cls, Exception):
            raise ValueError(
                f"retry_on cannot name {cls.__name__}: a task that raises it "
                "ends its worker, and the caller gets BrokenWorkerError; name "
                "BrokenWorkerError instead"
            )
        if issubclass(cls, _NEVER_A_RUN):
            raise ValueError(
                f"retry_on cannot name {cls.__name__}: it is never the failure "
                "of one run of a task, so running the task again cannot help; "
                "name BrokenWorkerError, TimeLimitExceeded or the task's own "
                "exception types"
            )
    return classes


def _check_retry_on(value: object) -> None:
    retry_classes(value)


def retries_task_errors(classes: tuple[type[BaseException], ...]) -> bool:
    """Whether ``classes`` (a checked ``retry_on``) may match an exception
    that a task raises itself, which the parent must then decode to decide."""
    pool_errors = (BrokenWorkerError, TimeLimitExceeded)
    return any(not issubclass(cls, pool_errors) for cls in classes)


def _check_min_workers(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _check_elastic(
    workers: int | None, min_workers: int | None, idle_timeout: float | None
) -> None:
    """``min_workers`` and ``idle_timeout`` go together (``min_workers=None``
    means the pool never shrinks, so an ``idle_timeout`` alone would do
    nothing), and ``min_workers`` is at most ``workers``."""
    if min_workers is None and idle_timeout is not None:
        raise ValueError(
            f"idle_timeout={idle_timeout!r} needs min_workers, the number of "
            "workers to keep: pass min_workers=0 to let every idle worker exit, "
            "or leave idle_timeout at None to keep them all"
        )
    if min_workers is not None and idle_timeout is None:
        raise ValueError(
            f"min_workers={min_workers!r} needs idle_timeout, the seconds a "
            "worker above it may stay idle before it exits"
        )
    if workers is not None and min_workers is not None and min_workers > workers:
        raise ValueError(
            f"min_workers must be <= workers, got min_workers={min_workers!r} "
            f"and workers={workers!r}"
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
    retries: int = attrs.field(validator=_parameter_check(check_retries))
    retry_on: tuple[type[BaseException], ...] = attrs.field(
        validator=_parameter_check(lambda n, v: _check_retry_on(v))
    )
    min_workers: int | None = attrs.field(
        validator=_parameter_check(_check_min_workers)
    )
    idle_timeout: float | None = attrs.field(
        validator=_parameter_check(lambda n, v: _check_number(n, v, allow_none=True))
    )
    max_lifetime_per_child: float | None = attrs.field(
        converter=_no_limit_if_inf,
        validator=_parameter_check(lambda n, v: _check_number(n, v, allow_none=True)),
    )
    forward_logs: bool = attrs.field()

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
    @forward_logs.validator  # pyright: ignore[reportAttributeAccessIssue]
    def _check_bool(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"{attribute.name} must be a bool, got {value!r}")

    def __attrs_post_init__(self) -> None:
        _check_limits(self.time_limit, self.soft_time_limit, "")
        _check_elastic(self.workers, self.min_workers, self.idle_timeout)

    @property
    def elastic(self) -> bool:
        """Whether idle workers above ``min_workers`` may exit."""
        return (
            self.min_workers is not None
            and self.min_workers < self.workers
            and self.idle_timeout is not None
            and self.idle_timeout != math.inf
        )


@attrs.frozen
class Options:
    """``open_pool``'s options (all but ``backend``) as given, not yet checked.

    The defaults here are the defaults of :func:`open_pool` and
    :func:`configure_default_pool`.
    """

    workers: int | None = None
    start_method: Literal["spawn", "forkserver"] = "spawn"
    forkserver_preload: Sequence[str] = ()
    initializer: Callable[..., object] | None = None
    initargs: Sequence[Any] = ()
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None
    start_timeout: float = 4.0
    max_start_failures: int = 5
    time_limit: float | None = None
    soft_time_limit: float | None = None
    kill_on_cancel: bool = True
    shutdown_timeout: float = 5.0
    retries: int = 0
    retry_on: RetryOn = (BrokenWorkerError,)
    min_workers: int | None = None
    idle_timeout: float | None = None
    max_lifetime_per_child: float | None = None
    forward_logs: bool = True

    def as_dict(self) -> dict[str, Any]:
        """Every option by name, in the order of the signature."""
        return attrs.asdict(self, recurse=False)

    def frozen(self) -> Options:
        """These options with the sequences copied, so that a caller changing
        its list afterwards changes nothing here. Check them first:
        ``tuple("numpy")`` would pass as five module names."""
        return attrs.evolve(
            self,
            forkserver_preload=tuple(self.forkserver_preload),
            initargs=tuple(self.initargs),
            retry_on=retry_classes(self.retry_on),
        )

    def config(self) -> PoolConfig:
        """Check these options for a local pool (TypeError or ValueError
        naming the first bad one)."""
        return PoolConfig(
            workers=_usable_cpus() if self.workers is None else self.workers,
            start_method=self.start_method,
            forkserver_preload=_as_tuple("forkserver_preload", self.forkserver_preload),
            initializer=self.initializer,
            initargs=_as_tuple("initargs", self.initargs),
            max_tasks_per_child=self.max_tasks_per_child,
            max_memory_per_child=self.max_memory_per_child,
            start_timeout=self.start_timeout,
            max_start_failures=self.max_start_failures,
            time_limit=self.time_limit,
            soft_time_limit=self.soft_time_limit,
            kill_on_cancel=self.kill_on_cancel,
            shutdown_timeout=self.shutdown_timeout,
            retries=self.retries,
            retry_on=retry_classes(self.retry_on),
            min_workers=self.min_workers,
            idle_timeout=self.idle_timeout,
            max_lifetime_per_child=self.max_lifetime_per_child,
            forward_logs=self.forward_logs,
        )


#: Every option at its default.
DEFAULTS: Final = Options()

#: What the default pool (``triopool.run_sync``) uses for ``min_workers`` and
#: ``idle_timeout`` while both are left at None: its workers exit after 10
#: idle minutes.
DEFAULT_POOL_MIN_WORKERS: Final = 0
DEFAULT_POOL_IDLE_TIMEOUT: Final = 600.0

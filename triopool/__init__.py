"""triopool: a process pool for Trio, with structured concurrency all the way down.

Everything public is importable from here; the private modules each hold one
concept (see DESIGN.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._config import POOL_DEFAULT as POOL_DEFAULT
from ._config import PoolDefault as PoolDefault
from ._default import configure_default_pool as configure_default_pool
from ._default import run_sync as run_sync
from ._errors import BrokenPoolError as BrokenPoolError
from ._errors import BrokenWorkerError as BrokenWorkerError
from ._errors import RemoteError as RemoteError
from ._errors import RemoteTraceback as RemoteTraceback
from ._errors import SerializationError as SerializationError
from ._errors import SoftTimeLimitExceeded as SoftTimeLimitExceeded
from ._errors import TimeLimitExceeded as TimeLimitExceeded
from ._errors import TriopoolError as TriopoolError
from ._errors import WorkerStartError as WorkerStartError
from ._events import EventStream as EventStream
from ._events import TaskEvent as TaskEvent
from ._events import WorkerEvent as WorkerEvent
from ._handle import Handle as Handle
from ._inside import WorkerInfo as WorkerInfo
from ._inside import current_worker as current_worker
from ._pool import Pool as Pool
from ._pool import open_pool as open_pool
from ._progress import MapProgress as MapProgress
from ._stats import PoolStatistics as PoolStatistics
from ._stats import WorkerInsight as WorkerInsight

if TYPE_CHECKING:
    from ._dask import DaskBackend as DaskBackend
    from ._ray import RayBackend as RayBackend

__version__ = "0.1.0.dev0"

# The cluster backends load on first use, so `import triopool` costs nothing
# more for them (they import their engine only when a pool opens).
_LAZY = {"RayBackend": "._ray", "DaskBackend": "._dask"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        value.__module__ = "triopool"
        globals()[name] = value
        return value
    raise AttributeError(f"module 'triopool' has no attribute {name!r}")


__all__ = [
    "POOL_DEFAULT",
    "BrokenPoolError",
    "BrokenWorkerError",
    "DaskBackend",
    "EventStream",
    "Handle",
    "MapProgress",
    "Pool",
    "PoolDefault",
    "PoolStatistics",
    "RayBackend",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "TaskEvent",
    "TimeLimitExceeded",
    "TriopoolError",
    "WorkerEvent",
    "WorkerInfo",
    "WorkerInsight",
    "WorkerStartError",
    "configure_default_pool",
    "current_worker",
    "open_pool",
    "run_sync",
]

for _obj in (
    EventStream,
    MapProgress,
    Pool,
    PoolDefault,
    PoolStatistics,
    TaskEvent,
    WorkerEvent,
    WorkerInsight,
    configure_default_pool,
    open_pool,
    run_sync,
):
    _obj.__module__ = "triopool"
del _obj

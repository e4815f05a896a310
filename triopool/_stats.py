"""A pool's counters as the user sees them: :class:`PoolStatistics`.

Invariant: the identities its docstring states hold for every pool, local or
on a cluster backend.
"""

from __future__ import annotations

import attrs


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

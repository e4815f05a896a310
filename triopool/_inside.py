"""What a task can learn about the worker it runs in: :func:`current_worker`.

The worker sets the state here (:func:`enter`) before it runs the
initializer, and counts the tasks it finished; a task reads it through
:func:`current_worker`. Invariants: this module imports only the standard
library (the worker imports it at start, and a task calling
``triopool.current_worker()`` must never load trio); outside a worker, and in
a process a task forked, there is no current worker.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = ["WorkerInfo", "current_worker"]


class WorkerInfo:
    """Which worker runs the current task: see :func:`current_worker`.

    Attributes:
        index: The worker's slot, ``0 <= index < workers``. A replacement
            (after recycling, a crash, a kill) takes the slot of the worker
            it replaces, so the index stays the same while the pid changes.
        pid: The worker process's pid.
        tasks_done: How many tasks this worker process finished before the
            current one (0 in the initializer and in its first task).

    Instances are immutable, compare by value and pickle, so a task can
    return one.
    """

    __slots__ = ("index", "pid", "tasks_done")

    index: int
    pid: int
    tasks_done: int

    def __init__(self, index: int, pid: int, tasks_done: int) -> None:
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "pid", pid)
        object.__setattr__(self, "tasks_done", tasks_done)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"WorkerInfo is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"WorkerInfo is immutable: cannot delete {name!r}")

    def _fields(self) -> tuple[int, int, int]:
        return (self.index, self.pid, self.tasks_done)

    def __eq__(self, other: object) -> bool:
        if type(other) is not WorkerInfo:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"WorkerInfo(index={self.index}, pid={self.pid}, "
            f"tasks_done={self.tasks_done})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerInfo, self._fields())


class _State:
    """The worker's own record of itself; one per worker process."""

    __slots__ = ("index", "pid", "tasks_done")

    def __init__(self, index: int, pid: int) -> None:
        self.index = index
        self.pid = pid
        self.tasks_done = 0


# Set in a worker process only (see enter).
_state: _State | None = None


def enter(index: int, pid: int) -> _State:
    """Make this process the worker in slot ``index``; the worker loop counts
    finished tasks on the state returned."""
    global _state
    _state = _State(index, pid)
    return _state


def current_worker() -> WorkerInfo:
    """Describe the worker process running the current task.

    Call it in a task or an initializer that a pool runs. It works in every
    worker whatever the start method, and never imports trio there.

    Example::

        def where_am_i() -> str:
            me = triopool.current_worker()
            return f"slot {me.index}, pid {me.pid}, {me.tasks_done} tasks before"

    Raises:
        RuntimeError: Not called in a pool's worker process (in the program
            that opened the pool, say, or in a process that a task forked).
    """
    state = _state
    if state is None or state.pid != os.getpid():
        raise RuntimeError(
            "triopool.current_worker() was called outside a worker process; "
            "call it in a function the pool runs (a task passed to run_sync, "
            "map or imap, or the initializer), not in the program that opened "
            "the pool"
        )
    return WorkerInfo(state.index, state.pid, state.tasks_done)


WorkerInfo.__module__ = "triopool"
current_worker.__module__ = "triopool"

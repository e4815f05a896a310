"""Seams for the test suite: what tests may change in a pool, on purpose.

Tests never patch private names of triopool; they install hooks here, with
:func:`installed`, for the pools they open meanwhile (a pool reads the hooks
once, as it opens). With none installed, a pool pays one attribute check per
task frame for the trace hook, one per worker going idle for the stray-frame
hook, and nothing else.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Literal

import attrs
import trio

from . import _faults

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ._protocol import Frame
    from ._worker import Process, Worker

_log = logging.getLogger("triopool")

TraceKind = Literal["written", "written ahead", "received", "write cut"]
#: Where the stray-frame hook is asked: "handshake", once a worker's UP
#: came; "idle", as a worker goes idle once up or after an answer (it
#: was sent nothing, or answered all it was sent).
StrayPoint = Literal["handshake", "idle"]


@attrs.frozen
class Trace:
    """One frame crossing a worker's pipes, as the trace hook sees it.

    ``written``/``written ahead``: a task frame written whole to a free or a
    busy worker (``pieces`` is the encoded frame, ``number`` its number on
    that worker). ``received``: a frame from the worker (``kind`` of the
    frame in ``frame_kind``). ``write cut``: a task frame whose write was
    interrupted (``unread`` bytes of the task pipe were still unread then);
    the worker is killed.
    """

    kind: TraceKind
    worker_pid: int
    number: int = 0
    pieces: list[bytes | memoryview] = attrs.field(factory=list)
    frame_kind: int = 0
    unread: int = 0


@attrs.frozen
class Hooks:
    #: Parent-side faults (see ``_faults``); by default from TRIOPOOL_FAULTS.
    faults: _faults.Plan | None = None
    #: Called with every :class:`Trace`, in the pool's own tasks: an
    #: exception it raises is raised there (a test's way to interrupt one).
    trace: Callable[[Trace], None] | None = None
    #: Starts a spawned worker, ``launch(fd_in, fd_out)``; None: the real one.
    launch: Callable[[int, int], Process] | None = None
    #: ``stray_frame(worker_pid, point)``: a frame returned is taken as if
    #: the worker had sent it at that point (see :data:`StrayPoint`), in
    #: place of its UP, or while it idles: what a frame read from another
    #: worker's pipe would look like. None (returned or installed): nothing.
    stray_frame: Callable[[int, StrayPoint], Frame | None] | None = None
    #: Tasks are written ahead only behind one that took at most this long.
    ahead_after: float = 0.002
    #: The start method of a local pool opened without naming one (a test
    #: suite's way to run every pool once per method); None: ``"spawn"``.
    start_method: Literal["spawn", "forkserver"] | None = None


_current = Hooks(faults=_faults.from_environment(_faults.PARENT_STAGES))


def current() -> Hooks:
    """The hooks a pool opening now uses."""
    return _current


@contextlib.contextmanager
def installed(**changes: object) -> Iterator[Hooks]:
    """Install hooks for the pools opened in the block (see :class:`Hooks`)."""
    global _current
    previous = _current
    _current = attrs.evolve(previous, **changes)  # type: ignore[arg-type]
    try:
        yield _current
    finally:
        _current = previous


async def parent_fault(
    plan: _faults.Plan, worker: Worker, stage: str, task: int | None = None
) -> None:
    """Inject a test's fault at a parent-side stage (see ``_faults``): the
    plan is the ``faults`` hook, or TRIOPOOL_FAULTS."""
    fault = plan.due(stage, task)
    if fault is None:
        return
    _log.debug(
        "fault injected at %s: %r (worker %d)",
        stage,
        fault,
        worker.pid,
        extra={
            "event": "fault_injected",
            "worker_pid": worker.pid,
            "worker_index": worker.index,
        },
    )
    if fault.action == "sleep":
        await trio.sleep(fault.argument)
    else:
        # Kill and reap, so the worker's pipe ends are closed for certain.
        worker.kill()
        await worker.process.wait()

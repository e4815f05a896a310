"""The one way frames go out to a worker: :class:`Outbox`.

Whatever the parent writes to a worker (a task for a free worker, a task
written ahead to a busy one, SKIP frames) goes through :meth:`Outbox.write`,
which writes what the pipe takes at once and returns the rest; only a frame
with a rest waits, in :meth:`Outbox.write_rest`, inside a scope that only
:meth:`Outbox.cut` cancels. A write cut short kills the worker: its stream
is out of sync.

Only the tasks of the worker's service (see ``_serve``) use it, inside the
worker's owner's block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from . import _pipes
from ._hooks import Hooks, Trace, parent_fault

if TYPE_CHECKING:
    from . import _faults
    from ._jobs import Job
    from ._worker import Worker


@attrs.define(eq=False)
class Outbox:
    """One worker's write path, and the write in progress."""

    worker: Worker
    hooks: Hooks
    #: A frame is being written (``job``'s task, or SKIPs, if ``job`` is
    #: None): nothing else may be written meanwhile.
    writing: bool = False
    job: Job | None = None
    #: The scope of a write that waits for room in the pipe.
    scope: trio.CancelScope | None = None

    def write(
        self, pieces: list[bytes | memoryview], *, ahead: bool
    ) -> list[bytes | memoryview] | None:
        """Write one frame as far as the pipe takes it now. Returns the rest
        ([] once whole), for :meth:`write_rest`; None if nothing more can be
        written: the worker is gone (its reader sees EOF), or, ``ahead``, the
        pipe had no room. A frame written ahead is one piece of at most
        ``_pipes.ATOMIC_WRITE`` bytes, which a pipe takes whole or not at all:
        it never waits.
        """
        try:
            rest = self.worker.write_now(pieces)
        except trio.BrokenResourceError:
            return None
        if rest and ahead:
            return None
        return rest

    @staticmethod
    def fits_ahead(pieces: list[bytes | memoryview]) -> bool:
        """Whether a frame may be written ahead (see :meth:`write`)."""
        return len(pieces) == 1 and len(pieces[0]) <= _pipes.ATOMIC_WRITE

    async def write_rest(self, rest: list[bytes | memoryview], job: Job | None) -> bool:
        """Wait for room and write the rest of a frame (``job``'s task, or
        SKIPs). Only :meth:`cut` may end the wait; a write cut short kills
        the worker. Returns False if it was cut or the worker is gone."""
        worker = self.worker
        self.writing = True
        self.job = job
        try:
            with trio.CancelScope() as scope:
                self.scope = scope
                await worker.send(rest)
            if scope.cancelled_caught:
                worker.kill()
                if job is not None and self.hooks.trace is not None:
                    self.hooks.trace(
                        Trace(
                            "write cut",
                            worker.pid,
                            job.number,
                            job.pieces,
                            0,
                            worker.unread_task_bytes(),
                        )
                    )
                return False
            return True
        except trio.BrokenResourceError:
            return False
        finally:
            self.writing = False
            self.job = self.scope = None

    def cut(self, job: Job | None = None) -> bool:
        """End the wait of the write in progress: ``job``'s only (its caller
        gave up on it), or any (``job`` None: the worker exited). Returns
        whether ``job`` is the one being written."""
        if job is not None and job is not self.job:
            return False
        if self.scope is not None:
            self.scope.cancel()
        return True

    async def fault_before_send(
        self, faults: _faults.Plan, job: Job, number: int
    ) -> None:
        """A test's fault before ``job`` is written, as task ``number`` of the
        worker; its caller may give up meanwhile, as during a write."""
        self.job = job
        with trio.CancelScope() as self.scope:
            await parent_fault(faults, self.worker, "before_send", number)
        self.job = self.scope = None

"""What becomes of a worker's jobs when the worker goes, and the log record
that says how it went.

A worker's service (``_serve``) decides *that* its worker goes: its caller
gave up on the running job, the job ran out of time, a task ended the
worker, or its pipe reached EOF. The functions here settle the jobs it held
then, through the one table of job states (``_jobs``), and log each end with
structured fields (``event``, ``worker_pid``; see docs/logging.rst): what
the pool did on purpose below WARNING, the unexpected at WARNING.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from . import _logs, _messages
from ._errors import BrokenWorkerError, TimeLimitExceeded
from ._jobs import JobState
from ._spawn import describe_exit

if TYPE_CHECKING:
    from . import _protocol
    from ._jobs import Job, Jobs
    from ._worker import Worker

_log = logging.getLogger("triopool")


def fields(worker: Worker, event: str, **more: object) -> dict[str, object]:
    """The structured fields of a record about ``worker`` (see the module
    docstring): ``event``, ``worker_pid``, ``worker_index``, and ``more``."""
    return {
        "event": event,
        "worker_pid": worker.pid,
        "worker_index": worker.index,
        **more,
    }


def stop_job(jobs: Jobs, worker: Worker, job: Job) -> bool:
    """The job's caller gave up on it, or its time limit expired: the
    worker is killed (when its owner's block ends). Returns True if the job
    is to run again (``retry_on`` names TimeLimitExceeded): it waits, and
    the caller queues it once the worker has exited (``Jobs.put_back``)."""
    if job.state is JobState.CANCELLED:
        _log.info(
            "worker %d killed: its task was cancelled",
            worker.pid,
            extra=fields(worker, "killed_for_cancel"),
        )
        return False
    assert job.time_limit is not None
    # On purpose, and the caller gets TimeLimitExceeded: not a warning.
    _log.info(
        "worker %d killed: task exceeded its time limit of %g s",
        worker.pid,
        job.time_limit,
        extra=fields(worker, "killed_for_time_limit"),
    )
    error = TimeLimitExceeded(
        f"the task exceeded its time limit of {job.time_limit:g} s; "
        f"worker {worker.pid} was killed",
        job.time_limit,
    )
    if job.parts is not None:
        # A map's chunk that reports its items: the items it had not
        # finished run elsewhere as soon as it fails (see _chunk_parts), so
        # the one it runs must be stopped first.
        worker.kill()
    return jobs.run_failed(job, error, worker.pid, requeue=False)


async def fatal_cause(
    worker: Worker, frame: _protocol.Frame, grace: float
) -> BaseException:
    """A task raised a BaseException that ends its worker (a FATAL frame):
    return it, to be the cause of its job's error, once the worker exited
    (it is killed if it sends anything more, or has not ended its pipe
    within ``grace`` seconds)."""
    try:
        cause = _messages.decode_remote_exception(frame).rebuild()
    except Exception as exc:
        # Not what a FATAL frame holds; the worker is ending (or gets
        # killed below) all the same.
        cause = exc
    with trio.move_on_after(grace):
        while (later := await worker.receive()) is not None:
            if not _logs.is_log(later):  # a thread of its may still log
                worker.kill()
                break
            _logs.handle(later, worker.pid, worker.index)
    return cause


def lost(
    jobs: Jobs,
    worker: Worker,
    job: Job | None,
    exitcode: int | None,
    *,
    started: bool,
    killed: bool,
) -> None:
    """The worker's pipe is at EOF and it was reaped (with ``exitcode``): it
    died, was killed, or broke its pipe. Settle ``job``, the one it ran or
    was sent (``started``: the worker had read all of it); ``killed``: it
    was killed for a task of its own, whose answers were read to the end."""
    how = exit_text(worker, exitcode)
    # "task" says what became of its task: none, "rerun" elsewhere (it had
    # not started), "retried" (retries), or "failed".
    lost = fields(
        worker,
        "lost",
        broke_protocol=worker.protocol_error is not None,
        exitcode=exitcode,
        task=None,
    )
    if job is None:
        if killed:
            # Killed for a task of its own (cancelled, or over its time
            # limit): on purpose.
            _log.info(
                "worker %d killed (%s)",
                worker.pid,
                how,
                extra=fields(worker, "killed"),
            )
        else:
            _log.warning("idle worker %d died (%s)", worker.pid, how, extra=lost)
        return
    if job.state is not JobState.RUNNING:
        return  # settled already: killed for its cancellation or time limit
    if not started:
        # The worker died before it read the whole task, so the task never
        # started: like a task handed to a worker that died, it runs on
        # another worker (API.md).
        _log.warning(
            "worker %d died before it read its task (%s); the task goes "
            "to another worker",
            worker.pid,
            how,
            extra={**lost, "task": "rerun"},
        )
        jobs.put_back(job)
        return
    error = BrokenWorkerError(
        f"worker {worker.pid} died while running the task ({how})",
        worker.pid,
        exitcode,
    )
    error.__cause__ = job.fatal_cause
    retried = jobs.run_failed(job, error, worker.pid)
    _log.warning(
        "worker %d died running a task (%s)",
        worker.pid,
        how,
        extra={**lost, "task": "retried" if retried else "failed"},
    )


def exit_text(worker: Worker, exitcode: int | None) -> str:
    """How a worker's process ended, for messages."""
    if worker.protocol_error is not None:
        return f"killed for breaking the protocol: {worker.protocol_error}"
    return describe_exit(exitcode)

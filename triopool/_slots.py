"""Supervision: a slot task per worker, starts, replacements, start
failures, the broken pool, and the fork server the slots fork from.

Each slot loops: it takes a start permit, starts a task that owns one worker
(``async with open_worker()``), waits for the worker to report up, runs its
:class:`~triopool._serve.Service` until the worker retires, dies or the pool
closes, and leaves the block, which kills, reaps and closes everything of
that worker. The slot starts the replacement as soon as the worker stops
serving, so a retiring worker exits while the next one starts; each worker
still has exactly one owning task.

Invariants: a slot has at most one serving worker, plus one that is exiting;
the worker counters obey ``started == alive + recycled + lost +
start_failures + stopped``; retirement is decided in the slot's service,
never by the worker on its own. Worker events (``_events``) are published
here, next to the counter they match, and only while someone is subscribed.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Final, Literal

import attrs
import trio

from . import _logs, _messages, _protocol
from ._errors import BrokenPoolError, RemoteTraceback, WorkerStartError
from ._events import WorkerEvent
from ._forkserver import ForkServer, open_forkserver
from ._hooks import parent_fault
from ._serve import End, Service, Why
from ._settle import exit_text
from ._spawn import WorkerProcess, describe_exit
from ._stats import SlotBook, WorkerCounters, WorkerInsight
from ._worker import Process, Worker, open_worker

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._config import PoolConfig
    from ._events import WorkerKind
    from ._hooks import Hooks
    from ._jobs import Jobs

_log = logging.getLogger("triopool")

# A "recycled" WorkerEvent's reason: the option whose limit the worker
# reached, by the reason Service._retire (or the age timer) records.
_RECYCLED_FOR: Final = {
    "memory": "max_memory_per_child",
    "tasks": "max_tasks_per_child",
    "lifetime": "max_lifetime_per_child",
}

#: Why a worker failed to start, as start-failure log records say
#: (``record.reason``): no report in time; exited first; the initializer
#: raised; a frame other than UP; no pipes or process; the fork server's fault.
StartFailure = Literal[
    "timeout", "exited", "initializer", "bad_frame", "no_process", "forkserver"
]


class StartFailed(Exception):
    """A worker failed to start: the error, and why, for the log."""

    def __init__(
        self, reason: StartFailure, error: WorkerStartError, **fields: object
    ) -> None:
        super().__init__(reason, error)
        self.reason: StartFailure = reason
        self.error = error
        self.fields = fields


@attrs.define(eq=False)
class Slot:
    number: int
    # While waiting to start a worker: cancelled when the pool closes with no
    # work left.
    start_scope: trio.CancelScope | None = None
    book: SlotBook = attrs.field(
        default=attrs.Factory(lambda self: SlotBook(self.number), takes_self=True)
    )


@attrs.define(eq=False)
class Turn:
    """One worker's turn in its slot, as the slot sees it."""

    # Set once the worker serves no more (it may still be exiting).
    served: trio.Event = attrs.field(factory=trio.Event)
    start_failed: bool = False
    # Stopped for idling above min_workers: the slot waits for work.
    idled: bool = False


class Slots:
    """The pool's workers: one slot task each, and the fork server."""

    def __init__(
        self,
        config: PoolConfig,
        worker_config: _messages.WorkerConfig,
        jobs: Jobs,
        cpus: int,
        hooks: Hooks,
    ) -> None:
        self._config = config
        self._worker_config = worker_config
        self._jobs = jobs
        self._hooks = hooks
        self._faults = hooks.faults
        self._slots = [Slot(number) for number in range(config.workers)]
        self._services: set[Service] = set()
        self._consecutive_start_failures = 0
        self._slots_left = 0
        self._slots_done = trio.Event()
        self._start_permits = trio.Semaphore(cpus)
        # start_method="forkserver": the running server, and an event set (and
        # replaced) whenever it changes or the pool breaks.
        self._forkserver: ForkServer | None = None
        self._forkserver_changed = trio.Event()
        self.counters = WorkerCounters()
        # Elasticity (min_workers, idle_timeout) and age
        # (max_lifetime_per_child): slots whose worker idled out park here
        # until a job waits; the timer wakes when a worker comes up.
        self._dormant = trio.lowlevel.ParkingLot()
        self._timer_wake = trio.Event()
        if config.elastic:
            jobs.queued = self._wanted

    def insight(self) -> tuple[WorkerInsight, ...]:
        """Each slot's insight, in slot order (see ``_stats.SlotBook``)."""
        now = trio.current_time()
        return tuple(slot.book.insight(now) for slot in self._slots)

    def _publish(
        self,
        kind: WorkerKind,
        pid: int | None,
        index: int | None,
        exitcode: int | None = None,
        reason: str | None = None,
    ) -> None:
        feed = self._jobs.feed
        if feed is not None:
            feed.publish(
                WorkerEvent(kind, pid, index, trio.current_time(), exitcode, reason)
            )

    def start(self, nursery: trio.Nursery) -> None:
        """Start the slot tasks (and the fork server's) in ``nursery``."""
        self._slots_left = len(self._slots)
        if self._config.start_method == "forkserver":
            nursery.start_soon(self.run_forkserver, name="triopool fork server")
        if self._config.elastic or self._config.max_lifetime_per_child is not None:
            nursery.start_soon(self.run_timer, name="triopool idle timer")
        for slot in self._slots:
            nursery.start_soon(self.run_slot, slot, name=f"triopool slot {slot.number}")

    async def run_slot(self, slot: Slot) -> None:
        try:
            await self._slot_loop(slot)
        finally:
            self._slots_left -= 1
            if not self._slots_left:
                self._slots_done.set()
                self._timer_wake.set()

    async def _slot_loop(self, slot: Slot) -> None:
        # Each worker lives in a task of its own that owns it from its start
        # to its reaping. The slot starts the next worker as soon as the
        # current one stops serving, so a retiring worker exits and is reaped
        # while its replacement starts; the slot's nursery waits for both.
        async with trio.open_nursery() as workers:
            while self._jobs.broken is None and not self.closing_idle():
                launch: Callable[[int, int], Process] = (
                    self._hooks.launch or WorkerProcess
                )
                if self._config.start_method == "forkserver":
                    server = await self._running_forkserver()
                    if server is None:
                        return
                    launch = server.launch
                if not await self._start_permit(slot):
                    continue  # the pool closed meanwhile, with no work left
                self.counters.alive += 1
                self.counters.started += 1
                turn = Turn()
                workers.start_soon(self._run_worker, slot, launch, turn)
                await turn.served.wait()
                if turn.idled:
                    await self._until_wanted()
                elif turn.start_failed:
                    # Back off a little, so that a start that fails at once (no
                    # fds left, say) does not spin.
                    await trio.sleep(
                        min(0.01 * 2**self._consecutive_start_failures, 0.5)
                    )

    async def _start_permit(self, slot: Slot) -> bool:
        """Wait until fewer workers start than there are CPUs; take a permit.

        Starting more workers at once than the machine has CPUs makes none of
        them report up sooner, only each of them later: with costly imports
        or initializers they would all miss ``start_timeout`` together, and a
        busy machine would pass for a crash loop. Returns False if the pool
        closed meanwhile with no work left (no permit taken).
        """
        taken = False
        with trio.CancelScope() as scope:
            slot.start_scope = scope
            await self._start_permits.acquire()
            taken = True
        slot.start_scope = None
        return taken

    async def _run_worker(
        self, slot: Slot, launch: Callable[[int, int], Process], turn: Turn
    ) -> None:
        """One worker's life in its slot: start, serve, retire or die, reap."""
        # Torn down by the pool's cancellation unless we learn otherwise.
        end: End | None = End.CLOSED
        permit = True  # taken by the slot for this start (see _start_permit)
        pid: int | None = None
        worker: Worker | None = None
        service: Service | None = None
        book = slot.book
        index = slot.number

        def served() -> None:
            # Its up time ends when it serves no more, before the slot starts
            # its replacement.
            if pid is not None:
                book.worker_down(pid, trio.current_time())
            turn.served.set()

        try:
            async with open_worker(launch, index=slot.number) as worker:
                pid = worker.pid
                book.worker_started(trio.current_time())
                _log.debug(
                    "worker %d started (slot %d)",
                    worker.pid,
                    slot.number,
                    extra={
                        "event": "started",
                        "worker_pid": worker.pid,
                        "worker_index": slot.number,
                    },
                )
                self._publish("started", pid, index)
                up = await self._start(slot, worker)
                permit = False
                self._start_permits.release()
                if up:
                    service = Service(worker, self._jobs, self._config, self._hooks)
                    service.pipeline.book = book
                    book.worker_up(pid, service.pipeline, trio.current_time())
                    self._publish("up", pid, index)
                    self._services.add(service)
                    self._timer_wake.set()
                    try:
                        end = await service.run(served)
                    finally:
                        self._services.discard(service)
                    turn.idled = service.dismissed is End.CLOSED
        except StartFailed as exc:
            end = None
            self._start_failed(
                exc.error, exc.reason, index, worker_pid=pid, **exc.fields
            )
        except WorkerStartError as exc:
            # Only the fork server's launch raises it.
            end = None
            self._start_failed(exc, "forkserver", index, stage="fork")
        except OSError as exc:
            # No pipes or no process: the same as a worker failing to start.
            end = None
            error = WorkerStartError(f"could not start a worker process: {exc}")
            error.__cause__ = exc
            self._start_failed(error, "no_process", index, errno=exc.errno)
        finally:
            if permit:
                self._start_permits.release()
            self.counters.alive -= 1
            if end is End.RETIRED:
                self.counters.recycled += 1
            elif end is End.LOST:
                self.counters.lost += 1
            elif end is End.CLOSED:
                self.counters.stopped += 1
            if end is not None:
                self._publish_end(end, worker, service, index)
                if end is End.CLOSED and pid is not None:
                    _log.debug(
                        "worker %d stopped",
                        pid,
                        extra={
                            "event": "stopped",
                            "worker_pid": pid,
                            "worker_index": index,
                        },
                    )
            turn.start_failed = end is None
            served()

    def _publish_end(
        self, end: End, worker: Worker | None, service: Service | None, index: int
    ) -> None:
        """The worker event that matches the counter ``end`` moved."""
        if self._jobs.feed is None or worker is None:
            return
        reason: str | None = None
        dismissed = None if service is None else service.dismissed
        if end is End.RETIRED:
            kind: WorkerKind = "recycled"
            retired_for = None if service is None else service.retired_for
            if dismissed is End.RETIRED:
                retired_for = "lifetime"
            reason = None if retired_for is None else _RECYCLED_FOR[retired_for]
        elif end is End.LOST:
            kind = "lost"
            if worker.protocol_error is not None:
                reason = "broke_protocol"
        else:
            kind = "stopped"
            if dismissed is End.CLOSED:
                reason = "idle_timeout"
        self._publish(kind, worker.pid, index, worker.process.returncode, reason)

    async def _start(self, slot: Slot, worker: Worker) -> bool:
        """Hand the worker its configuration and wait for it to report up.

        Returns False if the pool closed meanwhile and has no work left.
        Raises WorkerStartError if the worker fails to start.
        """
        timeout = self._config.start_timeout
        frame: _protocol.Frame | None = None
        with trio.CancelScope() as start_scope:
            slot.start_scope = start_scope
            with trio.move_on_after(timeout) as timer:
                if self._faults is not None:
                    await parent_fault(self._faults, worker, "before_config")
                levels = _logs.levels() if self._config.forward_logs else None
                config = self._worker_config.frame(
                    worker_index=slot.number, log_levels=levels
                )
                try:
                    await worker.send(config)
                except trio.BrokenResourceError:
                    pass  # it died already: reported below as an early exit
                else:
                    frame = await worker.receive()
                    # What the initializer logged comes first.
                    while frame is not None and _logs.is_log(frame):
                        _logs.handle(frame, worker.pid, slot.number)
                        frame = await worker.receive()
                    stray = self._hooks.stray_frame
                    if stray is not None and frame is not None:
                        frame = stray(worker.pid, "handshake") or frame
        slot.start_scope = None
        if start_scope.cancelled_caught:
            return False  # the pool closed and has no work for this worker
        if timer.cancelled_caught:
            raise StartFailed(
                "timeout",
                WorkerStartError(
                    f"worker {worker.pid} did not report up within {timeout:g} s"
                ),
            )
        if frame is None:
            exitcode = await worker.reap_after_eof()
            raise StartFailed(
                "exited",
                WorkerStartError(
                    f"worker {worker.pid} exited ({exit_text(worker, exitcode)}) "
                    "before reporting up"
                ),
                exitcode=exitcode,
                broke_protocol=worker.protocol_error is not None,
            )
        if frame.kind == _protocol.START_FAILED:
            failure = _messages.decode_start_failed(frame)
            error = WorkerStartError(
                f"the initializer raised in worker {worker.pid}: "
                f"{failure.type_name}: {failure.message}"
            )
            error.__cause__ = RemoteTraceback(failure.traceback)
            raise StartFailed("initializer", error)
        if frame.kind != _protocol.UP:
            raise StartFailed(
                "bad_frame",
                WorkerStartError(
                    f"worker {worker.pid} sent {frame!r} instead of reporting up"
                ),
            )
        self._consecutive_start_failures = 0
        _log.debug(
            "worker %d up",
            worker.pid,
            extra={
                "event": "up",
                "worker_pid": worker.pid,
                "worker_index": slot.number,
            },
        )
        return True

    # Elasticity and age

    async def _until_wanted(self) -> None:
        """A slot whose worker idled out: wait until a job waits (and no idle
        worker took it), or the pool closes or breaks. No back-off: that is
        for start failures only."""
        if self._jobs.waiting or self._jobs.broken is not None or self.closing_idle():
            return
        await self._dormant.park()

    def _wanted(self) -> None:
        """A job was queued for want of an idle worker: wake a dormant slot."""
        self._dormant.unpark(count=1)

    async def run_timer(self) -> None:
        """Stop workers idle too long above ``min_workers``; retire idle ones
        past ``max_lifetime_per_child`` (busy ones retire themselves at
        their next idle moment, see Service.past_age).

        A worker turns idle without telling anyone, so while any is busy the
        timer looks again every quarter of ``idle_timeout``: an idle worker
        exits between ``idle_timeout`` and a quarter more after it idled.
        """
        config = self._config
        idle_timeout = config.idle_timeout if config.elastic else None
        lifetime = config.max_lifetime_per_child
        keep = config.min_workers or 0
        # A busy worker is looked at again this often.
        poll = min(
            math.inf if idle_timeout is None else idle_timeout / 4,
            math.inf if lifetime is None else lifetime / 4,
        )
        while not self._slots_done.is_set():
            now = trio.current_time()
            wake = now + poll
            serving = [s for s in self._services if s.dismissed is None]
            alive = sum(not s.finished for s in serving)
            for service in serving:
                since = service.idle_since()
                if lifetime is not None and since is not None and service.past_age(now):
                    self._dismiss(service, End.RETIRED)
                    alive -= 1
                    continue
                if lifetime is not None and not service.past_age(now):
                    wake = min(wake, service.up_at + lifetime)
                if idle_timeout is None or since is None:
                    continue
                if now < since + idle_timeout:
                    wake = min(wake, since + idle_timeout)
                elif alive > keep:
                    self._dismiss(service, End.CLOSED)
                    alive -= 1
            self._timer_wake = trio.Event()
            with trio.move_on_at(wake):
                await self._timer_wake.wait()

    def _dismiss(self, service: Service, end: End) -> None:
        pid = service.worker.pid
        if not service.dismiss(end):
            return
        if end is End.RETIRED:
            _log.info(
                "idle worker %d retired over max_lifetime_per_child",
                pid,
                extra={"event": "retired", "reason": "lifetime", "worker_pid": pid},
            )
        else:
            _log.info(
                "worker %d stopped: idle for idle_timeout above min_workers",
                pid,
                extra={"event": "stopped", "reason": "idle", "worker_pid": pid},
            )

    def closing_idle(self) -> bool:
        return self._jobs.closing and not self._jobs.waiting

    def _start_failed(
        self,
        error: WorkerStartError,
        reason: StartFailure,
        index: int | None,
        **fields: object,
    ) -> None:
        """Count a start failure and log it (``record.reason`` says why, with
        ``exitcode`` for "exited", ``errno`` for "no_process"; for
        "forkserver", ``stage`` says whether the server failed to start or
        died before forking any worker ("server", with ``errno`` if an OS
        call failed) or did not fork this worker ("fork")); enough of them in
        a row break the pool. ``index``: the slot, or None for the fork
        server."""
        self.counters.start_failures += 1
        if self._jobs.feed is not None:
            pid = fields.get("worker_pid")
            exitcode = fields.get("exitcode")
            self._publish(
                "start_failed",
                pid if isinstance(pid, int) else None,
                index,
                exitcode if isinstance(exitcode, int) else None,
                reason,
            )
        self._consecutive_start_failures += 1
        count = self._consecutive_start_failures
        _log.warning(
            "worker failed to start (%d in a row): %s",
            count,
            error,
            extra={
                "event": "start_failed",
                "reason": reason,
                "worker_index": index,
                **fields,
            },
        )
        if count >= self._config.max_start_failures and self._jobs.broken is None:
            broken = BrokenPoolError(
                f"{count} worker starts failed in a row; the last: {error}"
            )
            broken.__cause__ = error
            self._jobs.broken = broken
            _log.error("pool broken: %s", broken, extra={"event": "broken"})
            self.fail_waiting(self._jobs.broken_error)
            self.wake_idle()
            self._forkserver_changed.set()

    # The fork server

    async def _running_forkserver(self) -> ForkServer | None:
        """The fork server once it runs; None if the pool broke meanwhile."""
        while self._jobs.broken is None:
            server = self._forkserver
            if server is not None and server.running:
                return server
            await self._forkserver_changed.wait()
        return None

    def _set_forkserver(self, server: ForkServer | None) -> None:
        self._forkserver = server
        self._forkserver_changed.set()
        self._forkserver_changed = trio.Event()

    async def run_forkserver(self) -> None:
        """Keep a fork server running for the slots until they are all done.

        The server's process and socket belong to this task's ``async with``;
        a server that dies is replaced. One that fails to start, or dies
        before forking any worker, counts as a start failure.
        """
        config = self._config
        failures = 0
        while not self._slots_done.is_set():
            if self._jobs.broken is not None:
                # Broken, and no server running: the slots are ending.
                await self._slots_done.wait()
                return
            error: WorkerStartError | None = None
            fields: dict[str, object] = {}
            try:
                async with open_forkserver(
                    config.forkserver_preload, config.start_timeout
                ) as server:
                    _log.debug(
                        "fork server %d up",
                        server.pid,
                        extra={"event": "forkserver_up", "worker_pid": server.pid},
                    )
                    self._set_forkserver(server)
                    try:
                        stopped = await server.serve(self._slots_done)
                    finally:
                        self._set_forkserver(None)
                if stopped:
                    return
                exitcode = server.process.returncode
                _log.warning(
                    "fork server %d died (%s); starting a new one",
                    server.pid,
                    describe_exit(exitcode),
                    extra={"event": "forkserver_died", "worker_pid": server.pid},
                )
                self._drop_dead_idle()
                if not server.forks:
                    error = WorkerStartError(
                        f"the fork server exited ({describe_exit(exitcode)}) "
                        "before forking any worker"
                    )
            except WorkerStartError as exc:
                error = exc
            except OSError as exc:
                error = WorkerStartError(f"could not start the fork server: {exc}")
                error.__cause__ = exc
                fields["errno"] = exc.errno
            if error is None:
                failures = 0
                continue
            # A start failure, counted as a start too (see PoolStatistics).
            self.counters.started += 1
            self._start_failed(error, "forkserver", None, stage="server", **fields)
            failures += 1
            with trio.move_on_after(min(0.01 * 2**failures, 0.5)):
                await self._slots_done.wait()

    def _drop_dead_idle(self) -> None:
        """End at once the idle workers a dead fork server took with it.

        They are settled as killed (PR_SET_PDEATHSIG) when the server's
        connection ends, a moment before their pipes close: none may get a
        task meanwhile, and the slots start their replacements now.
        """
        for service in self._services:
            if service.pipeline.current is None and service.worker.known_dead:
                if service in self._jobs.idle:
                    self._jobs.idle.remove(service)
                service.interrupt(Why.GONE)

    def wake_idle(self) -> None:
        """Have the idle workers take the next queued job or stop, and the
        slots that wait to start one stop, when the pool closes or breaks."""
        idle = self._jobs.idle
        self._jobs.idle = []
        for service in idle:
            assert isinstance(service, Service)
            service.wake_to_recheck()
        for slot in self._slots:
            if slot.start_scope is not None and self.closing_idle():
                slot.start_scope.cancel()
        self._dormant.unpark_all()
        self._timer_wake.set()

    def fail_waiting(self, make_error: Callable[[], BaseException]) -> None:
        """Fail every job that waits: queued, or handed to an idle worker."""
        handed = []
        for service in self._services:
            if service.handed is not None:
                handed.append(service.handed)
                service.handed = None
        self._jobs.fail_waiting(make_error, handed)

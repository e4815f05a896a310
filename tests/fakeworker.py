"""A fake worker for collaboration tests of the pool (see test_collaboration).

The pool starts its workers through the ``launch`` hook (``_hooks``); a
:class:`Launcher` installed there starts a :class:`FakeWorker` instead of a
process. Its "process" is a Trio task of the test, running a script the test
gives, that speaks the real wire protocol on dups of the worker's pipe ends:
it reads CONFIG and answers UP, then follows the script, and after it serves
the way ``_child`` does (one task at a time, SKIPs for held tasks confirmed
with SKIPPED before the answer, AHEAD when it holds a task) until its task
pipe reaches EOF, when it exits with status 0.

Nothing here runs in another process, so a test drives each step of the
conversation exactly, and fast: the script decides when an answer goes out,
whether the worker dies, how, and when.

The fake replaces spawning a worker, which is what the ``launch`` hook
covers: it applies to ``start_method="spawn"`` pools only (a fork server
starts its workers itself). :func:`fake_pool` therefore always opens a spawn
pool, whatever start method a test module or the environment defaults to.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import os
import signal
from typing import TYPE_CHECKING, Any

import trio

import triopool
from triopool import _hooks, _messages, _protocol, _serialize

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    Script = Callable[["FakeWorker"], Awaitable[None]]

# Far above any pid the system hands out: never a process the test could hit.
_PIDS = itertools.count(10**7)


class SpawnOnlyError(ValueError):
    """A fake pool was asked for another start method than spawn."""


class FakeWorker:
    """A worker process, as the pool's ``Process`` protocol sees it, whose
    behaviour a test scripts."""

    def __init__(self, fd_in: int, fd_out: int, index: int) -> None:
        # The pool closes its copies as soon as launch returns.
        self.fd_in = os.dup(fd_in)
        self.fd_out = os.dup(fd_out)
        # The pipes are created blocking (a real worker reads them so); a
        # Trio task must never block the thread in a read.
        os.set_blocking(self.fd_in, False)
        os.set_blocking(self.fd_out, False)
        self.index = index
        self._pid = next(_PIDS)
        self._returncode: int | None = None
        self._exited = False
        self._dead = trio.Event()
        self._decoder = _protocol.Decoder()
        self._eof = False
        #: Tasks read but not started, with their numbers on this worker.
        self.held: collections.deque[tuple[int, _protocol.Frame]] = collections.deque()
        self._tasks_read = 0
        self._confirmations: list[bytes] = []
        #: Whether SIGURG makes it take in SKIPs at once (as a real one does).
        self.hears_sigurg = True
        # Reading its next task: SIGURG only notes that it came then, and
        # is acted on once the task starts (as ``_child._Pipes`` does).
        self._reading = False
        self._urgent = False
        #: The signals the pool sent, in order.
        self.signals: list[int] = []
        self._signalled = trio.Event()
        #: The numbers of the held tasks it dropped for a SKIP, in order.
        self.skipped: list[int] = []
        #: The numbers of the tasks it started, in order.
        self.started_tasks: list[int] = []
        #: Cancels the script and the serving once the process is dead.
        self.scope = trio.CancelScope()

    # The Process protocol (see triopool._worker.Process).

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def exited(self) -> bool:
        return self._exited

    @property
    def orphaned(self) -> bool:
        return False

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def signal(self, signum: int) -> None:
        if self._exited:
            return
        self.signals.append(signum)
        self._signalled.set()
        self._signalled = trio.Event()
        if signum == signal.SIGKILL:
            self.die(-signal.SIGKILL)
        elif signum == signal.SIGURG and self.hears_sigurg:
            if self._reading:
                self._urgent = True
            else:
                self.take_in()
                self.confirm_skips()
        # SIGTERM and SIGINT: a serving worker ignores them (see _child).

    async def started(self) -> None:
        await trio.lowlevel.checkpoint()

    async def wait(self) -> int | None:
        await self._dead.wait()
        return self._returncode

    async def signalled(self, signum: int) -> None:
        """Wait until the pool has sent ``signum``."""
        while signum not in self.signals:
            await self._signalled.wait()

    # What a script does.

    async def handshake(self) -> _messages.WorkerConfig:
        """Read CONFIG and answer UP."""
        frame = await self.receive()
        assert frame is not None
        assert frame.kind == _protocol.CONFIG, frame
        config = _messages.decode_config(frame)
        self.send(_protocol.encode_frame(_protocol.UP))
        return config

    async def receive(self) -> _protocol.Frame | None:
        """The next frame from the pool (waiting for it), None at EOF."""
        while True:
            if self.fd_in < 0:
                raise trio.ClosedResourceError("the fake worker is dead")
            frame = self._decoder.next_frame()
            if frame is _protocol.EOF:
                self._eof = True
                return None
            if frame is not _protocol.NEED_DATA:
                assert isinstance(frame, _protocol.Frame)
                return frame
            try:
                data = os.read(self.fd_in, 1 << 16)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.fd_in)
                continue
            self._decoder.receive_data(data)

    async def next_task(self) -> tuple[int, Any, tuple[Any, ...]] | None:
        """Start the next task (the first held, or else the next TASK frame
        read); its number, function and arguments. None at EOF."""
        if self.held:
            number, frame = self.held.popleft()
        else:
            self._reading = True
            try:
                while True:
                    received = await self.receive()
                    if received is None:
                        return None
                    if received.kind == _protocol.TASK:
                        self._tasks_read += 1
                        number, frame = self._tasks_read, received
                        break
                    # A SKIP before a task is stale: its task was answered.
                    assert received.kind == _protocol.SKIP, received
            finally:
                self._reading = False
        fn, args, _soft_limit = _messages.decode_task(frame, None)
        self.started_tasks.append(number)
        if self._urgent:
            self._urgent = False
            self.take_in()
            self.confirm_skips()
        return number, fn, args

    async def answer_first_then_hold(
        self, go: trio.Event
    ) -> tuple[int, Any, tuple[Any, ...]]:
        """The opening most scripts share: run the first task, answer it once
        ``go`` is set (the test has queued callers behind it, so the pool
        writes ahead), start the next task and wait until one more is held
        behind it. Returns the running task."""
        task = await self.next_task()
        assert task is not None
        await go.wait()
        self.answer(task[1](*task[2]))
        task = await self.next_task()
        assert task is not None
        await self.hold(1)
        return task

    async def hold(self, count: int) -> None:
        """Wait until it holds ``count`` tasks written ahead."""
        while len(self.held) < count:
            if self.fd_in < 0:
                raise trio.ClosedResourceError("the fake worker is dead")
            self.take_in()
            if len(self.held) < count:
                await trio.lowlevel.wait_readable(self.fd_in)

    def take_in(self) -> None:
        """Take in, without waiting, what the pool sent: tasks are held, a
        SKIP drops its task if held and is confirmed later."""
        while not self._eof:
            try:
                data = os.read(self.fd_in, 1 << 16)
            except BlockingIOError:
                break
            self._decoder.receive_data(data)
            if not data:
                break
        while True:
            frame = self._decoder.next_frame()
            if frame is _protocol.EOF:
                self._eof = True
                return
            if frame is _protocol.NEED_DATA:
                return
            assert isinstance(frame, _protocol.Frame)
            if frame.kind == _protocol.TASK:
                self._tasks_read += 1
                self.held.append((self._tasks_read, frame))
            else:
                assert frame.kind == _protocol.SKIP, frame
                (number,) = _protocol.TASK_NUMBER.unpack(frame.payload)
                for task in self.held:
                    if task[0] == number:
                        self.held.remove(task)
                        self.skipped.append(number)
                        self._confirmations.append(
                            _protocol.number_frame(_protocol.SKIPPED, number)
                        )
                        break

    def confirm_skips(self) -> None:
        if self._confirmations:
            data = b"".join(self._confirmations)
            self._confirmations.clear()
            self.send([data])

    def answer_pieces(
        self, value: object, *, take_in: bool = True
    ) -> list[bytes | memoryview]:
        """The answer frame for a task that returned ``value``, after taking
        in what the pool sent (``take_in``; False: as if the answer went out
        just before that came): confirmations first, AHEAD if it holds a
        task, which it then starts at once."""
        if take_in:
            self.take_in()
        payload, buffers = _serialize.dumps(value)
        flags = _protocol.AHEAD if self.held else 0
        pieces = _protocol.encode_frame(_protocol.RESULT, payload, buffers, flags)
        data = b"".join([*self._confirmations, *(bytes(p) for p in pieces)])
        self._confirmations.clear()
        return [data]

    def answer(self, value: object, *, take_in: bool = True) -> None:
        """Answer the task it ran with ``value`` (see :meth:`answer_pieces`)."""
        self.send(self.answer_pieces(value, take_in=take_in))

    def send(self, pieces: list[bytes | memoryview]) -> None:
        # Small frames only: a pipe takes them whole.
        for piece in pieces:
            view = memoryview(piece)
            while view:
                view = view[os.write(self.fd_out, view) :]

    def die(self, returncode: int) -> None:
        """Die now: the pipes close with the process."""
        if self._exited:
            return
        self.close_fds()
        self.exit_keeping_pipes(returncode)

    def exit_keeping_pipes(self, returncode: int) -> None:
        """Exit while something else (a grandchild) holds the pipes open."""
        self._exited = True
        self._returncode = returncode
        self._dead.set()
        self.scope.cancel()

    def close_fds(self) -> None:
        for fd in (self.fd_in, self.fd_out):
            if fd >= 0:
                trio.lowlevel.notify_closing(fd)
                os.close(fd)
        self.fd_in = self.fd_out = -1

    async def serve(self) -> None:
        """Serve as ``_child`` does until EOF, then exit with status 0."""
        while True:
            task = await self.next_task()
            if task is None:
                self.die(0)
                return
            _number, fn, args = task
            self.answer(fn(*args))

    async def run(self, script: Script | None) -> None:
        with self.scope:
            try:
                await self.handshake()
                if script is not None:
                    await script(self)
                if not self._exited:
                    await self.serve()
            except trio.ClosedResourceError:
                # Killed (its fds closed) while it waited for a frame.
                assert self._exited


class Launcher:
    """The ``launch`` hook: starts the ``n``-th worker with ``scripts[n]``
    (or none: it just serves)."""

    def __init__(self, nursery: trio.Nursery, scripts: list[Script]) -> None:
        self._nursery = nursery
        self._scripts = scripts
        self.workers: list[FakeWorker] = []
        self._launched = trio.Event()

    def __call__(self, fd_in: int, fd_out: int) -> FakeWorker:
        index = len(self.workers)
        worker = FakeWorker(fd_in, fd_out, index)
        self.workers.append(worker)
        script = self._scripts[index] if index < len(self._scripts) else None
        self._nursery.start_soon(worker.run, script)
        self._launched.set()
        self._launched = trio.Event()
        return worker

    async def worker(self, index: int) -> FakeWorker:
        """The ``index``-th worker, once launched."""
        while len(self.workers) <= index:
            await self._launched.wait()
        return self.workers[index]

    def close(self) -> None:
        """Close what the fakes still hold (one that exited keeping its
        pipes, one the pool never stopped)."""
        for worker in self.workers:
            worker.close_fds()


@contextlib.asynccontextmanager
async def fake_pool(
    *scripts: Script, **pool_options: Any
) -> AsyncIterator[tuple[triopool.Pool, Launcher]]:
    """A pool whose workers are fakes, the ``n``-th running ``scripts[n]``;
    tasks are written ahead behind any task, however long it took.

    Always a spawn pool: the ``launch`` hook replaces spawning only.
    """
    if pool_options.setdefault("start_method", "spawn") != "spawn":
        raise SpawnOnlyError(
            "fake workers replace spawned ones only: open the pool with "
            "start_method='spawn' (the default of fake_pool)"
        )
    async with trio.open_nursery() as nursery:
        launcher = Launcher(nursery, list(scripts))
        try:
            with _hooks.installed(launch=launcher, ahead_after=math.inf):
                async with triopool.open_pool(**pool_options) as pool:
                    yield pool, launcher
        finally:
            nursery.cancel_scope.cancel()
            launcher.close()

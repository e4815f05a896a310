"""One worker's parent side: its pipes, its process, and frame I/O with it.

Invariant: the fds of a worker are closed only by the ``async with`` of the
task that opened them (:func:`open_worker`). That block creates both pipes
with ``O_CLOEXEC``, starts the process with only its own ends inherited,
closes those ends in the parent at once and holds the parent's ends in
:class:`trio.lowlevel.FdStream` objects, whose ``close`` deregisters each fd
from Trio before closing it. Leaving the block, however it is left, kills the
process if it still runs, reaps it under a shield, and closes both streams.
Nothing else in triopool knows a worker's fd numbers, so nothing else can
close or deregister them, whatever numbers the OS hands out later.

A send that was interrupted leaves the byte stream to the worker out of sync;
the slot then kills that worker, never reuses it. Bytes from the worker that
break the protocol get it killed too (:attr:`Worker.protocol_error`), and
read as EOF: the worker is lost, like one that died, and the pool goes on.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import logging
import os
import signal
import termios
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from . import _pipes, _protocol
from ._spawn import WorkerProcess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

_log = logging.getLogger("triopool")

_READ_SIZE = 1 << 16
# After SIGTERM, how long a worker gets before SIGKILL.
_TERM_GRACE = 1.0
# After EOF on its result pipe, how long a worker gets to be reaped before it
# is taken for one that broke its pipe and killed. A dying process is reaped
# in milliseconds; this leaves room for a busy machine (the status a kill
# finds is the one the process was exiting with anyway).
_EOF_GRACE = 0.5


class Process(Protocol):
    """A worker process as its slot sees it, however it was started.

    ``pid`` is valid once ``started()`` returned; ``signal`` never reaches a
    process that was reaped (so never one that reused its pid). ``exited``
    turns true once the process has exited and been reaped; ``returncode``
    is then its status, or ``None`` if the status could not be learned.
    ``orphaned``: a forked worker whose fork server died first; it is taken
    as killed with the server and ``wait()`` returns, but only its pipes can
    confirm it. Any number of tasks may ``wait()`` at once.
    """

    @property
    def pid(self) -> int: ...

    @property
    def exited(self) -> bool: ...

    @property
    def orphaned(self) -> bool: ...

    @property
    def returncode(self) -> int | None: ...

    def signal(self, signum: int) -> None: ...

    async def started(self) -> None: ...

    async def wait(self) -> int | None: ...


@attrs.define(eq=False)
class Worker:
    """The parent's handle on one running worker process."""

    process: Process
    _send_stream: trio.lowlevel.FdStream
    _receive_stream: trio.lowlevel.FdStream
    _decoder: _protocol.Decoder = attrs.field(factory=_protocol.Decoder)
    _eof: bool = False
    # The pipes' capacity as created. A frame of at least _pipes.LARGE_FRAME
    # widens the pipe it crosses (_wide: one of ours did); both go back to
    # this capacity at the next answer.
    _capacity: int | None = attrs.field(default=None, alias="capacity")
    _wide: bool = False
    #: How many bytes were written to the worker's task pipe so far.
    bytes_written: int = 0
    #: Set if the worker broke the protocol (sent bytes that are not frames,
    #: or closed its result pipe and lived on); it was killed then.
    protocol_error: _protocol.ProtocolError | None = None
    #: The worker's slot (``current_worker().index``), for log records.
    index: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def known_dead(self) -> bool:
        """Whether the process exited, or went with its fork server: no task
        may be written to it any more."""
        process = self.process
        return process.exited or process.orphaned

    def write_now(self, pieces: list[bytes | memoryview]) -> list[bytes | memoryview]:
        """Write as much of a frame as the pipe takes at once; return the rest.

        Straight to the fd, which the stream keeps non-blocking: a frame that
        fits in the pipe is written with no trip through the scheduler
        (FdStream.send_all checkpoints first, on every call).
        """
        fd = self._send_stream.fileno()
        if len(pieces) > 1 and not self._wide:
            self._widen(fd, pieces)
        for index, piece in enumerate(pieces):
            try:
                written = os.write(fd, piece)
                self.bytes_written += written
                while written < len(piece):
                    piece = memoryview(piece)[written:]
                    written = os.write(fd, piece)
                    self.bytes_written += written
            except BlockingIOError:
                return [piece, *pieces[index + 1 :]]
            except OSError as exc:
                raise trio.BrokenResourceError(
                    f"could not write to worker {self.pid}: {exc}"
                ) from exc
        return []

    def task_bytes_read(self) -> int:
        """How many of :attr:`bytes_written` the worker has read.

        Still answerable after the worker died: the pipe keeps its buffer
        while our end is open.
        """
        return self.bytes_written - self.unread_task_bytes()

    def _widen(self, fd: int, pieces: list[bytes | memoryview]) -> None:
        if _pipes.frame_size(pieces) >= _pipes.LARGE_FRAME:
            self._wide = True
            _pipes.widen(fd)

    def _narrow(self, frame: _protocol.Frame) -> None:
        """After an answer, put back pipes a large frame widened: the worker
        read its whole task before it answered, and the answer was read
        whole, so both pipes are empty."""
        if not self._wide:
            size = len(frame.payload) + sum(b.nbytes for b in frame.buffers)
            if size < _pipes.LARGE_FRAME:
                return  # the worker widened nothing either (see _child)
        self._wide = False
        if self._capacity is not None:
            _pipes.narrow(self._send_stream.fileno(), self._capacity)
            _pipes.narrow(self._receive_stream.fileno(), self._capacity)

    async def send(self, pieces: list[bytes | memoryview]) -> None:
        """Write (the rest of) one encoded frame to the worker."""
        while pieces := self.write_now(pieces):
            if self.process.exited:
                # A process it started may hold the pipe's read end: no one
                # will ever read the rest.
                raise trio.BrokenResourceError(f"worker {self.pid} exited")
            await trio.lowlevel.wait_writable(self._send_stream.fileno())

    async def receive(self, *, wait_first: bool = False) -> _protocol.Frame | None:
        """The next frame from the worker, or ``None`` once its pipe closed.

        EOF means the process died or exited: only it holds the write end. A
        stream cut in the middle of a frame (death while writing) is EOF too,
        and so is a stream that breaks the protocol: the worker is killed, and
        :attr:`protocol_error` says why. Once the process has exited, what it
        wrote is read and then EOF comes without waiting, even if a process it
        started still holds the pipe: whoever notices the exit wakes a
        pending receive by cancelling it, and the next one ends at once.

        ``wait_first``: wait until the pipe is readable before the first
        read (when nothing can be there yet, as right after sending a task),
        which saves a read that would fail.

        LOG frames (forwarded log records) are returned like any other: the
        caller hands them to ``_logs.handle`` and reads on.
        """
        decoder = self._decoder
        if wait_first and not decoder.buffered() and not self.process.exited:
            await trio.lowlevel.wait_readable(self._receive_stream.fileno())
        while True:
            try:
                frame = decoder.next_frame()
            except _protocol.ProtocolError as exc:
                # EOF in mid-frame: the worker died while writing.
                if not self._eof:
                    # Garbage (a task that wrote to fds it should not have):
                    # nothing more from this worker can be trusted.
                    self.protocol_error = exc
                    self.kill()
                return None
            if frame is _protocol.NEED_DATA:
                target = decoder.read_target()
                if target is None:
                    data = await self._read(_READ_SIZE)
                    self._eof = not data
                    decoder.receive_data(data)
                else:
                    count = await self._read_into(target)
                    if count:
                        decoder.commit(count)
                    else:
                        self._eof = True
                        decoder.receive_data(b"")
            elif frame is _protocol.EOF:
                return None
            else:
                assert isinstance(frame, _protocol.Frame)
                if frame.buffers or self._wide:
                    self._narrow(frame)
                return frame

    async def _read(self, size: int) -> bytes:
        # Like FdStream.receive_some, minus its checkpoint before every read:
        # an answer that is already there costs no trip through the scheduler.
        fd = self._receive_stream.fileno()
        while True:
            try:
                return os.read(fd, size)
            except BlockingIOError:
                if self.process.exited:
                    return b""  # all it wrote is read
                await trio.lowlevel.wait_readable(fd)

    async def _read_into(self, target: memoryview) -> int:
        # Reads a large segment straight into the memory that becomes the
        # object, saving the copy receive_some() would make.
        fd = self._receive_stream.fileno()
        while True:
            try:
                return os.readv(fd, [target])
            except BlockingIOError:
                if self.process.exited:
                    return 0  # all it wrote is read
                await trio.lowlevel.wait_readable(fd)

    def answer_waiting(self) -> bool:
        """Whether bytes from the worker wait to be decoded or read."""
        if self._decoder.buffered():
            return True
        count = array.array("i", [0])
        try:
            fcntl.ioctl(self._receive_stream.fileno(), termios.FIONREAD, count, True)
        except OSError:  # pragma: no cover - systems without FIONREAD on pipes
            return False
        return count[0] > 0

    def unread_task_bytes(self) -> int:
        """How many bytes sent to the worker it has not read (0 if unknown).

        Still answerable after the worker died: the pipe keeps its buffer while
        our end is open. After a death, a non-zero count means the worker never
        received its last task whole, so that task never started.
        """
        count = array.array("i", [0])
        try:
            fcntl.ioctl(self._send_stream.fileno(), termios.FIONREAD, count, True)
        except OSError:  # pragma: no cover - systems without FIONREAD on pipes
            return 0
        return count[0]

    def kill(self) -> None:
        """SIGKILL the process (unless it was reaped already)."""
        self.process.signal(signal.SIGKILL)

    async def reap_after_eof(self) -> int | None:
        """Reap the worker once its result pipe reached EOF; return its status.

        EOF means it died, unless it closed its result pipe (or ``dup2``-ed
        over it) and lives on: a dying process is reaped within moments, one
        still there after :data:`_EOF_GRACE` broke its pipe and is killed,
        so a caller, a time limit or the pool never wait on it.
        """
        with trio.move_on_after(_EOF_GRACE):
            return await self.process.wait()
        if self.protocol_error is None:
            self.protocol_error = _protocol.ProtocolError(
                "it closed its result pipe and lived on"
            )
        self.kill()
        return await self.process.wait()

    async def stop(self, timeout: float) -> int | None:  # noqa: ASYNC109 - a grace period, not a deadline
        """Ask the worker to exit (EOF on its task pipe) and reap it.

        It gets ``timeout`` seconds, then SIGTERM and a short grace, then
        SIGKILL. Returns the exit status.
        """
        await self._send_stream.aclose()
        with trio.move_on_after(timeout):
            return await self.process.wait()
        # A worker leaves SIGTERM to the parent only while it serves; from
        # EOF on it takes the default action (see _child).
        _log.warning(
            "worker %d did not exit within %g s of its shutdown; sending SIGTERM",
            self.pid,
            timeout,
            extra={
                "event": "shutdown_sigterm",
                "worker_pid": self.pid,
                "worker_index": self.index,
            },
        )
        self.process.signal(signal.SIGTERM)
        with trio.move_on_after(_TERM_GRACE):
            return await self.process.wait()
        _log.warning(
            "worker %d ignored SIGTERM; killing it",
            self.pid,
            extra={
                "event": "shutdown_sigkill",
                "worker_pid": self.pid,
                "worker_index": self.index,
            },
        )
        self.kill()
        return await self.process.wait()


@contextlib.asynccontextmanager
async def open_worker(
    launch: Callable[[int, int], Process] = WorkerProcess, *, index: int | None = None
) -> AsyncIterator[Worker]:
    """Start a worker process and own it, and its fds, for the block.

    ``launch(fd_in, fd_out)`` starts the process (spawn, or a request to the
    fork server) without blocking; once it returns, the child's two pipe
    ends are closed here, whether or not the process exists yet.
    """
    opened: list[int] = []
    try:
        task_r, task_w = os.pipe2(os.O_CLOEXEC)
        opened += (task_r, task_w)
        result_r, result_w = os.pipe2(os.O_CLOEXEC)
        opened += (result_r, result_w)
        process = launch(task_r, result_w)
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    # The child's ends now live in the child only: EOF on result_r means the
    # child is gone, and the child sees EOF on task_r when we close task_w.
    os.close(task_r)
    os.close(result_w)
    capacity = _pipes.capacity(task_w)
    send_stream = trio.lowlevel.FdStream(task_w)
    receive_stream = trio.lowlevel.FdStream(result_r)
    try:
        try:
            await process.started()
            yield Worker(
                process, send_stream, receive_stream, capacity=capacity, index=index
            )
        finally:
            with trio.CancelScope(shield=True):
                if not process.exited:
                    process.signal(signal.SIGKILL)
                    await process.wait()
    finally:
        # close(), not aclose(): aclose() ends with a checkpoint, which in
        # a cancelled scope raises Cancelled and so replaces the exception
        # leaving the block (a KeyboardInterrupt would be lost).
        send_stream.close()
        receive_stream.close()

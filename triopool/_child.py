"""The worker process: a blocking loop that runs tasks sent by the pool.

It reads frames from its task pipe and writes frames to its result pipe (the
two fds it was started with, and the only ones it holds besides 0, 1 and 2).
Invariants:

- It never imports trio or attrs, so a worker starts in the time the
  interpreter takes; a test proves it.
- It handles one task at a time, in the order the tasks were sent, and answers
  each with exactly one RESULT, ERROR or SERIAL_ERROR frame, or with a FATAL
  frame followed by its exit. The parent relies on this order.
- SIGINT and SIGTERM do not stop it while it serves: a Ctrl-C in a terminal, systemd's
  ``KillMode=control-group`` or ``kill -TERM -<pgid>`` signal the whole
  process group, and what happens then is the parent's decision. SIGINT is
  ignored; SIGTERM has a handler that does nothing, so that programs a task
  starts get the default action back at ``exec``. The parent starts the
  worker with both blocked, so this holds from the first instruction. On
  Linux the worker dies with its parent even mid-task
  (``PR_SET_PDEATHSIG``); EOF on the task pipe ends it normally.
- A task raising a ``BaseException`` that is not an ``Exception`` ends the
  worker: the exception is sent as FATAL, then the process exits.
- Only the process the pool started ever touches the pipes. Its pipe fds are
  not inheritable, so programs a task starts never hold them; a copy a task
  makes with ``os.fork()`` that comes back into this loop (it returned or
  raised instead of calling ``os._exit``) exits at once, before it could
  read a task or answer one.

How the worker imports the parent's main script and hooks later imports is
in ``_imports``; how it deals with signals, its parent's death, its memory
and forked copies of itself is in ``_process``.
"""

from __future__ import annotations

import _thread
import collections
import os
import signal
import sys

from . import (
    _chunk,
    _imports,
    _inside,
    _messages,
    _pipes,
    _process,
    _protocol,
    _serialize,
)
from ._errors import SoftTimeLimitExceeded

TYPE_CHECKING = False
if TYPE_CHECKING:
    import pickle
    import types
    from types import FrameType
    from typing import Any, NoReturn

    from ._faults import Plan
    from ._forwarder import Forwarder

# The thread that runs tasks, and gets the signals.
_MAIN_THREAD = _thread.get_ident()
_READ_SIZE = 1 << 16
# Soft limits this long (about 31 years) or longer are never armed:
# setitimer() cannot hold much more (OverflowError past about 292 years).
_LONGEST_TIMER = 1e9


class _Pipes:
    """The worker's two pipe ends, with blocking frame I/O over them.

    Pipelining: while the worker runs a task, the parent may send more tasks
    ahead (numbered per worker from 1, in sending order) and SKIP frames for
    those whose callers gave up. Tasks read but not started wait in
    ``held``. The rules the parent relies on (see ``_serve.Service._answers``):

    - With no task held, the worker starts the first task frame it reads.
    - Before each answer it takes in whatever the parent has sent meanwhile;
      a SKIP drops its task if held and is confirmed by a SKIPPED frame, sent
      before the answer. A SKIP for a task not held (started or answered) is
      ignored.
    - An answer carries the AHEAD flag if a task is held then: the worker
      starts it at once.
    - SIGURG makes a busy worker take in SKIP frames in the middle of a
      task and confirm them at once, so that a caller that gave up on a task
      queued behind a long one is not kept waiting.
    """

    def __init__(self, fd_in: int, fd_out: int) -> None:
        self.fd_in = fd_in
        self.fd_out = fd_out
        self.decoder = _protocol.Decoder()
        # Held tasks, with their numbers.
        self.held: collections.deque[tuple[int, _protocol.Frame]] = collections.deque()
        # The number of the last task frame read.
        self.tasks_read = 0
        self.eof = False
        # SKIPPED frames not sent yet.
        self.confirmations: list[bytes] = []
        # Set while this object reads or writes: SIGURG must not then, and
        # only notes that it came (handled before the task or its answer).
        self.busy = True
        self.signalled = False
        # With forward_logs: LOG frames may come from any thread, so every
        # write holds this lock (see send_log). ``writer``: the thread
        # holding it.
        self.lock: _thread.LockType | None = None
        self.writer: int | None = None
        self.soft_limit: _SoftLimit | None = None

    def receive(self) -> _protocol.Frame | None:
        """The next frame, or ``None`` at EOF."""
        decoder = self.decoder
        while True:
            frame = decoder.next_frame()
            if frame is _protocol.NEED_DATA:
                self._read()
            elif frame is _protocol.EOF:
                self.eof = True
                return None
            else:
                return frame  # type: ignore[return-value]

    def _read(self, size: int = _READ_SIZE) -> None:
        decoder = self.decoder
        target = decoder.read_target()
        if target is not None:
            count = os.readv(self.fd_in, [target])
            if count:
                decoder.commit(count)
            else:
                decoder.receive_data(b"")
        else:
            decoder.receive_data(os.read(self.fd_in, size))

    def next_task(self) -> _protocol.Frame | None:
        """The task to run next: the first held, or else the first task frame
        read (SKIP frames before it are stale). ``None`` at EOF."""
        if self.held:
            return self.held.popleft()[1]
        while True:
            frame = self.receive()
            if frame is None:
                return None
            if frame.kind == _protocol.TASK:
                self.tasks_read += 1
                return frame
            if frame.kind != _protocol.SKIP:
                raise _protocol.ProtocolError(f"unexpected {frame!r}")

    def take_in(self) -> None:
        """Take in, without blocking, the frames the parent sent meanwhile."""
        if self.eof:
            return
        waiting = _pipes.unread(self.fd_in)
        decoder = self.decoder
        if waiting:
            self._read(max(waiting, _READ_SIZE))
        held = self.held
        while True:
            frame = decoder.next_frame()
            if frame is _protocol.NEED_DATA:
                return
            if frame is _protocol.EOF:
                self.eof = True
                return
            assert isinstance(frame, _protocol.Frame)
            if frame.kind == _protocol.TASK:
                self.tasks_read += 1
                held.append((self.tasks_read, frame))
            elif frame.kind == _protocol.SKIP:
                (number,) = _protocol.TASK_NUMBER.unpack(frame.payload)
                for task in held:
                    if task[0] == number:
                        held.remove(task)
                        self.confirmations.append(
                            _protocol.number_frame(_protocol.SKIPPED, number)
                        )
                        break
            else:
                raise _protocol.ProtocolError(f"unexpected {frame!r}")

    def confirm_skips(self) -> None:
        """Send the SKIPPED frames due (from SIGURG, between a task's steps)."""
        if self.confirmations:
            data = b"".join(self.confirmations)
            self.confirmations.clear()
            self.send([data])

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGURG: the parent sent SKIP frames. Handled at once unless a
        read or write is under way (then before the next answer)."""
        if self.busy:
            self.signalled = True
            return
        self.busy = True
        try:
            self.take_in()
            self.confirm_skips()
        finally:
            self.busy = False

    def run_task(self) -> None:
        """The task starts: let SIGURG act at once from now on, and act on
        one that came while this object was busy."""
        self.busy = False
        if self.signalled:
            self.signalled = False
            self.on_signal(signal.SIGURG, None)

    def send(self, pieces: list[bytes | memoryview]) -> None:
        lock = self.lock
        if lock is None:
            self._write(pieces)
            return
        with lock:
            self.writer = _thread.get_ident()
            try:
                self._write(pieces)
            finally:
                self.writer = None

    def _write(self, pieces: list[bytes | memoryview]) -> None:
        if len(pieces) > 1 and _pipes.frame_size(pieces) >= _pipes.LARGE_FRAME:
            # The parent narrows it again once it has read the frame.
            _pipes.widen(self.fd_out)
        for piece in pieces:
            view = memoryview(piece)
            while view:
                view = view[os.write(self.fd_out, view) :]

    def send_log(self, data: bytes) -> None:
        """Send a whole LOG frame, from any thread, between or during tasks.

        A frame is never cut: in the main thread, a SIGURG or a soft time
        limit that comes while it is written is acted on once it is out (a
        soft limit then raises here, into the task that logged). A record
        logged by a signal handler while this thread writes a frame is
        dropped, since waiting would deadlock and writing would cut it.
        """
        lock = self.lock
        assert lock is not None
        me = _thread.get_ident()
        if self.writer == me:
            return
        held = self._hold() if me == _MAIN_THREAD else None
        try:
            with lock:
                self.writer = me
                try:
                    self._write([data])
                except OSError:
                    pass  # the pool is gone: this worker dies with it
                finally:
                    self.writer = None
        finally:
            if held is not None:
                self._release(*held)

    def send_part(self, pieces: list[bytes | memoryview]) -> None:
        """Send a PART frame from the running task (a chunk's item is done).

        As for :meth:`send_log`, the frame is never cut: a SIGURG or a soft
        time limit that comes while it is written is acted on once it is out.
        """
        held = self._hold()
        try:
            self.send(pieces)
        finally:
            self._release(*held)

    def _hold(self) -> tuple[bool, _SoftLimit | None]:
        """Hold a SIGURG or a soft time limit that comes while the main
        thread writes a frame; returns what :meth:`_release` restores."""
        busy, soft_limit = self.busy, self.soft_limit
        self.busy = True
        if soft_limit is not None:
            soft_limit.held = True
        return busy, soft_limit

    def _release(self, busy: bool, soft_limit: _SoftLimit | None) -> None:
        """The frame is out: act on what :meth:`_hold` held."""
        self.busy = busy
        if not busy and self.signalled:
            self.signalled = False
            self.on_signal(signal.SIGURG, None)
        if soft_limit is not None:
            soft_limit.release()

    def answer(
        self,
        kind: int,
        payload: bytes | bytearray | memoryview,
        buffers: list[pickle.PickleBuffer],
        flags: int,
    ) -> None:
        """Send a task's answer, after taking in what the parent sent."""
        self.signalled = False
        self.take_in()
        if self.held and not flags & _protocol.OVER_MEMORY:
            flags |= _protocol.AHEAD
        pieces = _protocol.encode_frame(kind, payload, buffers, flags)
        if self.confirmations:
            pieces[0] = b"".join([*self.confirmations, pieces[0]])
            self.confirmations.clear()
        self.send(pieces)


class _FaultyPipes(_Pipes):
    """Pipes that inject the per-task faults of a test (see ``_faults``).

    Used only when ``TRIOPOOL_FAULTS`` asks for a per-task fault, so the
    normal task loop carries no fault checks at all.
    """

    def __init__(self, pipes: _Pipes, plan: Plan) -> None:
        super().__init__(pipes.fd_in, pipes.fd_out)
        self.decoder = pipes.decoder
        self.lock = pipes.lock
        self.soft_limit = pipes.soft_limit
        self.plan = plan
        self.tasks = 0

    def receive(self) -> _protocol.Frame | None:
        frame = super().receive()
        if frame is not None:
            self.tasks += 1
            self.plan.fire_in_worker("after_receive", self.tasks)
        return frame

    def send(self, pieces: list[bytes | memoryview]) -> None:
        fault = self.plan.due("mid_result", self.tasks)
        if fault is None:
            super().send(pieces)
            return
        data = b"".join(bytes(piece) for piece in pieces)
        half = max(1, len(data) // 2)
        super().send([data[:half]])
        fault.act_in_worker()
        super().send([data[half:]])


class _LogForwarding:
    """``forward_logs=True`` in this worker: a :class:`~triopool._forwarder.Forwarder`
    on the root logger once something imports ``logging``."""

    def __init__(self, levels: _messages.LogLevels, pipes: _Pipes, pid: int) -> None:
        self.levels = levels
        self.pipes = pipes  # replaced by _FaultyPipes in some tests
        self.pid = pid
        self.handler: Forwarder | None = None
        pipes.lock = _thread.allocate_lock()
        self.hook = _imports.AfterImport.install("logging", self._start)

    def _start(self, logging: types.ModuleType) -> None:
        from . import _forwarder

        self.handler = _forwarder.install(self.levels, self._send, self.pid)

    def _send(self, data: bytes) -> None:
        self.pipes.send_log(data)

    def stop(self) -> None:
        """The worker serves no more: records stay here from now on."""
        if self.hook is not None:
            self.hook.uninstall()
        if self.handler is not None:
            from . import _forwarder

            _forwarder.uninstall(self.handler)
            self.handler = None


class _SoftLimit:
    """Raises SoftTimeLimitExceeded inside a task after a delay (SIGALRM)."""

    def __init__(self) -> None:
        self.armed = False
        self.installed = False
        self.seconds = 0.0
        # Set while a frame is written during the task (see _Pipes.send_log):
        # the limit is then only noted (``due``) and raised by release().
        self.held = False
        self.due = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.armed:
            if self.held:
                self.due = True
                return
            self.armed = False
            raise SoftTimeLimitExceeded(
                f"soft time limit of {self.seconds:g} s exceeded"
            )

    def release(self) -> None:
        """End a hold; raise the limit if it expired meanwhile."""
        self.held = False
        if self.due:
            self.due = False
            if self.armed:
                self.armed = False
                raise SoftTimeLimitExceeded(
                    f"soft time limit of {self.seconds:g} s exceeded"
                )

    def arm(self, seconds: float) -> None:
        if seconds >= _LONGEST_TIMER:
            return  # longer than any timer holds: no limit in practice
        if not self.installed:
            signal.signal(signal.SIGALRM, self._handler)
            self.installed = True
        self.seconds = seconds
        self.armed = True
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def disarm(self) -> None:
        self.armed = False
        self.due = False
        signal.setitimer(signal.ITIMER_REAL, 0)


def main(fd_in: int, fd_out: int, parent_pid: int) -> None:
    """Run the worker until its task pipe reaches EOF."""
    _process.ignore_stop_signals()
    # Programs a task starts (os.system, subprocess with close_fds=False)
    # must not hold the pipes: the pool would wait for them to close.
    os.set_inheritable(fd_in, False)
    os.set_inheritable(fd_out, False)
    worker_pid = os.getpid()
    _process.die_with_parent(parent_pid)
    plan: Plan | None = None
    if os.environ.get("TRIOPOOL_FAULTS"):
        from . import _faults

        plan = _faults.from_environment(_faults.WORKER_STAGES)
    pipes = _Pipes(fd_in, fd_out)
    frame = pipes.receive()
    if frame is None:
        return
    config = _messages.decode_config(frame)
    sys.path[:] = config.sys_path
    sys.argv[:] = config.sys_argv
    _imports.use_parent_authkey(config.authkey)
    state = _inside.enter(config.worker_index, worker_pid)
    soft_limit = _SoftLimit()
    pipes.soft_limit = soft_limit
    forwarding = None
    if config.log_levels is not None:
        forwarding = _LogForwarding(config.log_levels, pipes, worker_pid)
    fixup = _imports.MainFixup(config.main_path, config.main_name)
    max_memory = config.max_memory
    try:
        if config.initializer is not None:
            initializer, initargs = _serialize.loads(
                config.initializer, [], fixup.unpickler(config.initializer)
            )
            initializer(*initargs)
    except BaseException as exc:
        _process.leave_if_forked(worker_pid, exc)
        pipes.send(_messages.start_failed_frame(exc))
        os._exit(1)
    _process.leave_if_forked(worker_pid, None)
    del frame, config
    _line_buffered_output()
    if plan is not None:
        plan.fire_in_worker("before_up")
    pipes.send(_protocol.encode_frame(_protocol.UP))
    if plan is not None:
        plan.fire_in_worker("after_up")
        if plan.has("after_receive", "mid_result"):
            pipes = _FaultyPipes(pipes, plan)
            if forwarding is not None:
                forwarding.pipes = pipes
    _chunk.set_part_sender(pipes.send_part)
    _serve(pipes, fixup, soft_limit, max_memory, worker_pid, state)
    if forwarding is not None:
        forwarding.stop()
    # The pool closed the task pipe: the worker is on its way out, and what
    # remains (atexit handlers, non-daemon threads a task left behind) may
    # take the parent's SIGTERM, which it sends once shutdown_timeout is up.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _serve(
    pipes: _Pipes,
    fixup: _imports.MainFixup,
    soft_limit: _SoftLimit,
    max_memory: int | None,
    worker_pid: int,
    state: _inside._State,
) -> None:
    signal.signal(signal.SIGURG, pipes.on_signal)
    # Interrupt system calls, so that a SKIP reaches a task blocked in one
    # (waitpid, a read) at once; Python retries them after the handler ran.
    signal.siginterrupt(signal.SIGURG, True)
    while True:
        frame = pipes.next_task()
        if frame is None:
            return
        flags = 0
        try:
            fn, args, soft_time_limit = _messages.decode_task(
                frame, fixup.unpickler(frame.payload)
            )
        except Exception as exc:
            del frame
            pipes.answer(
                *_messages.serialization_failure_answer(
                    _messages.Step.UNPICKLE_TASK, exc
                ),
                0,
            )
            continue
        del frame
        try:
            if soft_time_limit is not None:
                soft_limit.arm(soft_time_limit)
            pipes.run_task()
            try:
                result: Any = fn(*args)
            except BaseException as exc:
                _process.leave_if_forked(worker_pid, exc)
                raise
            finally:
                pipes.busy = True
                if soft_time_limit is not None:
                    soft_limit.disarm()
            _process.leave_if_forked(worker_pid, None)
        except Exception as exc:
            del fn, args
            kind, payload, buffers = _messages.error_answer(exc)
        except BaseException as exc:
            _fatal(pipes, exc)
        else:
            del fn, args
            # A RESULT frame holds the value itself (see _messages): pickled
            # here, without a detour through a message, on every task.
            kind = _protocol.RESULT
            try:
                payload, buffers = _serialize.dumps_with_fallback(result)
            except Exception as exc:
                kind, payload, buffers = _messages.serialization_failure_answer(
                    _messages.Step.PICKLE_RESULT, exc
                )
            del result
        _flush_output()
        if max_memory is not None and _process.resident_memory() > max_memory:
            flags = _protocol.OVER_MEMORY
        pipes.answer(kind, payload, buffers, flags)
        del payload, buffers
        state.tasks_done += 1
        if flags:
            # Over max_memory_per_child: the parent retires this worker and
            # runs the tasks it holds elsewhere. Start none of them.
            while pipes.receive() is not None:
                pass
            return


def _line_buffered_output() -> None:
    """Make what tasks print reach the parent's stdout and stderr line by line.

    Workers share the parent's fds 1 and 2. Block buffering would hold output
    back until the worker exits (or lose it if the worker is killed) and could
    cut lines where workers' buffers interleave; unbuffered output
    (``PYTHONUNBUFFERED``, ``-u``) writes ``print``'s text and its newline
    separately, so lines of different workers mix. One write per line keeps
    lines whole: pipes write up to ``PIPE_BUF`` (4096) bytes atomically.
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(  # pyright: ignore[reportAttributeAccessIssue]
                    line_buffering=True, write_through=False
                )
            except Exception:
                pass


def _flush_output() -> None:
    """Write out what the task printed before its result is sent: a caller
    that got the result can count on the task's output being out."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def _fatal(pipes: _Pipes, exc: BaseException) -> NoReturn:
    code = _process.exit_code(exc)
    try:
        pipes.send(_messages.fatal_frame(exc))
    finally:
        _flush_output()
        os._exit(code)

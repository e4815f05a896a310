"""The pool's side of a fork server: its process, its socket, its workers.

With ``start_method="forkserver"`` the pool spawns one server process (see
``_forkserver_main``) and each slot gets its worker by asking the server to
fork one. The worker's two pipe ends travel over the server's Unix socket
(SCM_RIGHTS); the slot closes its copies as soon as the request is sent.

Invariants:

- The server's process and socket are owned by the ``async with`` of
  :func:`open_forkserver`, held by the fork server's own task in the pool's
  nursery; only that block closes the socket, and only that task receives
  from it. Slot tasks only *send* on it, one whole packet per request, without
  ever waiting on the socket, so the socket never has a waiter in another
  task when it closes. A fork request that does not fit fails that start; a
  signal request that does not fit waits in a backlog that the server's task
  sends as soon as it can (a kill must not be lost).
- Replies are routed by request id to the :class:`ForkedProcess` that asked;
  a worker is signalled by request id, and the server signals only workers it
  has not reaped, so a signal never reaches a process that reused a pid.
- When the server's connection ends, every process it still reported on is
  settled: one never forked fails to start, one forked is reported killed
  (each worker dies with the server by ``PR_SET_PDEATHSIG``; at a clean EOF
  the server kills, reaps and reports them itself before it exits).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import signal
import socket
import sys
from typing import TYPE_CHECKING

import trio

from . import _forkserver_main as _msg
from ._errors import WorkerStartError
from ._spawn import SpawnedProcess, describe_exit

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

# How long the server gets to kill and report its workers, then to exit, at
# the end of its block before it is killed.
_EXIT_GRACE = 5.0


class ForkedProcess:
    """A worker forked by the fork server (same interface as a spawned one)."""

    def __init__(self, server: ForkServer, request: int) -> None:
        self._server = server
        self._request = request
        self._pid = 0
        self._returncode: int | None = None
        self._orphaned = False
        self._error: str | None = None
        self._forked = trio.Event()
        self._exited = trio.Event()

    def __repr__(self) -> str:
        return f"<ForkedProcess request={self._request} pid={self._pid}>"

    @property
    def pid(self) -> int:
        """The worker's pid, once :meth:`started` returned."""
        return self._pid

    @property
    def exited(self) -> bool:
        """Whether the server reaped the process (or could not fork it)."""
        return self._exited.is_set() and not self._orphaned

    @property
    def orphaned(self) -> bool:
        """Whether the server died before it reported the process's exit.

        The process is then taken as killed with it (``PR_SET_PDEATHSIG``):
        :meth:`wait` returns ``-SIGKILL``. Nothing confirms it, though, so
        its pipes still have the last word on when it is gone.
        """
        return self._orphaned

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal).

        Also set (to 1) when the server could not fork the process at all.
        """
        return self._returncode

    def signal(self, signum: int) -> None:
        """Have the server send ``signum``, unless the process was reaped."""
        if not self._exited.is_set():
            self._server._send_signal(self._request, signum)

    async def started(self) -> None:
        """Wait for the server to fork the process; learn its pid.

        Raises:
            WorkerStartError: The server could not fork it, or died first.
        """
        await self._forked.wait()
        if self._error is not None:
            raise WorkerStartError(
                f"the fork server did not fork a worker: {self._error}"
            )

    async def wait(self) -> int | None:
        """Wait for the server to reap the process; return its exit status."""
        await self._exited.wait()
        return self._returncode

    # Called by the fork server's task as reports arrive.

    def _on_forked(self, pid: int) -> None:
        self._pid = pid
        self._forked.set()

    def _on_exited(self, returncode: int) -> None:
        self._returncode = returncode
        self._forked.set()
        self._exited.set()

    def _on_orphaned(self) -> None:
        self._orphaned = True
        self._on_exited(-signal.SIGKILL)

    def _on_failed(self, error: str) -> None:
        self._error = error
        self._on_exited(1)


class ForkServer:
    """A running fork server, as the pool's side sees it."""

    def __init__(self, sock: socket.socket, process: SpawnedProcess) -> None:
        self._sock = sock
        self.process = process
        self._ids = itertools.count(1)
        self._processes: dict[int, ForkedProcess] = {}
        self._connected = True
        self._ready = False
        self._backlog: list[bytes] = []
        self._backlog_added = trio.Event()
        #: Workers forked so far.
        self.forks = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        """Whether the server still takes requests."""
        return self._connected

    def launch(self, fd_in: int, fd_out: int) -> ForkedProcess:
        """Ask for a worker holding ``fd_in`` and ``fd_out``; never blocks.

        Once this returns, the server holds its own copies of the fds and the
        caller may close its copies. The worker starts in the caller's
        current directory.

        Raises:
            WorkerStartError: The server is not running.
            OSError: The request could not be sent.
        """
        if not self._connected:
            raise WorkerStartError("the fork server is not running")
        request = next(self._ids)
        message = _msg.encode_fork(request, os.getcwd())
        socket.send_fds(self._sock, [message], [fd_in, fd_out])
        process = ForkedProcess(self, request)
        self._processes[request] = process
        return process

    def _send_signal(self, request: int, signum: int) -> None:
        if not self._connected:
            return  # the server is gone, and so is every worker of it
        message = _msg.encode_signal(request, signum)
        if not self._backlog:
            try:
                self._sock.send(message)
                return
            except BlockingIOError:
                pass
            except OSError:
                return  # the connection is ending; its end settles the process
        # A kill must not be lost: the server's task sends it when it can.
        self._backlog.append(message)
        self._backlog_added.set()

    async def _handshake(self, preload: Sequence[str], timeout: float) -> None:  # noqa: ASYNC109 - the pool's start_timeout
        config = pickle.dumps({"sys_path": list(sys.path), "preload": list(preload)})
        if len(config) >= _msg.MAX_CONFIG:
            raise WorkerStartError("sys.path is too long for the fork server")
        self._sock.send(_msg.CONFIG + config)
        with trio.move_on_after(timeout):
            message = await self._receive()
            if message == _msg.READY:
                self._ready = True
                return
            self._connected = False
            if message[:1] == _msg.START_FAILED:
                raise WorkerStartError(
                    "the fork server failed to start: "
                    + message[1:].decode(errors="replace")
                )
            exitcode = await self.process.wait()
            raise WorkerStartError(
                f"the fork server exited ({describe_exit(exitcode)}) before it was ready"
            )
        self._connected = False
        raise WorkerStartError(f"the fork server was not ready within {timeout:g} s")

    async def _receive(self) -> bytes:
        """The next report from the server; ``b""`` once the connection ended."""
        while True:
            try:
                return self._sock.recv(_msg.MAX_MESSAGE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)
            except OSError:
                return b""

    async def serve(self, stop: trio.Event) -> bool:
        """Route the server's reports until ``stop`` is set or it dies.

        Returns True if stopped, False if the connection ended.
        """
        died = False
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                nonlocal died
                while True:
                    message = await self._receive()
                    if not message:
                        died = True
                        nursery.cancel_scope.cancel()
                        return
                    self._route(message)

            async def stopper() -> None:
                await stop.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(receive)
            nursery.start_soon(stopper)
            nursery.start_soon(self._flush_backlog)
        if died:
            self._disconnected()
        return not died

    async def _flush_backlog(self) -> None:
        while True:
            await self._backlog_added.wait()
            self._backlog_added = trio.Event()
            while self._backlog:
                await trio.lowlevel.wait_writable(self._sock)
                try:
                    self._sock.send(self._backlog[0])
                except BlockingIOError:
                    continue
                except OSError:
                    return
                del self._backlog[0]

    def _route(self, message: bytes) -> None:
        kind = message[:1]
        if kind == _msg.FORKED:
            request, pid = _msg.decode_number(message)
            self.forks += 1
            forked = self._processes.get(request)
            if forked is not None:
                forked._on_forked(pid)
        elif kind == _msg.EXITED:
            request, returncode = _msg.decode_number(message)
            exited = self._processes.pop(request, None)
            if exited is not None:
                exited._on_exited(returncode)
        elif kind == _msg.FORK_FAILED:
            failed = self._processes.pop(_msg.decode_id(message), None)
            if failed is not None:
                failed._on_failed(message[9:].decode(errors="replace"))

    def _disconnected(self) -> None:
        """Settle every process the server can no longer report on."""
        self._connected = False
        processes = list(self._processes.values())
        self._processes.clear()
        for process in processes:
            if process.pid:
                # Killed with the server (PR_SET_PDEATHSIG).
                process._on_orphaned()
            else:
                process._on_failed("the fork server exited")

    async def _shut_down(self) -> None:
        """EOF to the server: it kills, reaps and reports its workers, then exits."""
        if not self._ready:
            # Stuck in its imports, or failed: nothing to wait for.
            self._connected = False
            self.process.signal(signal.SIGKILL)
        if self._connected:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            with trio.move_on_after(_EXIT_GRACE):
                while message := await self._receive():
                    self._route(message)
        self._disconnected()
        with trio.move_on_after(_EXIT_GRACE):
            await self.process.wait()
            return
        self.process.signal(signal.SIGKILL)
        await self.process.wait()


@contextlib.asynccontextmanager
async def open_forkserver(
    preload: Sequence[str], start_timeout: float
) -> AsyncIterator[ForkServer]:
    """Start a fork server and own it, and its socket, for the block.

    The block begins once the server has imported the worker code and the
    ``preload`` modules. Leaving it, however it is left, ends the server and
    every worker it forked, reaps the server and closes the socket.

    Raises:
        WorkerStartError: The server did not get ready.
    """
    # Python creates sockets non-inheritable: only the server gets its end.
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with theirs:
            process = SpawnedProcess("triopool._forkserver_main", (theirs.fileno(),))
    except BaseException:
        mine.close()
        raise
    mine.setblocking(False)
    server = ForkServer(mine, process)
    try:
        await server._handshake(preload, start_timeout)
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server._shut_down()
        trio.lowlevel.notify_closing(mine)
        mine.close()

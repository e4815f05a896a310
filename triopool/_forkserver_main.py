"""The fork server process, and the messages it exchanges with the pool.

The server is spawned clean, like a worker (it never imports trio or attrs).
It imports the worker code and the ``forkserver_preload`` modules once, then
forks a worker for each request, so a new worker costs a ``fork()`` instead of
an interpreter start.

Invariants:

- A worker holds exactly its two pipe ends besides 0, 1 and 2: the ends
  arrive over the server's Unix socket (SCM_RIGHTS), the server closes its
  copies right after the fork, and the child closes everything else (the
  server's socket, its wake-up pipe) before it runs any worker code.
- The server is the workers' parent, so it reaps them and reports each exit
  status (negative: killed by that signal, like ``Popen.returncode``).
- Workers are named by the request that created them, never by pid: a pid is
  signalled only while its process is unreaped, so a request to signal a
  worker that has exited (its report still in flight) is ignored rather than
  reaching a process that reused the pid.
- The server dies with the pool's process (``PR_SET_PDEATHSIG``), each worker
  dies with the server; at EOF on its socket the server kills and reaps every
  worker it still has, reports them, and exits.

Messages are single ``SOCK_SEQPACKET`` packets (so each arrives whole): one
kind byte, then fixed fields in network order, then an optional tail.

======================  =================================================
pool -> server          server -> pool
======================  =================================================
CONFIG pickle           READY, or START_FAILED text
FORK id cwd + 2 fds     FORKED id pid, or FORK_FAILED id text
SIGNAL id signum        EXITED id returncode
======================  =================================================
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import sys

from . import _child, _messages, _process

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType

CONFIG = b"C"
FORK = b"F"
SIGNAL = b"S"
READY = b"R"
START_FAILED = b"X"
FORKED = b"P"
FORK_FAILED = b"E"
EXITED = b"D"

_ID = struct.Struct("!Q")
_ID_NUMBER = struct.Struct("!Qq")
MAX_MESSAGE = 1 << 16
MAX_CONFIG = 1 << 17


def encode_fork(request: int, cwd: str) -> bytes:
    return FORK + _ID.pack(request) + os.fsencode(cwd)


def encode_signal(request: int, signum: int) -> bytes:
    return SIGNAL + _ID_NUMBER.pack(request, signum)


def decode_number(message: bytes) -> tuple[int, int]:
    """The (id, number) of a FORKED, EXITED or SIGNAL message."""
    request, number = _ID_NUMBER.unpack_from(message, 1)
    return request, number


def decode_id(message: bytes) -> int:
    """The id of a FORK or FORK_FAILED message."""
    request: int = _ID.unpack_from(message, 1)[0]
    return request


def main(sock_fd: int, parent_pid: int) -> None:
    """Run the fork server until EOF on its socket."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _process.die_with_parent(parent_pid)
    sock = socket.socket(fileno=sock_fd)
    sock.set_inheritable(False)
    # The configuration holds the pool's sys.path: allow for a long one.
    message = sock.recv(MAX_CONFIG)
    if not message:
        return
    config = pickle.loads(message[1:])
    sys.path[:] = config["sys_path"]
    try:
        import importlib

        for name in config["preload"]:
            importlib.import_module(name)
    except BaseException as exc:
        error = _messages.ExceptionText.of(exc)
        sock.send(
            START_FAILED
            + f"{error.type_name}: {error.message}".encode(errors="replace")
        )
        os._exit(1)
    _Server(sock).serve()


class _Server:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pid_of: dict[int, int] = {}  # request id -> pid, while unreaped
        self.request_of: dict[int, int] = {}  # pid -> request id
        # SIGCHLD wakes poll() through this pipe.
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def serve(self) -> None:
        import select

        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, _ignore)
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        self.sock.send(READY)
        while True:
            for fd, _ in poller.poll():
                if fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap(block=False)
                elif not self.handle():
                    self.finish()
                    return

    def handle(self) -> bool:
        """Serve one request; False at EOF."""
        try:
            message, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 2)
        except ConnectionError:
            return False
        if not message:
            for fd in fds:
                os.close(fd)
            return False
        kind = message[:1]
        if kind == FORK:
            self.fork(decode_id(message), os.fsdecode(message[9:]), fds)
        else:
            for fd in fds:
                os.close(fd)
            if kind == SIGNAL:
                request, signum = decode_number(message)
                pid = self.pid_of.get(request)
                if pid is not None:  # unreaped: the pid is still its own
                    os.kill(pid, signum)
        return True

    def fork(self, request: int, cwd: str, fds: list[int]) -> None:
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            self.send(FORK_FAILED + _ID.pack(request) + b"expected two fds")
            return
        server_pid = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            self.send(FORK_FAILED + _ID.pack(request) + str(exc).encode())
            pid = -1
        if pid == 0:
            self.become_worker(fds[0], fds[1], cwd, server_pid)
        for fd in fds:
            os.close(fd)
        if pid > 0:
            self.pid_of[request] = pid
            self.request_of[pid] = request
            self.send(FORKED + _ID_NUMBER.pack(request, pid))

    def become_worker(self, fd_in: int, fd_out: int, cwd: str, server_pid: int) -> None:
        """In the forked child: keep only the worker's fds, run it, exit."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            # Detached, so that no finalizer ever closes a reused number.
            self.sock.detach()
            keep = sorted({0, 1, 2, fd_in, fd_out})
            for low, high in zip(keep, [*keep[1:], None], strict=True):
                os.closerange(low + 1, high if high is not None else _max_fd())
            os.chdir(cwd)
            _child.main(fd_in, fd_out, server_pid)
            code = 0
        except SystemExit as exc:
            code = _process.exit_code(exc)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            _child._flush_output()
            os._exit(code)

    def reap(self, *, block: bool) -> None:
        while self.request_of:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            request = self.request_of.pop(pid, None)
            if request is not None:
                del self.pid_of[request]
                self.send(
                    EXITED + _ID_NUMBER.pack(request, os.waitstatus_to_exitcode(status))
                )

    def send(self, message: bytes) -> None:
        try:
            self.sock.send(message)
        except OSError:
            pass  # the pool is gone; the EOF that follows ends the server

    def finish(self) -> None:
        """EOF: no worker outlives the server; kill, reap and report them."""
        for pid in self.pid_of.values():
            os.kill(pid, signal.SIGKILL)
        self.reap(block=True)
        self.sock.close()


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):  # pragma: no cover
        return 1 << 16

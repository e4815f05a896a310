"""How a worker process comes to exist, and how its exit status is learned.

A worker is a fresh interpreter (``sys.executable -c``) that inherits exactly
two fds, its ends of the task and result pipes, besides 0, 1 and 2. It imports
``triopool._child`` without running ``triopool/__init__.py`` (which imports
trio), so it starts in about the time of a bare interpreter.

Invariant: a process is signalled only while it has not been reaped, so a
signal can never reach a process that reused its pid. Only its owner (the
worker's task) signals it and reaps it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import trio

# The worker's entry point. It registers the triopool package without executing
# its __init__ (which would import trio); the first access to a public name
# that is not there yet (a task using the pool API itself) runs the real
# __init__ in place, so the package is whole whenever anything asks for it.
# The exception types are set on it at once: a worker pickles them by their
# public names (triopool.SoftTimeLimitExceeded); so are current_worker and
# WorkerInfo, which tasks call and return without loading trio.
_BOOTSTRAP = """\
import sys
from importlib.machinery import PathFinder
def _bootstrap(root, entry, *numbers):
    spec = PathFinder.find_spec("triopool", [root])
    pkg = type(sys)("triopool")
    pkg.__spec__ = spec
    pkg.__loader__ = spec.loader
    pkg.__file__ = spec.origin
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__package__ = "triopool"
    def __getattr__(name):
        if name.startswith("_") and name not in ("__all__", "__version__"):
            # Submodules ("from triopool import _errors") and probes.
            raise AttributeError(name)
        del pkg.__getattr__
        spec.loader.exec_module(pkg)
        return getattr(pkg, name)
    pkg.__getattr__ = __getattr__
    sys.modules["triopool"] = pkg
    from triopool import _errors, _inside
    for module in (_errors, _inside):
        for name in module.__all__:
            setattr(pkg, name, getattr(module, name))
    __import__(entry, fromlist=["main"]).main(*map(int, numbers))
_bootstrap(*sys.argv[1:])
"""

# Signals a worker leaves to its parent (see _child.main).
_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})

# The directory holding the triopool package this process runs, for the worker.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def describe_exit(exitcode: int | None) -> str:
    """``"exit code 3"``, ``"signal SIGKILL"`` or ``"unknown status"``."""
    if exitcode is None:
        return "unknown status"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class SpawnedProcess:
    """A fresh interpreter running ``entry.main(*fds, parent_pid)``, until reaped.

    ``entry`` is a module of the triopool package that never imports trio
    (``triopool._child`` for a worker, ``triopool._forkserver_main`` for a
    fork server). The process inherits ``fds`` and no other fd besides 0, 1
    and 2.

    On Linux the process is tracked through a pidfd opened as it starts: its
    exit is noticed however its pipes fare, it is signalled through the pidfd
    (which names this process and no other, even after a reaper elsewhere in
    the program took its status), and a status that this process could not
    collect (``SIGCHLD`` ignored, or reaped by other code) reads as unknown
    (``None``), never as success. The pidfd is closed when the process is
    reaped, by :meth:`wait`, which its owner always awaits.
    """

    def __init__(self, entry: str, fds: tuple[int, ...]) -> None:
        argv = [
            sys.executable,
            *subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined]
            "-c",
            _BOOTSTRAP,
            _ROOT,
            entry,
            *(str(fd) for fd in fds),
            str(os.getpid()),
        ]
        # Started from the Trio thread on purpose: PR_SET_PDEATHSIG fires when
        # the *thread* that started the child exits, and Trio's worker threads
        # come and go. Popen uses vfork here, so this blocks for well under a
        # millisecond.
        #
        # SIGINT and SIGTERM are blocked across the start, and the child
        # inherits that mask: it unblocks them only once it has made them
        # harmless (see _child.main), so a Ctrl-C or a process-group SIGTERM
        # that arrives while a worker starts does not kill it or make it print
        # a traceback. Here they stay pending for the moment Popen takes (or
        # go to another thread) and are not lost.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self._popen = subprocess.Popen(argv, pass_fds=fds, close_fds=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.pid = self._popen.pid
        self._returncode: int | None = None
        self._exited = False
        # Set (and replaced) whenever a wait on the pidfd ends: see wait().
        self._waiter_left = trio.Event()
        self._waiting = False
        self._pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                # The interpreter it runs takes milliseconds to start: the
                # process is still there, unreaped, a microsecond later.
                self._pidfd = os.pidfd_open(self.pid)
            except OSError:
                # No fd left (or a kernel without pidfd): tracked through
                # Popen instead, which reads a lost status as 0.
                self._pidfd = None

    async def started(self) -> None:
        """Return once :attr:`pid` is known: at once, Popen knows it."""

    @property
    def exited(self) -> bool:
        """Whether the process has exited and been reaped."""
        return self._exited

    @property
    def orphaned(self) -> bool:
        """Never: this process's parent is this program (see ForkedProcess)."""
        return False

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal);
        ``None`` while it runs, or if its status could not be collected."""
        return self._returncode

    def signal(self, signum: int) -> None:
        """Send ``signum`` unless the process has already been reaped."""
        if self._exited:
            return
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signum)
            except ProcessLookupError:
                pass  # exited, not reaped yet
        else:  # pragma: no cover - kernels without pidfd
            # Popen.send_signal polls first and never signals a reaped pid.
            self._popen.send_signal(signum)

    async def wait(self) -> int | None:
        """Wait for the process to exit, reap it and return its exit status
        (``None`` if the status was taken by someone else).

        Any number of tasks may wait at once: one waits on the process, the
        others for that one to finish (or to give up, when one of them takes
        over).
        """
        while not self._exited:
            if self._waiting:
                await self._waiter_left.wait()
                continue
            self._waiting = True
            try:
                if self._pidfd is not None:
                    await trio.lowlevel.wait_readable(self._pidfd)
                else:  # pragma: no cover - kernels without pidfd
                    await _poll_for_exit(self.pid)
                self._reap()
            finally:
                self._waiting = False
                self._waiter_left.set()
                self._waiter_left = trio.Event()
        return self._returncode

    def _reap(self) -> None:
        """Collect the exited process's status and close its pidfd."""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            # SIGCHLD is ignored in this program, or other code reaped it.
            returncode = None
        else:
            returncode = os.waitstatus_to_exitcode(status)
        self._returncode = returncode
        self._exited = True
        # Popen must not try to reap it again, or warn that it still runs.
        self._popen.returncode = returncode if returncode is not None else 0
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class WorkerProcess(SpawnedProcess):
    """A spawned worker process, holding its two pipe ends."""

    def __init__(self, fd_in: int, fd_out: int) -> None:
        super().__init__("triopool._child", (fd_in, fd_out))


async def _poll_for_exit(pid: int) -> None:  # pragma: no cover
    delay = 0.001
    while True:
        # WNOWAIT leaves the zombie for wait() to reap.
        try:
            result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # noqa: ASYNC222 - WNOHANG never blocks
        except ChildProcessError:
            return  # reaped elsewhere: wait() reads its status as unknown
        if result is not None:
            return
        await trio.sleep(delay)
        delay = min(delay * 2, 0.05)

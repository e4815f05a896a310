"""Run one Dask task in a child process of its Dask worker, so that the task
can be killed (the worker side of ``DaskBackend``'s killable calls).

Dask cannot stop a task that runs in one of its worker's threads. A call
with ``kill_on_cancel=True`` or a ``time_limit`` therefore runs as the Dask
task :func:`run_killable`, which starts a fresh Python process, hands it the
function and its arguments, and waits for its outcome while it watches
whether Dask still wants the task. When the client releases the task (the
caller was cancelled, or its time limit passed), the child is killed with
SIGKILL and reaped, and the Dask task ends; the worker goes on serving.

Invariants:

- Standard library only, and never trio or attrs: this module travels to the
  workers by value (``cloudpickle.register_pickle_by_value``), so a worker
  need not have triopool installed. The child runs :data:`CHILD_MAIN`, which
  needs only ``cloudpickle`` (as every Dask worker has).
- Every exit of :func:`run_in_child` leaves no child behind: it is killed
  unless its outcome came back, and always reaped (a pid is signalled only
  while the ``Popen`` has not reaped it). A child whose worker dies sees its
  stdin close and exits.
- The outcome is a tagged tuple; the task's own exception is re-raised in
  the Dask task (so Dask's ``retries`` see it) carrying the child's
  traceback text, and a child that died raises :class:`ChildProcessError`
  carrying its pid and exit status. ``DaskBackend`` maps both back.
"""

from __future__ import annotations

import os
import pickle
import selectors
import subprocess
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CHILD_MAIN", "run_in_child", "run_killable"]

# The attributes this module sets on the exceptions it raises in the Dask
# task; DaskBackend reads (and removes) them.
TRACEBACK_ATTRIBUTE = "_triopool_child_traceback"
DIED_ATTRIBUTE = "_triopool_child_died"

# How often, in seconds, a waiting task looks whether Dask still wants it.
POLL_INTERVAL = 0.02

# The child's program (``python -c``): stdin brings the worker's sys.path and
# the pickled call, each as 8-byte length then bytes; the outcome goes to the
# fd named in argv[1]. Standard library only (cloudpickle, which comes with
# Dask, only for what pickle cannot do): it must start fast.
CHILD_MAIN = r"""
import os, pickle, signal, sys, threading, traceback
signal.signal(signal.SIGINT, signal.SIG_IGN)
out = int(sys.argv[1])
stdin = sys.stdin.buffer

def read_exact(n):
    data = bytearray()
    while len(data) < n:
        chunk = stdin.read(n - len(data))
        if not chunk:
            os._exit(70)
        data += chunk
    return bytes(data)

def read_part():
    return read_exact(int.from_bytes(read_exact(8), "little"))

sys.path[:] = pickle.loads(read_part())
call = read_part()

def watch():
    while os.read(0, 65536):  # b"" at EOF: the worker died or gave up
        pass
    os._exit(70)

threading.Thread(target=watch, daemon=True).start()

def dumps(obj):
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle  # slow to import: only when pickle cannot
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

try:
    fn, args = pickle.loads(call)
    del call
    outcome = ("value", fn(*args))
except Exception as exc:
    # Without this program's own frame: the task's frames only.
    text = traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next)
    outcome = ("error", exc, "".join(text))
except BaseException as exc:
    # It ends the process, as it ends a local worker: no outcome is sent.
    if not isinstance(exc, SystemExit):
        traceback.print_exc()
    code = exc.code if isinstance(exc, SystemExit) else 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0 if code is None else code if isinstance(code, int) else 1)
try:
    blob = dumps(outcome)
    if outcome[0] == "error":
        pickle.loads(blob)  # an error must also unpickle, to be raised
except Exception as exc:
    problem = "%s: %s" % (type(exc).__name__, exc)
    if outcome[0] == "value":
        outcome = ("unpicklable-value", problem)
    else:
        error = outcome[1]
        outcome = ("unpicklable-error", type(error).__qualname__, str(error), outcome[2])
    blob = pickle.dumps(outcome)
view = memoryview(blob)
while view:
    view = view[os.write(out, view):]
os.close(out)
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except Exception:
        pass
os._exit(0)
"""


def _part(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data


def run_in_child(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    cancelled: Callable[[], bool],
    *,
    poll_interval: float = POLL_INTERVAL,
) -> tuple[Any, ...]:
    """Run ``fn(*args)`` in a fresh Python process and return its outcome.

    Returns ``("value", value)``, ``("killed",)`` once ``cancelled()`` said
    so (the child is then killed), ``("unpicklable-value", problem)`` or
    ``("unpicklable-error", type_name, message, traceback_text)``. Raises the
    task's own exception (with the child's traceback text as an attribute),
    or :class:`ChildProcessError` if the child died without an outcome.
    """
    try:
        # Plain pickle when it can: the child then need not import cloudpickle.
        call = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle  # pyright: ignore[reportMissingImports]  # comes with Dask

        call = cloudpickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
    read_fd, write_fd = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", CHILD_MAIN, str(write_fd)],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    chunks: list[bytes] = []
    finished = False
    try:
        assert process.stdin is not None
        try:
            process.stdin.write(_part(pickle.dumps(sys.path)) + _part(call))
            process.stdin.flush()
        except BrokenPipeError:
            pass  # it died already: its exit status tells below
        del call
        with selectors.DefaultSelector() as selector:
            selector.register(read_fd, selectors.EVENT_READ)
            while True:
                if cancelled():
                    return ("killed",)
                if selector.select(poll_interval):
                    chunk = os.read(read_fd, 1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
        # The child wrote its outcome (or died) and is exiting.
        while True:
            try:
                process.wait(timeout=poll_interval)
                break
            except subprocess.TimeoutExpired:
                if cancelled():
                    return ("killed",)
        finished = True
    finally:
        if not finished:
            process.kill()  # a no-op once the Popen has reaped it
        try:
            process.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass  # a broken pipe: the child is gone
        process.wait()
        os.close(read_fd)
    if not chunks:
        died = ChildProcessError(
            f"the task's process {process.pid} died with exit status "
            f"{process.returncode} before sending its outcome"
        )
        setattr(died, DIED_ATTRIBUTE, (process.pid, process.returncode))
        raise died
    try:
        outcome: tuple[Any, ...] = pickle.loads(b"".join(chunks))
    except Exception as exc:
        return ("unpicklable-value", f"{type(exc).__name__}: {exc}")
    if outcome[0] == "error":
        error: BaseException = outcome[1]
        try:
            setattr(error, TRACEBACK_ATTRIBUTE, outcome[2])
        except Exception:
            pass  # no room for it: the error travels without the child's frames
        raise error
    return outcome


# A task in these states on its worker is no longer wanted by any client.
_GONE = frozenset({"cancelled", "released", "forgotten"})


def run_killable(fn: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    """The Dask task of a killable call: :func:`run_in_child`, cancelled once
    the client has released the task (its state on this worker leaves
    ``executing``)."""
    from distributed import get_worker  # pyright: ignore[reportMissingImports]  # an optional extra

    worker = get_worker()
    key = worker.get_current_task()
    tasks = worker.state.tasks

    def cancelled() -> bool:
        task = tasks.get(key)
        return task is None or task.state in _GONE

    return run_in_child(fn, args, cancelled)

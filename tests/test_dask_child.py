"""The worker side of Dask's killable calls (``_dask_child``), without Dask:
``run_in_child`` runs a call in a fresh process and kills it on request."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from triopool import _dask_child

from . import workerfuncs

if TYPE_CHECKING:
    from pathlib import Path


def never() -> bool:
    return False


def test_value_and_exception_come_back_as_they_were() -> None:
    assert _dask_child.run_in_child(workerfuncs.add, (2, 3), never) == ("value", 5)
    with pytest.raises(ValueError, match="boom") as info:
        _dask_child.run_in_child(workerfuncs.raise_value_error, ("boom", 3), never)
    assert info.value.args == ("boom", 3)
    text = getattr(info.value, _dask_child.TRACEBACK_ATTRIBUTE)
    assert "in raise_value_error" in text
    assert text.startswith("Traceback (most recent call last):")
    # Only the task's frames: not the child program's own.
    assert "<string>" not in text


def test_a_child_that_dies_raises_with_its_pid_and_status() -> None:
    with pytest.raises(ChildProcessError) as info:
        _dask_child.run_in_child(workerfuncs.exit_with, (3,), never)
    pid, exitcode = getattr(info.value, _dask_child.DIED_ATTRIBUTE)
    assert exitcode == 3
    assert pid != os.getpid()
    with pytest.raises(ChildProcessError) as info:
        _dask_child.run_in_child(workerfuncs.kill_self, (signal.SIGKILL,), never)
    assert getattr(info.value, _dask_child.DIED_ATTRIBUTE)[1] == -signal.SIGKILL
    # A BaseException ends the child too, as it ends a local worker.
    with pytest.raises(ChildProcessError) as info:
        _dask_child.run_in_child(workerfuncs.raise_system_exit, (4,), never)
    assert getattr(info.value, _dask_child.DIED_ATTRIBUTE)[1] == 4


def test_what_cannot_be_pickled_is_named() -> None:
    tag, problem = _dask_child.run_in_child(workerfuncs.return_unpicklable, (), never)
    assert tag == "unpicklable-value"
    assert "refuses to be pickled" in problem
    outcome = _dask_child.run_in_child(workerfuncs.raise_unpicklable_error, (), never)
    assert outcome[:3] == (
        "unpicklable-error",
        "UnpicklableError",
        "needs two args: 1 2",
    )
    assert "raise_unpicklable_error" in outcome[3]


def test_cancelled_kills_and_reaps_the_child(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    start = time.monotonic()

    def cancelled() -> bool:
        return pids.exists() and bool(pids.read_text())

    outcome = _dask_child.run_in_child(
        workerfuncs.note_pids_then_sleep, (str(pids), 60.0), cancelled
    )
    assert outcome == ("killed",)
    assert time.monotonic() - start < 50  # not the task's 60 s
    child, parent = map(int, pids.read_text().split())
    assert parent == os.getpid()
    assert not os.path.exists(f"/proc/{child}")  # killed and reaped


def test_the_child_exits_when_its_worker_dies(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    code = (
        "import sys\n"
        "from triopool import _dask_child\n"
        "from tests import workerfuncs\n"
        "_dask_child.run_in_child(workerfuncs.note_pids_then_sleep,"
        " (sys.argv[1], 60.0), lambda: False)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code, str(pids)])
    try:
        deadline = time.monotonic() + 60
        while not pids.exists() or not pids.read_text():
            assert worker.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.01)
        child, parent = map(int, pids.read_text().split())
        assert parent == worker.pid
    finally:
        worker.kill()
        worker.wait()
    # Orphaned, it sees its stdin close and exits (init reaps it).
    deadline = time.monotonic() + 30
    while True:
        try:
            with open(f"/proc/{child}/stat") as file:
                state = file.read().rsplit(")", 1)[-1].split()[0]
        except FileNotFoundError:
            break  # exited and reaped
        if state == "Z":
            break  # exited, not yet reaped by its new parent
        assert time.monotonic() < deadline, "the orphaned child kept running"
        time.sleep(0.01)


def test_the_child_program_never_imports_trio_or_attrs() -> None:
    outcome = _dask_child.run_in_child(workerfuncs.loaded_modules, (), never)
    assert outcome[0] == "value"
    assert not {"trio", "attrs", "triopool"} & set(outcome[1])


# A Dask worker that has neither triopool nor trio: the runner arrives by value.
_NO_TRIOPOOL = r"""
import pickle, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("triopool", "trio", "attrs"):
            raise ImportError("no " + name + " on this worker")
sys.meta_path.insert(0, Refuse())
run, fn, args = pickle.loads(sys.stdin.buffer.read())
print(run(fn, args, lambda: False))
print(sorted({"triopool", "trio", "attrs"} & set(sys.modules)))
"""


def test_the_runner_travels_by_value_to_a_worker_without_triopool() -> None:
    cloudpickle = pytest.importorskip("cloudpickle")
    cloudpickle.register_pickle_by_value(_dask_child)  # as DaskBackend does
    try:
        blob = cloudpickle.dumps((_dask_child.run_in_child, len, ("abc",)))
    finally:
        cloudpickle.unregister_pickle_by_value(_dask_child)
    done = subprocess.run(
        [sys.executable, "-c", _NO_TRIOPOOL],
        input=blob,
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.decode().split("\n")[:2] == ["('value', 3)", "[]"]

"""Cluster engines for the tests, started as separate processes on 127.0.0.1
and stopped by their pids (the pools under test never own them)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def stop_by_pid(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM by pid, then SIGKILL if it lingers; always reaped."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def dask_cluster(
    directory: Path, *, nworkers: int, nthreads: int = 1
) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A ``dask scheduler`` and a ``dask worker`` process: yields the
    scheduler's address and the two processes.

    The scheduler fails a task at its worker's first death
    (``allowed-failures`` 0), as a cluster owned by ``DaskBackend`` does.
    """
    scheduler_file = directory / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    processes: list[subprocess.Popen[bytes]] = []
    with open(directory / "dask.log", "wb") as log:
        try:
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_scheduler",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        "0",
                        "--dashboard-address",
                        "127.0.0.1:0",
                        "--scheduler-file",
                        str(scheduler_file),
                    ],
                    stdout=log,
                    stderr=log,
                    env=env,
                )
            )
            deadline = time.monotonic() + 180
            while not scheduler_file.exists() or not scheduler_file.read_text():
                if processes[0].poll() is not None:
                    raise RuntimeError("the dask scheduler exited")
                if time.monotonic() > deadline:
                    raise RuntimeError("the dask scheduler did not start")
                time.sleep(0.1)
            address = json.loads(scheduler_file.read_text())["address"]
            assert address.startswith("tcp://127.0.0.1:"), address
            processes.append(
                subprocess.Popen(
                    _worker_command(
                        address,
                        "--nworkers",
                        str(nworkers),
                        "--nthreads",
                        str(nthreads),
                    ),
                    stdout=log,
                    stderr=log,
                    env=env,
                )
            )
            # Ready once every worker has registered (each logs it once).
            log_path = directory / "dask.log"
            while log_path.read_text().count("Registered to:") < nworkers:
                if processes[1].poll() is not None:
                    raise RuntimeError("the dask worker exited")
                if time.monotonic() > deadline:
                    raise RuntimeError("the dask workers did not register")
                time.sleep(0.1)
            yield address, processes
        finally:
            for process in reversed(processes):
                stop_by_pid(process)


@contextlib.contextmanager
def dask_worker(
    address: str, directory: Path, *, name: str
) -> Iterator[subprocess.Popen[bytes]]:
    """One more ``dask worker`` process (one thread, named ``name``) for the
    scheduler at ``address``: yields it once it has registered; stopped by
    its pid when the block exits (unless it has exited already, retired)."""
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    log_path = directory / f"dask-worker-{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            _worker_command(address, "--nthreads", "1", "--name", name),
            stdout=log,
            stderr=log,
            env=env,
        )
        try:
            deadline = time.monotonic() + 180
            while "Registered to:" not in log_path.read_text():
                if process.poll() is not None:
                    raise RuntimeError("the dask worker exited")
                if time.monotonic() > deadline:
                    raise RuntimeError("the dask worker did not register")
                time.sleep(0.1)
            yield process
        finally:
            stop_by_pid(process)


def _worker_command(address: str, *options: str) -> list[str]:
    """The ``dask worker`` command for the scheduler at ``address``, on the
    loopback interface, without a dashboard, with ``options``."""
    return [
        sys.executable,
        "-m",
        "distributed.cli.dask_worker",
        address,
        "--host",
        "127.0.0.1",
        *options,
        "--no-dashboard",
    ]

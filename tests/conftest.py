"""Shared fixtures: every test is checked for leaked fds and child processes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, TypeAlias

import pytest

from triopool import _hooks

if TYPE_CHECKING:
    import logging
    from collections.abc import Iterable, Iterator


def open_fds() -> set[int]:
    """This process's open fds (the listing's own fd is excluded)."""
    fds = set()
    with os.scandir("/proc/self/fd") as entries:
        listing = {int(entry.name) for entry in entries}
    for fd in listing:
        try:
            os.fstat(fd)
        except OSError:
            continue  # the scandir fd, closed by now
        fds.add(fd)
    return fds


def fd_target(fd: int) -> str | None:
    """What an fd of this process points at (``pipe:[1234]``, a path, ...)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def worker_channels(fds: dict[int, tuple[str, bool]]) -> set[str]:
    """The pipes and sockets among a worker's fds (``workerfuncs.fd_targets``)
    besides 0, 1 and 2, after checking that everything else it holds is a
    file opened read-only.

    That is API.md's promise: a worker holds its own pipe ends and no other
    pipe or socket, while a file a library opens read-only in the worker
    itself is the worker's business (a newer libffi maps its own library
    file when ``ctypes`` is imported; the fd listing itself is one too).
    """
    channels = set()
    for fd, (target, read_only) in fds.items():
        if fd <= 2:
            continue
        if target.startswith(("pipe:", "socket:", "anon_inode:")):
            channels.add(target)
        else:
            assert target.startswith("/"), (fd, target, fds)
            assert read_only, (fd, target, fds)
    return channels


def child_processes() -> set[int]:
    """Pids of this process's children, running or zombie."""
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(pid) for pid in f.read().split())
        except FileNotFoundError:
            continue
    return pids


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` from ``/proc`` (``"Z"`` for a zombie), or
    None once it has been reaped.

    The process may be reaped between opening its ``stat`` file and reading
    it: the read then fails with ESRCH, which counts as gone as well.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The state follows the command name, which is in parentheses.
            return stat.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def is_running(pid: int) -> bool:
    """Whether ``pid`` runs: neither reaped nor a zombie (nor dead)."""
    return process_state(pid) not in (None, "Z", "X")


# What a cluster engine's client library keeps open in the process after the
# pool and the engine are gone: Dask's and Ray's connection pools (sockets),
# Ray's gRPC event loops (epoll/eventfd/timerfd), and Ray's driver log files
# of each session (ray.shutdown leaves them open).
ENGINE_FD_PREFIXES = ("socket:", "anon_inode:", "/tmp/ray/")


def is_engine_fd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith(ENGINE_FD_PREFIXES)
    except OSError:
        return False


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves an fd open or a child process behind.

    A sync fixture: for Trio tests it runs outside ``trio.run``, so the
    comparison covers Trio's own fds too.

    The one exemption: a test marked ``engine_fds`` talks to a Ray or Dask
    cluster, whose client library keeps process-wide fds for the life of the
    process (see ``ENGINE_FD_PREFIXES``). Those are not the pool's; pipes and
    other files still count, and so does every child process.
    """
    engine = request.node.get_closest_marker("engine_fds") is not None
    fds_before = open_fds()
    children_before = child_processes()
    yield
    leaked_fds = open_fds() - fds_before
    if engine:
        leaked_fds = {fd for fd in leaked_fds if not is_engine_fd(fd)}
    leftover = child_processes() - children_before
    assert not leaked_fds, f"fds leaked: {sorted(leaked_fds)}"
    assert not leftover, f"child processes left: {sorted(leftover)}"


def logged(
    records: Iterable[logging.LogRecord], **fields: object
) -> list[logging.LogRecord]:
    """The ``"triopool"`` records among ``records`` whose structured fields
    (``record.event``, ``record.worker_pid`` ...) have the values given:
    what tests match, never a record's text."""
    missing = object()
    return [
        record
        for record in records
        if record.name == "triopool"
        and all(
            getattr(record, name, missing) == value for name, value in fields.items()
        )
    ]


StartMethod: TypeAlias = Literal["spawn", "forkserver"]


@pytest.fixture(params=["spawn", "forkserver"])
def start_method(request: pytest.FixtureRequest) -> Iterator[StartMethod]:
    """Run the test once per start method: a local pool opened without one
    uses it (the ``start_method`` hook of ``triopool._hooks``).

    Use it with ``pytestmark = pytest.mark.usefixtures("start_method")`` so
    that every pool a test module opens is parametrized, tests added later
    included; a call that names ``"forkserver"`` keeps it.
    """
    method: StartMethod = request.param
    with _hooks.installed(start_method=method):
        yield method

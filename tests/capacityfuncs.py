"""A task that counts how many of its kind run at once, across the worker
processes of a cluster on this host: a counter file under an flock."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path


def _read(path: Path) -> int:
    return int(path.read_text()) if path.exists() else 0


def _update(directory: Path, step: int) -> None:
    """Add ``step`` to the running count; keep the highest count in ``max``."""
    with open(directory / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            now = _read(directory / "running") + step
            (directory / "running").write_text(str(now))
            if now > _read(directory / "max"):
                (directory / "max").write_text(str(now))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def overlapping(directory: str, seconds: float, item: int) -> int:
    """Run for ``seconds``, counted as running meanwhile; return ``item``."""
    _update(Path(directory), 1)
    try:
        time.sleep(seconds)
    finally:
        _update(Path(directory), -1)
    return item


def most_at_once(directory: str) -> int:
    """The most :func:`overlapping` tasks counted running at once."""
    return _read(Path(directory) / "max")

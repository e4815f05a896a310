"""Functions the CLI, default pool, serialization and worker output tests run
in workers. Imports only the standard library, so workers stay fast."""

from __future__ import annotations

import os
import sys
from typing import Any


def return_lambda() -> Any:
    """A result plain pickle cannot send back (cloudpickle can)."""
    return lambda x: x * 2


def print_lines(task: int, count: int) -> int:
    """Print ``count`` long numbered lines to stdout and log one record."""
    import logging

    for line in range(count):
        print(f"task {task:03d} line {line:03d} " + "x" * 200)
    logging.getLogger("tasks").warning("task %03d logged", task)
    return task


def log_to_stderr_with_pid() -> None:
    """Initializer: route the worker's logging to stderr, tagged with its pid."""
    import logging

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"[worker {os.getpid()}] %(name)s %(levelname)s %(message)s",
    )


def apply(fn: Any, *args: Any) -> Any:
    return fn(*args)


def hide_cloudpickle() -> None:
    """Initializer: make ``import cloudpickle`` fail in this worker."""
    sys.modules["cloudpickle"] = None  # type: ignore[assignment]

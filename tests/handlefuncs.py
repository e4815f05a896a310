"""Functions the put() tests run in workers. Imports only the standard library."""

from __future__ import annotations

import os
from typing import Any

# What where_is saw, kept alive, so that two tasks given the object reloaded
# each time could never see the same id (a freed object's id is reused).
_kept: list[object] = []


def where_is(value: Any) -> tuple[int, int, int]:
    """(this worker's pid, the id of ``value``, its length)."""
    _kept.append(value)
    return os.getpid(), id(value), len(value)


def length(value: Any) -> int:
    return len(value)


def size_plus(value: Any, extra: int) -> int:
    return len(value) + extra


def type_name(value: object) -> str:
    return type(value).__name__


def sizes(first: Any, *, second: Any) -> tuple[int, int]:
    return len(first), len(second)

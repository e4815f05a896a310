"""Functions the recycling benchmark runs in workers (standard library only)."""

from __future__ import annotations


def task(n: int) -> int:
    """A task that costs next to nothing, so worker start-up is all we time."""
    return n * n


def always() -> bool:
    """trio-parallel's ``retire``: retire the worker after every task."""
    return True

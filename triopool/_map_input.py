"""A ``map``/``imap`` call's input: pulling items from a regular or an async
iterable, and closing an async generator that was left unfinished.

A regular iterable is read in the Trio thread, a chunk at a time; an async
one is awaited item by item. Either way the caller counts what was pulled,
which back-pressure is measured by (see ``_map_call``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sized
from typing import TYPE_CHECKING, TypeVar

import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Iterable

ItemT = TypeVar("ItemT")

#: How long an async generator given as input gets to run its ``finally``
#: when the call ends early, even if the call was cancelled.
CLOSE_GRACE = 2.0


def known_length(source: Iterable[object] | AsyncIterable[object]) -> int | None:
    """The input's length, if it has one that answers."""
    if isinstance(source, Sized):
        with contextlib.suppress(Exception):
            return len(source)
    return None


async def take(items: AsyncIterator[ItemT], count: int) -> list[ItemT]:
    """Up to ``count`` items of an async input (fewer once it ends)."""
    taken: list[ItemT] = []
    for _ in range(count):
        try:
            taken.append(await anext(items))
        except StopAsyncIteration:
            break
    return taken


async def close(items: AsyncIterator[object]) -> None:
    """``aclose()`` an async generator input, inside the call's block.

    Without it, an input left unfinished by a ``break``, an error or a
    cancellation would be closed by the garbage collector, outside the block,
    with a ``ResourceWarning`` from Trio, and any ``await`` in its ``finally``
    would never run. The call's own cancellation must not cut its cleanup
    short (a ``break`` cancels the producer), so it is shielded, for a while.
    Other async iterators are left as they are.
    """
    if not inspect.isasyncgen(items):
        return
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + CLOSE_GRACE
        await items.aclose()

"""Types that only type checkers see: they make an async function passed to
``run_sync`` a type error.

There is no way to write "a callable whose result is not awaitable", so the
``run_sync`` functions have three overloads, tried in order:

1. A callable whose result type is unknown (``Any``, or ``Never``): the call is
   accepted and its result is ``Any``, as it would be without overloads. (An
   ``Any`` result could be anything, awaitable or not; refusing it would turn
   every ``Callable[..., Any]`` into a false alarm.)
2. An :class:`AsyncCallable`: the call returns
   :class:`AsyncFunctionPassedToRunSync`, which cannot be awaited, so
   ``await pool.run_sync(async_fn)`` is an error under mypy and pyright alike.
3. Any other callable, with its arguments checked against it
   (``Callable[[Unpack[Ts]], T], *args: Unpack[Ts]``).

The first two match callables through protocols rather than ``Callable[...]``:
when no overload matches, mypy reports the errors of the first overload that
roughly fits, and a protocol never roughly fits a plain function, so a wrong
argument is reported against the third overload, as "expected
``Callable[[str], int]``", not against the async one.

Nothing here is imported at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, final

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable
    from typing import Never


class AnyResultCallable(Protocol):
    """A callable whose result type is ``Any`` (or ``Never``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Never: ...


class AsyncCallable(Protocol):
    """An async function or async generator function: what ``run_sync`` refuses."""

    def __call__(
        self, *args: Any, **kwargs: Any
    ) -> Awaitable[object] | AsyncIterator[object]: ...


@final
class AsyncFunctionPassedToRunSync:
    """What type checkers see ``run_sync(async_fn)`` return: it cannot be
    awaited, so the call is a type error. ``run_sync`` needs a regular
    function; at run time it raises :class:`TypeError`."""

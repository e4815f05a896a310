"""Engine references in a cluster call's arguments, lifted where the engine
resolves them.

Ray and Dask replace a reference (a Ray ``ObjectRef``, a Dask ``Future``) by
its value only when it is a top-level argument of the task. A pool call hides
its arguments deeper: in a :func:`functools.partial` given as ``fn``, in a
``map`` chunk's list of items. :func:`lift` finds the references there (and
:class:`~triopool.Handle` objects, which stand for one) and turns the call
into ``apply(plan, *refs)``: each reference a top-level argument, which the
engine resolves, and ``plan`` the call with a numbered slot in each place,
which :func:`apply` fills in on the engine's worker. A put object of an
engine that would copy it out of its store for every task (Ray) stays in
place as a :class:`Cached`, which the worker fetches once and keeps.

Invariants: a call without references is returned as it is (no cost but the
search, which looks only at the top: the arguments, a partial's arguments
and keywords, and the items of a list or tuple argument); what is not found
there travels as it is. This module imports only the standard library; the
engine's workers import it.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Cached", "apply", "lift"]


class _Slot:
    """Where the ``index``-th lifted reference's value goes."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Slot, (self.index,))


class Cached:
    """A put object that each engine worker fetches once and keeps.

    For an engine that would otherwise deserialize a stored object again for
    every task (Ray copies a ``bytes`` object out of its store per task):
    ``fetch(ref)`` runs in the task, on the first use in that worker process,
    and the object is kept by ``key`` for the next tasks (the last
    :data:`KEEP` objects; an older one is fetched again if used).
    """

    __slots__ = ("fetch", "key", "ref")

    def __init__(self, key: str, ref: object, fetch: Callable[[object], Any]) -> None:
        self.key = key
        self.ref = ref
        self.fetch = fetch

    def __reduce__(self) -> tuple[Any, ...]:
        return (Cached, (self.key, self.ref, self.fetch))


#: How many fetched objects an engine worker keeps.
KEEP = 4
_kept: OrderedDict[str, Any] = OrderedDict()


def _value_of(cached: Cached) -> Any:
    try:
        value = _kept.pop(cached.key)
    except KeyError:
        value = cached.fetch(cached.ref)
    _kept[cached.key] = value
    while len(_kept) > KEEP:
        _kept.popitem(last=False)
    return value


def lift(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    ref_of: Callable[[object], object | None],
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """``(fn, args)``, or ``(apply, (plan, *refs))`` if references were found.

    ``ref_of(obj)`` returns the engine reference ``obj`` is or stands for
    (or a :class:`Cached` for it, which stays in place and is fetched in the
    task), or ``None`` if it is neither; it raises for a handle it does not
    know.
    """
    refs: list[object] = []
    cached: list[Cached] = []

    def swap(obj: object) -> object:
        ref = ref_of(obj)
        if ref is None:
            return obj
        if type(ref) is Cached:
            cached.append(ref)
            return ref
        refs.append(ref)
        return _Slot(len(refs) - 1)

    def top(obj: object, depth: int) -> object:
        cls = type(obj)
        if cls is functools.partial:
            partial: functools.partial[Any] = obj  # type: ignore[assignment]
            new_args = tuple(top(arg, depth) for arg in partial.args)
            keywords = {
                key: top(value, depth) for key, value in partial.keywords.items()
            }
            changed = any(
                new is not old for new, old in zip(new_args, partial.args, strict=True)
            ) or any(keywords[key] is not partial.keywords[key] for key in keywords)
            if not changed:
                return obj
            return _Partial(top(partial.func, depth), new_args, keywords)
        if depth and (cls is list or cls is tuple):
            items = [top(item, depth - 1) for item in obj]  # type: ignore[attr-defined]
            if all(new is old for new, old in zip(items, obj, strict=True)):  # type: ignore[call-overload]
                return obj
            return _Sequence(items, cls is tuple)
        return swap(obj)

    new_fn = top(fn, 0)
    new_args = tuple(top(arg, 1) for arg in args)
    if not refs and not cached:
        return fn, args
    # The plan is an object of its own, not a tuple: Dask takes a tuple whose
    # first item is callable for a task of its graph.
    return apply, (_Plan(new_fn, new_args), *refs)


class _Plan:
    """The call, with slots where the references were."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: object, args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Plan, (self.fn, self.args))


class _Partial:
    """A partial with slots in it, rebuilt on the worker."""

    __slots__ = ("args", "func", "keywords")

    def __init__(
        self, func: object, args: tuple[Any, ...], keywords: dict[str, Any]
    ) -> None:
        self.func = func
        self.args = args
        self.keywords = keywords

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Partial, (self.func, self.args, self.keywords))


class _Sequence:
    """A list or tuple with slots in it, rebuilt on the worker."""

    __slots__ = ("is_tuple", "items")

    def __init__(self, items: list[Any], is_tuple: bool) -> None:
        self.items = items
        self.is_tuple = is_tuple

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Sequence, (self.items, self.is_tuple))


def _fill(obj: object, values: tuple[Any, ...]) -> Any:
    cls = type(obj)
    if cls is _Slot:
        return values[obj.index]  # type: ignore[attr-defined]
    if cls is Cached:
        return _value_of(obj)  # type: ignore[arg-type]
    if cls is _Partial:
        partial: _Partial = obj  # type: ignore[assignment]
        return functools.partial(
            _fill(partial.func, values),
            *(_fill(arg, values) for arg in partial.args),
            **{key: _fill(value, values) for key, value in partial.keywords.items()},
        )
    if cls is _Sequence:
        sequence: _Sequence = obj  # type: ignore[assignment]
        items = [_fill(item, values) for item in sequence.items]
        return tuple(items) if sequence.is_tuple else items
    return obj


def apply(plan: _Plan, *values: Any) -> Any:
    """Run the call ``plan`` describes with the engine's resolved ``values``."""
    return _fill(plan.fn, values)(*(_fill(arg, values) for arg in plan.args))

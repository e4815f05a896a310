"""The backend protocol: how a pool runs tasks on an external cluster engine.

A backend wraps one engine (Ray, Dask): it starts or connects to the engine,
submits a call, reports the call's outcome through a callback, and cancels a
call. The local process pool is not a backend; it stays the default and the
reference for the semantics.

Invariants:

- ``on_done`` is called exactly once per submitted call, on any thread (engine
  threads included), with an :class:`Outcome` that is already resolved: the
  engine's result or its exception mapped to triopool's own types. It never
  blocks and never touches Trio except through the run's
  :class:`trio.lowlevel.TrioToken` (see :class:`TrioBridge`).
- Nothing here imports an engine: a backend imports its engine when it starts,
  so ``import triopool`` stays as fast as before.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from ._errors import RemoteTraceback

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "Backend",
    "Capabilities",
    "Outcome",
    "TrioBridge",
    "check_engine_options",
    "with_remote_traceback",
]


@attrs.frozen
class Capabilities:
    """What a backend can do beyond submit, outcome and cancelling queued calls.

    Attributes:
        kill_running: Cancelling a running call can stop it (and its worker).
            Without it the pool refuses ``kill_on_cancel=True``.
        max_tasks_per_child: Workers can be retired after a number of calls.

        kill_on_request: ``kill_running`` holds only for a call submitted
            with the keyword ``killable=True``, which the pool passes (only
            then) for a call with ``kill_on_cancel=True`` or a ``time_limit``:
            the engine runs such a call where it can stop it, at a cost, and
            the others as cheaply as before (Dask: in a child process).

    Hard time limits need ``kill_running``: the pool cancels the call with a
    kill when its deadline passes.
    """

    kill_running: bool
    max_tasks_per_child: bool
    kill_on_request: bool = False


@attrs.frozen
class Outcome:
    """The resolved outcome of one call: a value, or an exception to raise."""

    value: Any = None
    error: BaseException | None = None

    def unwrap(self) -> Any:
        """Return the value or raise the error."""
        if self.error is not None:
            raise self.error
        return self.value


class Backend(Protocol):
    """What :func:`triopool.open_pool` needs from a cluster engine.

    ``start`` and ``stop`` are blocking and run in a worker thread (once per
    pool); ``submit`` and ``cancel`` are cheap and run on the Trio thread.

    A backend whose engine can run a failed call again has a method
    ``check_retries(retries, retry_on)`` that raises :class:`ValueError` for
    a ``retry_on`` its engine's retry cannot follow, and its ``submit`` takes
    the keyword arguments ``retries`` and ``retry_on`` (passed only when
    ``retries`` is not 0). Without that method the pool refuses ``retries``.

    A backend that takes engine options (per call: ``run_sync(...,
    engine_options={...})``) has a method ``check_engine_options(options)``
    that returns them as a dict or raises for a key its engine does not take
    (see :func:`check_engine_options`), and its ``submit`` takes the keyword
    argument ``engine_options`` (passed only when not empty). Without that
    method the pool refuses any.

    A backend that can store objects for ``pool.put`` has the methods
    ``put(obj) -> reference`` (blocking, run in a worker thread),
    ``release(reference)`` and ``is_ref(obj) -> bool`` (whether ``obj`` is
    one of its engine's references); the pool passes each reference among a
    call's arguments (see ``_refs``) as a top-level argument of ``fn``, which
    the engine must resolve to its value. With a ``fetch`` attribute too (a
    module-level function, ``fetch(reference) -> object``, run in the task),
    put objects are not lifted: each worker process fetches one once and
    keeps it (see ``_refs.Cached``). Without ``put`` the pool refuses
    ``put`` with :class:`NotImplementedError`.

    A backend whose capabilities have ``kill_on_request`` takes the keyword
    argument ``killable=True`` in ``submit`` (passed only for a call that may
    be killed); ``cancel(handle, kill=True)`` is then a kill only for such a
    call.

    A backend whose engine can grow or shrink (an autoscaling cluster, workers
    that join or leave) has a method ``capacity() -> int``: how many calls may
    be in flight at once now, blocking and cheap (one question to the engine);
    the pool asks it in a thread every ``capacity_interval`` seconds (an
    optional attribute; 1 by default) while it is open.
    Without that method the pool keeps the count :meth:`start` returned.
    """

    name: str
    capabilities: Capabilities

    def start(self, max_tasks_per_child: int | None) -> int:
        """Start or connect to the engine; return how many calls may be in
        flight at once (the pool keeps the rest in its own queue)."""
        ...

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        on_done: Callable[[Outcome], None],
    ) -> object:
        """Submit ``fn(*args)``; return a handle for :meth:`cancel`.

        ``on_done`` is called exactly once, on any thread, when the call ends
        (cancelled calls included). Raises if the call cannot be submitted
        (for example it cannot be serialized); then ``on_done`` is never called.
        """

    def cancel(self, handle: object, *, kill: bool) -> None:
        """Cancel a submitted call; ``kill`` also stops it if it runs."""

    def stop(self) -> None:
        """Disconnect; stop the engine only if :meth:`start` started it."""


def with_remote_traceback(
    exc: BaseException, traceback_text: str | None
) -> BaseException:
    """Attach the engine worker's traceback as ``__cause__``, as the local pool does."""
    if traceback_text:
        exc.__cause__ = RemoteTraceback(traceback_text)
    return exc


def check_engine_options(
    backend: str,
    where: str,
    options: object,
    valid: frozenset[str],
    reserved: Mapping[str, str],
) -> dict[str, Any]:
    """Return ``options`` as a dict if every key is one the engine takes.

    ``valid`` are the engine's option names a backend passes on as they are;
    ``reserved`` maps the engine options the pool sets itself to the pool
    option to use instead. The values are the engine's to check, when the
    task is submitted.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(
            f"{where} must be a dict of {backend}'s option names to values, "
            f"got {options!r}"
        )
    given = dict(options)
    for key in given:
        if not isinstance(key, str):
            raise TypeError(f"{where} keys must be str, got {key!r}")
    taken = [key for key in given if key in reserved]
    if taken:
        uses = ", ".join(f"{key} (use {reserved[key]})" for key in taken)
        raise ValueError(f"{where} of {backend} cannot set {uses}: the pool sets it")
    unknown = sorted(key for key in given if key not in valid)
    if unknown:
        raise ValueError(
            f"{where} of {backend} has unknown option(s) "
            f"{', '.join(map(repr, unknown))}; valid ones are "
            f"{', '.join(sorted(valid))}"
        )
    return given


@attrs.define(eq=False)
class TrioBridge:
    """Hands outcomes from engine threads to one Trio run, without a thread
    per call: each outcome is one :meth:`trio.lowlevel.TrioToken.run_sync_soon`.

    After the run has finished, outcomes are dropped (nobody waits for them).
    """

    _token: trio.lowlevel.TrioToken
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _closed: bool = False

    def callback(self, deliver: Callable[[Outcome], None]) -> Callable[[Outcome], None]:
        """Wrap ``deliver`` (which runs on the Trio thread) for engine threads."""

        def on_done(outcome: Outcome) -> None:
            with self._lock:
                if self._closed:
                    return
                try:
                    self._token.run_sync_soon(deliver, outcome)
                except trio.RunFinishedError:
                    self._closed = True

        return on_done

    def close(self) -> None:
        """Drop every outcome that arrives from now on."""
        with self._lock:
            self._closed = True

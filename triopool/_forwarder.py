"""The worker's half of ``forward_logs``: a :mod:`logging` handler that sends
each record to the pool as a LOG frame.

The worker imports this module only once something in it imports
:mod:`logging` (see ``_imports.AfterImport``), so a worker whose tasks never
log pays nothing for it. :func:`install` gives the worker's loggers the
parent's levels, so that a record the parent would not handle is never
created here, and puts a :class:`Forwarder` on the root logger.

Invariants:

- A record crosses as plain values only: its message is formatted here
  (``msg`` is the final text, ``args`` is ``None``), its exception becomes
  its traceback text (``exc_text``) and every other attribute that is not
  plain data becomes its ``repr()``. So an odd argument never breaks a task,
  and the parent unpickles no class of the worker's.
- Only the worker process sends: a process that a task forked (and that
  logs) is not the worker, and writes to the worker's pipe would corrupt it;
  its records go where an unconfigured program's go (``logging.lastResort``).

A worker that configures its own logging (``logging.basicConfig()`` or
``logging.config``, in an initializer or a task) handles its records itself:
the forwarder leaves the root logger.

This module imports only the standard library: the worker imports it.
"""

from __future__ import annotations

import functools
import logging
import os

from . import _messages
from ._errors import SoftTimeLimitExceeded

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._messages import LogLevels

_PLAIN = (str, int, float, bool, bytes, type(None))
_CONTAINERS = (tuple, list)


def plain(value: Any) -> Any:
    """``value`` if it is plain data (recursively), else its ``repr()``."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind in _CONTAINERS:
        return kind([plain(item) for item in value])
    if kind is dict:
        return {
            (key if type(key) in _PLAIN else _repr(key)): plain(item)
            for key, item in value.items()
        }
    return _repr(value)


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:
        return (
            f"<{type(value).__qualname__} object (repr() raised {type(exc).__name__})>"
        )


class Forwarder(logging.Handler):
    """Sends every record it handles to the pool (see the module docstring).

    ``send`` writes one whole LOG frame to the pool; ``pid`` is the worker's.
    """

    def __init__(self, send: Callable[[bytes], None], pid: int) -> None:
        super().__init__()
        self._send = send
        self._pid = pid
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() != self._pid:
            fallback = logging.lastResort
            if fallback is not None and record.levelno >= fallback.level:
                fallback.handle(record)
            return
        try:
            data = _messages.log_frame(self.fields(record))
        except SoftTimeLimitExceeded:
            raise  # the task's, raised while it logged: never swallowed here
        except Exception:
            # A message whose arguments do not fit it, say: reported on the
            # worker's stderr, as any handler does.
            self.handleError(record)
            return
        # Not under the try: a SoftTimeLimitExceeded due while the frame was
        # written must reach the task.
        self._send(data)

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record's attributes as plain data, message and traceback
        formatted."""
        fields = dict(record.__dict__)
        fields["msg"] = record.getMessage()
        fields["args"] = None
        if record.exc_info and not record.exc_text:
            fields["exc_text"] = self._formatter.formatException(record.exc_info)
        fields["exc_info"] = None
        fields.pop("message", None)  # set by a formatter: msg holds it now
        return {name: plain(value) for name, value in fields.items()}


def install(levels: LogLevels, send: Callable[[bytes], None], pid: int) -> Forwarder:
    """Give this worker's loggers the parent's levels and forward records
    through a :class:`Forwarder` on the root logger."""
    disabled, root_level, named = levels
    if disabled:
        logging.disable(disabled)
    root = logging.getLogger()
    root.setLevel(root_level)
    for name, level in named.items():
        logging.getLogger(name).setLevel(level)
    handler = Forwarder(send, pid)
    root.addHandler(handler)
    _step_aside_for_basic_config(handler)
    return handler


def _step_aside_for_basic_config(handler: Forwarder) -> None:
    """Let ``logging.basicConfig()`` in the worker configure it, as it would
    in a fresh interpreter.

    Without this, the forwarder on the root logger would make
    ``basicConfig()`` (in an initializer, say) silently do nothing. A worker
    that configures its own logging that way handles its records itself:
    the forwarder leaves the root logger first. ``logging.config`` replaces
    the root's handlers, the forwarder among them, by itself.
    """
    original = logging.basicConfig

    @functools.wraps(original)
    def basic_config(**kwargs: Any) -> None:
        root = logging.getLogger()
        if handler in root.handlers:
            root.removeHandler(handler)
        original(**kwargs)

    logging.basicConfig = basic_config


def uninstall(handler: Forwarder) -> None:
    """Stop forwarding: records go where the worker's own configuration says."""
    logging.getLogger().removeHandler(handler)

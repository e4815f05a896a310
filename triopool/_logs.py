"""The parent's half of ``forward_logs``: the levels a worker starts with, and
the handling of the records it sends (LOG frames).

The rule: the parent's effective levels decide what a worker sends. A worker
gets, when it starts, the root logger's level, the level of every logger that
has one of its own and the level of ``logging.disable()``; its loggers then
create only the records the parent's would (nothing below crosses the pipe).
A record that arrives is handled by the parent's logger of the same name,
with ``record.worker_pid`` and ``record.worker_index`` set, unless that
logger is no longer enabled for its level: raising a level in the parent
takes effect at once, lowering one reaches the workers started afterwards.

Invariant: a LOG frame is never an answer. Whoever reads a worker's frames
(the handshake, the service's reader) hands each LOG frame here and reads on.
"""

from __future__ import annotations

import logging
import traceback
from typing import TYPE_CHECKING

from . import _messages, _protocol

if TYPE_CHECKING:
    from ._messages import LogLevels


def levels() -> LogLevels:
    """The parent's levels as a starting worker needs them (see the module
    docstring)."""
    manager = logging.Logger.manager
    named = {
        name: logger.level
        for name, logger in list(manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET
    }
    return (manager.disable, logging.getLogger().level, named)


def is_log(frame: _protocol.Frame) -> bool:
    """Whether ``frame`` is a worker's log record (never an answer)."""
    return frame.kind == _protocol.LOG


def handle(frame: _protocol.Frame, pid: int, index: int | None) -> None:
    """Hand the record a LOG frame holds to the parent's logger of its name.

    Never raises: a record that does not decode, or a handler or filter of
    the program's that raises, must not end the worker's service.
    """
    try:
        fields = _messages.decode_log(frame)
        logger = logging.getLogger(fields.get("name"))
        level = fields.get("levelno")
        if not isinstance(level, int) or not logger.isEnabledFor(level):
            return
        record = logging.makeLogRecord(fields)
        record.worker_pid = pid
        record.worker_index = index
        logger.handle(record)
    except Exception:
        if logging.raiseExceptions:
            # What logging itself does with an error in a handler.
            traceback.print_exc()

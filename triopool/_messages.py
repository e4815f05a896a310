"""What the worker's messages carry, decoded in the parent: its exceptions."""

from __future__ import annotations

import pickle

from . import _protocol
from ._errors import RemoteError, RemoteTraceback


def exception_from(frame: _protocol.Frame) -> BaseException:
    """Rebuild a worker's exception from an ERROR or FATAL frame."""
    # A large exception pickle travels out of band, like any large bytes.
    exc_pickle, type_name, message, traceback_text = _protocol.loads(
        frame.payload, frame.buffers
    )
    return rebuild_exception(exc_pickle, type_name, message, traceback_text)


def rebuild_exception(
    exc_pickle: bytes | None, type_name: str, message: str, traceback_text: str
) -> BaseException:
    """The worker's exception, or a RemoteError if it does not unpickle here;
    its ``__cause__`` carries the worker's traceback."""
    exc: BaseException | None = None
    if exc_pickle is not None:
        try:
            exc = pickle.loads(exc_pickle)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(type_name, message, traceback_text)
    exc.__cause__ = RemoteTraceback(traceback_text)
    return exc

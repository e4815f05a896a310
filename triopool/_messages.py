"""What each frame between the pool and a worker holds, encoded and decoded.

Each message is encoded by the side that sends it and decoded by the side
that receives it, both here, so the two ends cannot disagree on a payload's
shape:

=============  ========  ==================================================
frame          from      payload
=============  ========  ==================================================
CONFIG         pool      :class:`WorkerConfig`
TASK           pool      :data:`Task`: ``(fn, args, soft_time_limit)``
UP             worker    nothing
START_FAILED   worker    :class:`ExceptionText` of the initializer's error
RESULT         worker    the task's return value itself
ERROR, FATAL   worker    :class:`RemoteException`
SERIAL_ERROR   worker    :class:`SerializationFailure`
LOG            worker    a logging record's attributes (:func:`log_frame`)
PART           worker    one item of a chunk: its value, or its error
                         (:func:`part_frame`; the flags say which)
=============  ========  ==================================================

(SKIP and SKIPPED carry a task number: see ``_protocol.number_frame``.)

On the wire a message is a pickle of a plain tuple of plain data, never of a
class of this module, so decoding one never imports or looks up triopool
code. The hot path carries no message object at all: a task is a plain tuple
(a ``NamedTuple`` would name its class in every task's pickle and cost a
class lookup to unpickle, and ``_serialize`` searches only plain tuples for
large bytes), and a result is the return value itself, which the worker
pickles with ``_serialize.dumps_with_fallback`` and the pool unpickles in
:func:`outcome`, neither through an extra call.

This module imports only the standard library and triopool's stdlib-only
modules (``_protocol``, ``_serialize``, ``_errors``): the worker imports it.
It does not import ``typing`` at run time either, so the classes are plain
``__slots__`` classes rather than ``NamedTuple``.
"""

from __future__ import annotations

import enum
import os
import pickle
import sys

from . import _protocol, _serialize
from ._errors import RemoteError, RemoteTraceback, SerializationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final, TypeAlias

    Pieces: TypeAlias = list[bytes | memoryview]
    #: What a TASK frame holds: the function, its arguments, the soft time
    #: limit in seconds (or ``None``).
    Task: TypeAlias = tuple[Callable[..., Any], tuple[Any, ...], float | None]
    #: A task's answer before framing: frame kind, payload, buffers.
    Answer: TypeAlias = tuple[int, bytes, list[pickle.PickleBuffer]]
    #: The parent's logging levels a worker needs with ``forward_logs=True``
    #: (see ``_logs.levels``): the level of ``logging.disable()``, the root
    #: logger's level, and the level of every logger that has one of its own.
    LogLevels: TypeAlias = tuple[int, int, dict[str, int]]


class _Message:
    """A message: a fixed tuple of fields, compared and shown by value."""

    __slots__ = ()
    #: The fields in the constructor's order, which is also the wire's.
    _fields: tuple[str, ...] = ()

    def fields(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self._fields])

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Message)
        return self.fields() == other.fields()

    def __hash__(self) -> int:
        return hash(self.fields())

    def __repr__(self) -> str:
        args = ", ".join(
            f"{name}={value!r}"
            for name, value in zip(self._fields, self.fields(), strict=True)
        )
        return f"{type(self).__name__}({args})"


# Parent -> worker


class WorkerConfig(_Message):
    """The CONFIG frame: what a worker needs before it takes tasks.

    ``initializer`` is a pickle of ``(initializer, initargs)`` of its own, so
    that one which does not unpickle in the worker is reported as the
    initializer's failure (START_FAILED), not as a broken configuration.
    ``worker_index`` is the worker's slot (``current_worker().index``);
    ``log_levels`` is ``None`` unless the pool forwards logs.
    """

    __slots__ = (
        "authkey",
        "initializer",
        "log_levels",
        "main_name",
        "main_path",
        "max_memory",
        "sys_argv",
        "sys_path",
        "worker_index",
    )
    _fields = (
        "sys_path",
        "sys_argv",
        "main_path",
        "main_name",
        "initializer",
        "max_memory",
        "authkey",
        "worker_index",
        "log_levels",
    )

    def __init__(
        self,
        *,
        sys_path: list[str],
        sys_argv: list[str],
        main_path: str | None,
        main_name: str | None,
        initializer: bytes | None,
        max_memory: int | None,
        authkey: bytes,
        worker_index: int = 0,
        log_levels: LogLevels | None = None,
    ) -> None:
        self.sys_path = sys_path
        self.sys_argv = sys_argv
        self.main_path = main_path
        self.main_name = main_name
        self.initializer = initializer
        self.max_memory = max_memory
        self.authkey = authkey
        self.worker_index = worker_index
        self.log_levels = log_levels

    def frame(
        self, *, worker_index: int = 0, log_levels: LogLevels | None = None
    ) -> Pieces:
        """The CONFIG frame of the worker in slot ``worker_index``."""
        fields = (*self.fields()[:-2], worker_index, log_levels)
        return _protocol.encode_frame(_protocol.CONFIG, pickle.dumps(fields, 5))


def worker_config(
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    max_memory: int | None,
) -> WorkerConfig:
    """The pool's worker configuration, with this process's ``sys.path``,
    ``sys.argv``, main module and ``multiprocessing`` authkey; each worker's
    CONFIG frame adds its slot and log levels (:meth:`WorkerConfig.frame`).

    Raises TypeError if the initializer or its arguments do not pickle.
    """
    initializer_pickle = None
    if initializer is not None:
        try:
            initializer_pickle = pickle.dumps((initializer, initargs), 5)
        except Exception as exc:
            raise TypeError(
                f"initializer and initargs must be picklable: {type(exc).__name__}: {exc}"
            ) from exc
    main_path, main_name = main_module()
    if main_path is not None or main_name is not None:
        # Workers run the main script as __mp_main__, so objects whose classes
        # it defines come back under that name; make it resolve here too, as
        # multiprocessing does.
        sys.modules.setdefault("__mp_main__", sys.modules["__main__"])
    return WorkerConfig(
        # The main script may read sys.argv at import, as it does when it is
        # run again in the worker (multiprocessing passes it on too).
        sys_path=list(sys.path),
        sys_argv=list(sys.argv),
        main_path=main_path,
        main_name=main_name,
        initializer=initializer_pickle,
        max_memory=max_memory,
        authkey=_multiprocessing_authkey(),
    )


def config_frame(
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    max_memory: int | None,
    *,
    worker_index: int = 0,
    log_levels: LogLevels | None = None,
) -> Pieces:
    """A CONFIG frame: :func:`worker_config`, then :meth:`WorkerConfig.frame`."""
    return worker_config(initializer, initargs, max_memory).frame(
        worker_index=worker_index, log_levels=log_levels
    )


def decode_config(frame: _protocol.Frame) -> WorkerConfig:
    """The worker's side of :func:`config_frame`."""
    fields = pickle.loads(frame.payload)
    return WorkerConfig(**dict(zip(WorkerConfig._fields, fields, strict=True)))


def main_module() -> tuple[str | None, str | None]:
    """Where the workers find the parent's ``__main__``: (path, module name)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name is not None and name != "__main__":
        if name.endswith(".__main__"):
            # A package's __main__ (python -m pkg) is a command line: running it
            # again would run the command. Like multiprocessing, skip it.
            return None, None
        return None, name
    path = getattr(main, "__file__", None)
    if isinstance(path, str) and path.endswith(".py") and os.path.exists(path):
        return os.path.abspath(path), None
    return None, None


def _multiprocessing_authkey() -> bytes:
    """This process's ``multiprocessing`` authkey, for the workers.

    A ``multiprocessing.Manager()`` proxy sent as an argument connects back to
    its manager with the key of the process it is in; the workers need the
    parent's. They set it only if a task imports ``multiprocessing`` (see
    ``_imports.use_parent_authkey``), so the key costs them nothing
    otherwise. Here the import costs a few milliseconds, once, and covers a
    program that imports ``multiprocessing`` after its pool opened.
    """
    import multiprocessing.process

    return bytes(multiprocessing.process.current_process().authkey)


def task_frame(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    soft_time_limit: float | None,
    *,
    main_importable: bool,
) -> Pieces:
    """The TASK frame that runs ``fn(*args)``.

    ``main_importable`` says whether the workers can import this process's
    ``__main__`` (see :func:`main_module`); when they cannot, functions from
    it go by value. Raises SerializationError if the task does not pickle.
    """
    # A function from a __main__ the workers cannot run again (a REPL, a
    # notebook, python -c) pickles by reference here and then fails to
    # unpickle there: send it by value instead. The function may also come
    # as an argument (map's chunks).
    by_value = not main_importable and (
        _serialize.from_main(fn) or any(_serialize.from_main(arg) for arg in args)
    )
    try:
        payload, buffers = _serialize.dumps_with_fallback(
            (fn, args, soft_time_limit), by_value=by_value
        )
    except Exception as exc:
        raise SerializationError(
            f"could not pickle the task {describe_callable(fn)}: "
            f"{type(exc).__name__}: {exc}{_serialize.cloudpickle_hint(exc)}"
        ) from exc
    return _protocol.encode_frame(_protocol.TASK, payload, buffers)


def decode_task(
    frame: _protocol.Frame, unpickler: Callable[..., pickle.Unpickler] | None
) -> Task:
    """The worker's side of :func:`task_frame`; ``unpickler`` as for
    :func:`_serialize.loads`. Raises what unpickling raises."""
    if unpickler is None:
        # The plain C unpickler, without a detour: this runs for every task.
        task: Task = pickle.loads(frame.payload, buffers=frame.buffers)
        return task
    return _serialize.loads(frame.payload, frame.buffers, unpickler)  # type: ignore[no-any-return]


def describe_callable(fn: object) -> str:
    """``module.qualname`` of a function, for messages; its repr otherwise."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    module = getattr(fn, "__module__", None)
    if name and module:
        return f"{module}.{name}"
    return repr(fn)


# Worker -> parent


class ExceptionText(_Message):
    """An exception as text: its type's full name, its message, its traceback.

    The START_FAILED frame holds one (the initializer's exception).
    """

    __slots__ = ("message", "traceback", "type_name")
    _fields = ("type_name", "message", "traceback")

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    @classmethod
    def of(cls, exc: BaseException) -> ExceptionText:
        """Describe ``exc``, whatever its ``__str__`` does: a task's
        exception must never end the worker."""
        import traceback

        exc_type = type(exc)
        type_name = f"{exc_type.__module__}.{exc_type.__qualname__}"
        try:
            message = str(exc)
        except BaseException as str_error:
            message = f"<str() of the exception raised {type(str_error).__name__}>"
        try:
            text = "".join(traceback.format_exception(exc))
        except BaseException as format_error:
            text = (
                f"{type_name}: {message}\n(its traceback could not be formatted: "
                f"{type(format_error).__name__})\n"
            )
        return cls(type_name, message, text)


def start_failed_frame(exc: BaseException) -> Pieces:
    """The START_FAILED frame for an initializer that raised ``exc``."""
    payload, buffers = _serialize.dumps(ExceptionText.of(exc).fields())
    return _protocol.encode_frame(_protocol.START_FAILED, payload, buffers)


def decode_start_failed(frame: _protocol.Frame) -> ExceptionText:
    """The pool's side of :func:`start_failed_frame`."""
    return ExceptionText(*_serialize.loads(frame.payload, frame.buffers))


class RemoteException(_Message):
    """An exception raised in the worker: ERROR and FATAL frames hold one.

    ``exc_pickle`` is the exception pickled on its own (``None`` if it does not
    pickle), so that an exception that does not unpickle in the pool still
    arrives as text (a :class:`~triopool.RemoteError`).
    """

    __slots__ = ("exc_pickle", "text")
    _fields = ("exc_pickle", "text")

    def __init__(self, exc_pickle: bytes | None, text: ExceptionText) -> None:
        self.exc_pickle = exc_pickle
        self.text = text

    @classmethod
    def of(cls, exc: BaseException) -> RemoteException:
        """Describe ``exc``; never raises for an odd exception."""
        try:
            exc_pickle: bytes | None = pickle.dumps(exc, 5)
        except Exception:
            exc_pickle = None
        return cls(exc_pickle, ExceptionText.of(exc))

    def wire(self) -> tuple[bytes | None, str, str, str]:
        # Flat, so that a large exception pickle is found near the top of the
        # tuple and travels out of band (see _serialize.dumps).
        text = self.text
        return (self.exc_pickle, text.type_name, text.message, text.traceback)

    @classmethod
    def from_wire(cls, fields: tuple[bytes | None, str, str, str]) -> RemoteException:
        exc_pickle, type_name, message, traceback = fields
        return cls(exc_pickle, ExceptionText(type_name, message, traceback))

    def rebuild(self) -> BaseException:
        """The worker's exception, or a RemoteError if it does not unpickle
        here; its ``__cause__`` carries the worker's traceback."""
        text = self.text
        exc: BaseException | None = None
        if self.exc_pickle is not None:
            try:
                exc = pickle.loads(self.exc_pickle)
            except Exception:
                exc = None
        if not isinstance(exc, BaseException):
            exc = RemoteError(text.type_name, text.message, text.traceback)
        exc.__cause__ = RemoteTraceback(text.traceback)
        return exc


class Step(enum.IntEnum):
    """Which pickling step of a task failed in the worker."""

    UNPICKLE_TASK = 1
    PICKLE_RESULT = 2


class SerializationFailure(_Message):
    """A SERIAL_ERROR frame: ``step`` failed in the worker with ``error``."""

    __slots__ = ("error", "step")
    _fields = ("step", "error")

    def __init__(self, step: Step, error: RemoteException) -> None:
        self.step = step
        self.error = error

    def to_error(self) -> SerializationError:
        """The SerializationError the caller gets, caused by the pickling
        error itself (as API.md promises), which the worker's traceback
        causes in turn."""
        text = self.error.text
        hint = ""
        if self.step is Step.PICKLE_RESULT and text.type_name in _BY_REFERENCE_ERRORS:
            # The worker shares this process's sys.path: no cloudpickle here
            # means none there either.
            hint = _serialize.cloudpickle_hint(pickle.PicklingError())
        what = (
            "unpickle the task"
            if self.step is Step.UNPICKLE_TASK
            else "pickle the result"
        )
        error = SerializationError(
            f"could not {what} in the worker: {text.type_name}: {text.message}{hint}"
        )
        error.__cause__ = self.error.rebuild()
        return error


# The errors plain pickle raises when it cannot send a function or class by
# reference, as the worker names them.
_BY_REFERENCE_ERRORS: Final = frozenset(
    {"_pickle.PicklingError", "pickle.PicklingError", "builtins.AttributeError"}
)


def error_answer(exc: BaseException) -> Answer:
    """The ERROR answer for a task that raised ``exc``."""
    try:
        payload, buffers = _serialize.dumps_with_fallback(
            RemoteException.of(exc).wire()
        )
    except Exception as error:
        # Only an odd str subclass as the message gets here.
        return serialization_failure_answer(Step.PICKLE_RESULT, error)
    return _protocol.ERROR, payload, buffers


def serialization_failure_answer(step: Step, exc: BaseException) -> Answer:
    """The SERIAL_ERROR answer: ``step`` of a task failed with ``exc``."""
    payload, buffers = _serialize.dumps((int(step), *RemoteException.of(exc).wire()))
    return _protocol.SERIAL_ERROR, payload, buffers


def fatal_frame(exc: BaseException) -> Pieces:
    """The FATAL frame for a task that raised ``exc``, which ends the worker."""
    payload, buffers = _serialize.dumps(RemoteException.of(exc).wire())
    return _protocol.encode_frame(_protocol.FATAL, payload, buffers)


def decode_remote_exception(frame: _protocol.Frame) -> RemoteException:
    """What an ERROR or FATAL frame holds."""
    # A large exception pickle travels out of band, like any large bytes.
    return RemoteException.from_wire(_serialize.loads(frame.payload, frame.buffers))


def decode_serialization_failure(frame: _protocol.Frame) -> SerializationFailure:
    """What a SERIAL_ERROR frame holds."""
    step, *fields = _serialize.loads(frame.payload, frame.buffers)
    return SerializationFailure(Step(step), RemoteException.from_wire(tuple(fields)))


def log_frame(fields: dict[str, Any]) -> bytes:
    """A whole LOG frame holding a logging record's attributes.

    The worker hands over plain values only (``_forwarder`` turns anything
    else into its ``repr()``), so the parent unpickles no class of the
    worker's and decoding never fails for a record's content.
    """
    return b"".join(_protocol.encode_frame(_protocol.LOG, pickle.dumps(fields, 5)))


def decode_log(frame: _protocol.Frame) -> dict[str, Any]:
    """The parent's side of :func:`log_frame`."""
    fields: dict[str, Any] = pickle.loads(frame.payload)
    return fields


# What a PART frame's payload holds, by its flags: the item's return value
# (pickled as a RESULT frame's), its exception (as an ERROR frame's), or the
# failure to pickle its value (as a SERIAL_ERROR frame's).
PART_VALUE: Final = 0
PART_ERROR: Final = 1
PART_SERIAL_ERROR: Final = 2


def part_frame(value: object) -> Pieces:
    """The PART frame of a chunk's item that returned ``value``."""
    try:
        payload, buffers = _serialize.dumps_with_fallback(value)
    except Exception as exc:
        _, payload, buffers = serialization_failure_answer(Step.PICKLE_RESULT, exc)
        return _protocol.encode_frame(
            _protocol.PART, payload, buffers, PART_SERIAL_ERROR
        )
    return _protocol.encode_frame(_protocol.PART, payload, buffers, PART_VALUE)


def error_part_frame(exc: BaseException) -> Pieces:
    """The PART frame of a chunk's item that raised ``exc``."""
    kind, payload, buffers = error_answer(exc)
    flags = PART_ERROR if kind == _protocol.ERROR else PART_SERIAL_ERROR
    return _protocol.encode_frame(_protocol.PART, payload, buffers, flags)


def decode_parts(frames: list[_protocol.Frame]) -> tuple[list[Any], int | None]:
    """The outcomes of a chunk's items from their PART frames, in order:
    each item's value, or its exception rebuilt as :func:`outcome` would
    raise it; and the index of the first item that failed (``None``: none
    did). Never raises for what a frame holds."""
    values: list[Any] = []
    append = values.append
    first_failed: int | None = None
    loads = pickle.loads
    for frame in frames:
        flags = frame.flags
        if flags == PART_VALUE:
            try:
                # The plain C unpickler, without a detour: once per item.
                append(loads(frame.payload, buffers=frame.buffers))
                continue
            except Exception as exc:
                error: BaseException = SerializationError(
                    f"could not unpickle the task's result: {type(exc).__name__}: {exc}"
                )
                error.__cause__ = exc
        elif flags == PART_ERROR:
            error = task_exception(frame)
        else:
            try:
                error = decode_serialization_failure(frame).to_error()
            except Exception as exc:
                error = SerializationError(
                    f"could not unpickle the task's error: {type(exc).__name__}: {exc}"
                )
                error.__cause__ = exc
        if first_failed is None:
            first_failed = len(values)
        append(error)
    return values, first_failed


def outcome(frame: _protocol.Frame) -> Any:
    """A task's outcome from its answer: the value of a RESULT frame; for
    ERROR, the task's exception is raised; for SERIAL_ERROR, a
    SerializationError. One that does not unpickle here raises a
    SerializationError too."""
    kind = frame.kind
    if kind == _protocol.RESULT:
        try:
            # The plain C unpickler, without a detour: this runs for every task.
            return pickle.loads(frame.payload, buffers=frame.buffers)
        except Exception as exc:
            raise SerializationError(
                f"could not unpickle the task's result: {type(exc).__name__}: {exc}"
            ) from exc
    if kind == _protocol.ERROR:
        raise task_exception(frame)
    raise decode_serialization_failure(frame).to_error()


def task_exception(frame: _protocol.Frame) -> BaseException:
    """The exception a task raised, from its ERROR frame: rebuilt with the
    worker's traceback, or a SerializationError if it does not unpickle."""
    try:
        return decode_remote_exception(frame).rebuild()
    except Exception as exc:
        error = SerializationError(
            f"could not unpickle the task's exception: {type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return error

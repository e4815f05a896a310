"""Worker-side helpers of ``triopool map``.

The worker does all the per-item work: it decodes the input line (a str by
default, a JSON value with ``--json``), calls the function and encodes the
output line, so the parent only splits, batches and writes lines. Imports only the standard library (never trio or attrs), so
workers running it start fast.
"""

from __future__ import annotations

import json
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: Outcome kinds of one item (see :func:`call_lines`).
OK = 0
FAILED = 1
BAD_INPUT = 2


def stdout_to_stderr() -> None:
    """Initializer: send what the task prints to stderr.

    ``triopool map`` writes its results to stdout, one JSON line each; output
    of the function being mapped must not land between them.
    """
    sys.stdout.flush()
    os.dup2(2, 1)


def error_type_name(exc: BaseException) -> str:
    """``ValueError`` for built-in exceptions, ``module.QualName`` otherwise."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_line(line: bytes, as_json: bool) -> Any:
    """The value of an input line: the line as a str, or with ``as_json`` its
    JSON value. ValueError if it is not UTF-8, or not strict JSON.

    A str loses a trailing carriage return (a CRLF line ending). ``NaN``,
    ``Infinity`` and ``-Infinity``, which :func:`json.loads` accepts by
    default, are refused: no output line could echo them as valid JSON.
    """
    if not as_json:
        return line.removesuffix(b"\r").decode()
    return json.loads(line, parse_constant=_no_constant)


def _dumps(record: dict[str, Any]) -> str:
    # Strict JSON out: a NaN or an infinity raises instead of being written as
    # a bare NaN that strict readers reject.
    return json.dumps(record, ensure_ascii=False, allow_nan=False)


def error_record(value: Any, type_name: str, message: str) -> str:
    """The output line for an item that failed."""
    return _dumps({"input": value, "error": {"type": type_name, "message": message}})


def call_lines(
    fn: Callable[[Any], Any], lines: list[bytes], as_json: bool
) -> tuple[list[tuple[int, str]], float]:
    """Decode each line, call ``fn`` on it and encode the outcome.

    Returns one ``(kind, text)`` per line: ``(OK, output line)``, ``(FAILED,
    output line with the error)`` or ``(BAD_INPUT, what is wrong with the
    line)``, and the seconds it all took here, from which the parent sizes
    chunks. An exception fails only its own item; the rest still run.
    """
    start = time.perf_counter()
    outcomes: list[tuple[int, str]] = []
    for line in lines:
        try:
            value = parse_line(line, as_json)
        except json.JSONDecodeError as exc:
            # Each line is a document of its own: only the column helps.
            outcomes.append(
                (BAD_INPUT, f"invalid JSON: {exc.msg} (column {exc.colno})")
            )
            continue
        except UnicodeDecodeError as exc:
            outcomes.append(
                (BAD_INPUT, f"not UTF-8: {exc.reason} (column {exc.start + 1})")
            )
            continue
        except ValueError as exc:  # NaN
            outcomes.append((BAD_INPUT, f"invalid JSON: {exc}"))
            continue
        try:
            result = fn(value)
        except Exception as exc:
            outcomes.append(
                (FAILED, error_record(value, error_type_name(exc), str(exc)))
            )
            continue
        try:
            text = _dumps({"input": value, "output": result})
        except (TypeError, ValueError) as exc:
            message = f"the result is not JSON serializable: {exc}"
            if isinstance(exc, ValueError) and "Out of range float" in str(exc):
                message += " (NaN and infinities have no JSON form)"
            text = error_record(value, error_type_name(exc), message)
            outcomes.append((FAILED, text))
            continue
        outcomes.append((OK, text))
    return outcomes, time.perf_counter() - start

"""The options are written once, in ``_config.Options``, and everything reads them there.

The public signatures of ``open_pool`` (each overload too) and
``configure_default_pool`` repeat the names and defaults, for readers, docs
and type checkers; these tests keep them equal to :class:`Options`, and check
that both functions hand every option on.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest

import triopool
from triopool import _default
from triopool._config import DEFAULTS, Options, PoolConfig

if TYPE_CHECKING:
    from collections.abc import Iterator

PACKAGE = Path(triopool.__file__).parent
FIELDS = [field.name for field in attrs.fields(Options)]


def _value(node: ast.expr) -> Any:
    """A default as written in the source: a literal, or names of triopool's
    (``retry_on=(BrokenWorkerError,)``)."""
    expression = ast.Expression(node)
    return eval(compile(expression, "<default>", "eval"), vars(triopool))


def _signature_defaults(
    function: ast.FunctionDef | ast.AsyncFunctionDef,
) -> dict[str, Any]:
    """A ``def``'s parameters and their defaults, read from the source."""
    arguments = function.args
    positional = arguments.posonlyargs + arguments.args
    found = dict(
        zip(
            [a.arg for a in positional[len(positional) - len(arguments.defaults) :]],
            [_value(d) for d in arguments.defaults],
            strict=True,
        )
    )
    for argument, default in zip(
        arguments.kwonlyargs, arguments.kw_defaults, strict=True
    ):
        # No default: open_pool's overload for a backend requires one.
        found[argument.arg] = None if default is None else _value(default)
    return found


def _definitions(module: str, name: str) -> list[ast.FunctionDef]:
    tree = ast.parse((PACKAGE / module).read_text())
    return [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == name
    ]


@pytest.mark.parametrize(
    ("module", "name", "count"),
    [("_pool.py", "open_pool", 1), ("_default.py", "configure_default_pool", 1)],
)
def test_public_signatures_have_the_options_and_their_defaults(
    module: str, name: str, count: int
) -> None:
    definitions = _definitions(module, name)
    assert len(definitions) == count
    for definition in definitions:
        defaults = _signature_defaults(definition)
        assert defaults.pop("backend") is None
        assert list(defaults) == FIELDS
        assert defaults == DEFAULTS.as_dict()


@pytest.mark.parametrize(
    ("module", "name"),
    [("_pool.py", "open_pool"), ("_default.py", "configure_default_pool")],
)
def test_every_option_is_handed_on_as_itself(module: str, name: str) -> None:
    # The Options(...) built in the function's body names each option once,
    # as option=option: none is dropped, renamed or swapped.
    definition = _definitions(module, name)[-1]
    calls = [
        node
        for node in ast.walk(definition)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Options"
    ]
    assert len(calls) == 1
    passed = [
        (keyword.arg, keyword.value.id)
        for keyword in calls[0].keywords
        if isinstance(keyword.value, ast.Name)
    ]
    assert passed == [(field, field) for field in FIELDS]


def test_the_checked_config_has_every_option() -> None:
    assert [field.name for field in attrs.fields(PoolConfig)] == FIELDS


def test_runtime_signatures_agree() -> None:
    for function in (triopool.open_pool, triopool.configure_default_pool):
        parameters = inspect.signature(function).parameters
        assert {
            name: p.default for name, p in parameters.items() if name != "backend"
        } == DEFAULTS.as_dict()


@pytest.fixture
def default_options_restored() -> Iterator[None]:
    yield
    triopool.configure_default_pool()


@pytest.mark.usefixtures("default_options_restored")
def test_configure_default_pool_keeps_every_option() -> None:
    given: dict[str, Any] = {
        "workers": 3,
        "start_method": "forkserver",
        "forkserver_preload": ["json"],
        "initializer": print,
        "initargs": ["up"],
        "max_tasks_per_child": 7,
        "max_memory_per_child": 2**30,
        "start_timeout": 9.0,
        "max_start_failures": 2,
        "time_limit": 8.0,
        "soft_time_limit": 6.0,
        "kill_on_cancel": False,
        "shutdown_timeout": 1.0,
        "retries": 2,
        "retry_on": [triopool.TimeLimitExceeded, KeyError],
        "min_workers": 1,
        "idle_timeout": 30.0,
        "max_lifetime_per_child": 3600.0,
        "forward_logs": False,
    }
    assert list(given) == FIELDS
    assert all(given[name] != getattr(DEFAULTS, name) for name in FIELDS)
    triopool.configure_default_pool(**given)
    # Kept as values: a list changed afterwards changes nothing.
    assert _default._options == Options(
        **given
        | {
            "forkserver_preload": ("json",),
            "initargs": ("up",),
            "retry_on": (triopool.TimeLimitExceeded, KeyError),
        }
    )
    given["initargs"].append("changed")
    assert _default._options.initargs == ("up",)


def test_options_check_like_open_pool() -> None:
    with pytest.raises(ValueError, match=r"^workers must be >= 1, got 0$"):
        Options(workers=0).config()
    with pytest.raises(TypeError, match=r"^initargs must be a sequence"):
        Options(initargs="ab").config()
    assert Options(workers=2, time_limit=float("inf")).config().time_limit is None


@pytest.mark.usefixtures("default_options_restored")
@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        (
            {"retries": -1},
            ValueError,
            r"^retries must be >= 0 \(0: no retry\), got -1$",
        ),
        ({"retries": 1.5}, TypeError, r"^retries must be an int >= 0, got 1\.5$"),
        ({"retries": True}, TypeError, r"^retries must be an int >= 0, got True$"),
        (
            {"retry_on": "KeyError"},
            TypeError,
            r"^retry_on must be a tuple of exception classes, such as "
            r"\(BrokenWorkerError, TimeLimitExceeded\), got 'KeyError'$",
        ),
        (
            {"retry_on": (KeyError("k"),)},
            TypeError,
            r"^retry_on must hold exception classes, got KeyError\('k'\): name",
        ),
        (
            {"retry_on": (KeyboardInterrupt,)},
            ValueError,
            r"^retry_on cannot name KeyboardInterrupt: .* name BrokenWorkerError "
            r"instead$",
        ),
        (
            {"retry_on": (triopool.SerializationError,)},
            ValueError,
            r"^retry_on cannot name SerializationError: it is never the failure",
        ),
        (
            {"retry_on": (triopool.BrokenPoolError,)},
            ValueError,
            r"^retry_on cannot name BrokenPoolError",
        ),
    ],
)
def test_retry_options_are_checked_naming_the_fix(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        triopool.open_pool(2, **options)
    with pytest.raises(error, match=match):
        triopool.configure_default_pool(**options)
    assert _default._options == DEFAULTS  # a refused configuration changes nothing


def test_retry_on_takes_one_class_or_any_sequence() -> None:
    assert Options(retry_on=KeyError).config().retry_on == (KeyError,)
    classes = [triopool.TimeLimitExceeded, KeyError]
    config = Options(retries=2, retry_on=classes).config()
    assert (config.retries, config.retry_on) == (
        2,
        (triopool.TimeLimitExceeded, KeyError),
    )
    assert DEFAULTS.config().retry_on == (triopool.BrokenWorkerError,)

"""Callables plain pickle cannot send: cloudpickle when it is installed, a
clear SerializationError that says how to get it when it is not."""

from __future__ import annotations

import functools
import pickle
import sys
import textwrap
import threading
from typing import TYPE_CHECKING, Any

import pytest
import trio

import triopool
from tests import taskfuncs, workerfuncs
from triopool import _protocol

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TIMEOUT = 60
INSTALL_HINT = "pip install cloudpickle"


@pytest.fixture
def no_cloudpickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import cloudpickle`` fail, as if it were not installed."""
    monkeypatch.setitem(sys.modules, "cloudpickle", None)


def make_closure(factor: int) -> Callable[[int], int]:
    def multiply(x: int) -> int:
        return x * factor

    return multiply


async def test_lambda_and_closure_with_cloudpickle() -> None:
    pytest.importorskip("cloudpickle")
    offset = 10
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            assert await pool.run_sync(lambda x: x + offset, 32) == 42
            assert await pool.run_sync(make_closure(3), 5) == 15
            # The arguments may be lambdas too.
            assert await pool.run_sync(taskfuncs.apply, lambda: "called") == "called"


async def test_result_plain_pickle_cannot_send() -> None:
    pytest.importorskip("cloudpickle")
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            double = await pool.run_sync(taskfuncs.return_lambda)
    assert double(21) == 42


@pytest.mark.usefixtures("no_cloudpickle")
async def test_without_cloudpickle_the_error_says_how_to_get_it() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.SerializationError) as info:
                await pool.run_sync(lambda: 1)
            assert INSTALL_HINT in str(info.value)
            assert "<lambda>" in str(info.value)
            assert isinstance(
                info.value.__cause__, pickle.PicklingError | AttributeError
            )
            with pytest.raises(triopool.SerializationError) as info:
                await pool.run_sync(make_closure(2), 1)
            assert INSTALL_HINT in str(info.value)
            # The pool is fine afterwards.
            assert await pool.run_sync(workerfuncs.add, 1, 2) == 3


@pytest.mark.usefixtures("no_cloudpickle")
async def test_result_without_cloudpickle_says_how_to_get_it() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(
            1, initializer=taskfuncs.hide_cloudpickle
        ) as pool:
            with pytest.raises(triopool.SerializationError) as info:
                await pool.run_sync(taskfuncs.return_lambda)
            assert "could not pickle the result in the worker" in str(info.value)
            assert INSTALL_HINT in str(info.value)
            assert await pool.run_sync(workerfuncs.add, 1, 2) == 3


@pytest.mark.usefixtures("no_cloudpickle")
async def test_no_hint_when_cloudpickle_would_not_help() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.SerializationError) as info:
                await pool.run_sync(workerfuncs.identity, threading.Lock())
    assert INSTALL_HINT not in str(info.value)
    assert "lock" in str(info.value)


@pytest.mark.parametrize("chunksize", [1, 3])
async def test_map_and_imap_of_a_lambda_and_a_closure_with_cloudpickle(
    chunksize: int,
) -> None:
    pytest.importorskip("cloudpickle")
    offset = 10
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(2) as pool:
            assert await pool.map(
                lambda x: x + offset, range(7), chunksize=chunksize
            ) == [x + 10 for x in range(7)]
            async with pool.imap(
                make_closure(3), range(7), chunksize=chunksize
            ) as results:
                assert [value async for value in results] == [3 * x for x in range(7)]
            async with pool.imap(
                lambda x: -x, range(7), ordered=False, chunksize=chunksize
            ) as results:
                assert sorted([value async for value in results]) == [
                    -x for x in reversed(range(7))
                ]


@pytest.mark.usefixtures("no_cloudpickle")
async def test_map_and_imap_without_cloudpickle_say_how_to_get_it() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.SerializationError) as info:
                await pool.map(lambda x: x, range(3))
            assert "could not pickle the function" in str(info.value)
            assert "<lambda>" in str(info.value)
            assert str(info.value).endswith(INSTALL_HINT)
            with pytest.raises(triopool.SerializationError) as info:
                pool.imap(make_closure(2), range(3), chunksize=2)
            assert "multiply" in str(info.value)
            assert str(info.value).endswith(INSTALL_HINT)
            # Nothing was sent, and the pool still works.
            assert pool.statistics().tasks_submitted == 0
            assert await pool.map(workerfuncs.identity, range(3)) == [0, 1, 2]


@pytest.mark.usefixtures("no_cloudpickle")
async def test_map_gives_no_hint_when_cloudpickle_would_not_help() -> None:
    lock = threading.Lock()
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.SerializationError, match="lock") as info:
                await pool.map(functools.partial(taskfuncs.apply, lock), range(3))
    assert INSTALL_HINT not in str(info.value)


async def test_unpicklable_even_with_cloudpickle() -> None:
    pytest.importorskip("cloudpickle")
    lock = threading.Lock()
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            with pytest.raises(triopool.SerializationError, match="lock"):
                await pool.run_sync(lambda: lock)
            assert await pool.run_sync(workerfuncs.add, 2, 2) == 4


async def test_plain_pickle_stays_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_cloudpickle() -> Any:
        raise AssertionError("cloudpickle was asked for a picklable task")

    monkeypatch.setattr(_protocol, "_cloudpickle", no_cloudpickle)
    payload, buffers = _protocol.dumps_with_fallback((workerfuncs.add, (1, 2), None))
    assert b"cloudpickle" not in payload
    fn, args, _ = pickle.loads(payload, buffers=buffers)
    assert fn(*args) == 3


async def test_cloudpickle_output_loads_with_plain_pickle() -> None:
    pytest.importorskip("cloudpickle")
    payload, buffers = _protocol.dumps_with_fallback(lambda x: x * 3)
    assert pickle.loads(payload, buffers=buffers)(3) == 9
    payload, buffers = _protocol.dumps_with_fallback(workerfuncs.add, by_value=True)
    assert pickle.loads(payload, buffers=buffers)(2, 3) == 5


SCRIPT = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "without":
        sys.modules["cloudpickle"] = None
    import trio, triopool

    def square(x):
        return x * x

    async def main():
        try:
            print(await triopool.run_sync(square, 7))
        except triopool.SerializationError as exc:
            print("SerializationError:", exc)

    trio.run(main)
    """
)


MAP_SCRIPT = textwrap.dedent(
    """
    import sys
    import trio, triopool

    def square(x):
        return x * x

    async def main():
        async with triopool.open_pool(2) as pool:
            print(await pool.map(square, range(7), chunksize=3))
            print(await pool.map(lambda x: x + 1, range(7), chunksize=3))
            async with pool.imap(square, range(7), chunksize=3) as results:
                print([value async for value in results])

    trio.run(main)
    """
)


async def test_chunked_map_of_a_function_from_python_c(tmp_path: Path) -> None:
    """A chunk carries the user's function as an argument of the chunk runner:
    it must go by value too when the workers cannot import the __main__."""
    pytest.importorskip("cloudpickle")
    with trio.fail_after(TIMEOUT):
        completed = await trio.run_process(
            [sys.executable, "-c", MAP_SCRIPT],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=tmp_path,
        )
    assert completed.returncode == 0, completed.stderr.decode()
    squares = [x * x for x in range(7)]
    assert completed.stdout.decode().splitlines() == [
        str(squares),
        str([x + 1 for x in range(7)]),
        str(squares),
    ]


@pytest.mark.parametrize("cloudpickle", ["with", "without"])
async def test_function_from_python_c(cloudpickle: str, tmp_path: Path) -> None:
    """A __main__ the workers cannot import again, like a REPL's or a notebook's."""
    if cloudpickle == "with":
        pytest.importorskip("cloudpickle")
    with trio.fail_after(TIMEOUT):
        completed = await trio.run_process(
            [sys.executable, "-c", SCRIPT, cloudpickle],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=tmp_path,
        )
    output = completed.stdout.decode()
    assert completed.returncode == 0, completed.stderr.decode()
    if cloudpickle == "with":
        assert output == "49\n"
    else:
        assert output.startswith("SerializationError: could not pickle the task")
        assert "a REPL, a notebook or python -c" in output
        assert INSTALL_HINT in output

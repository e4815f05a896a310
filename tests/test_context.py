"""Where the API may be called from: each mistake gets an error naming the fix.

These messages are what a user reads first, so each test runs the user's
program as the user would (``python script.py``) and checks the exception
type and the words that carry the fix: the script's path, the guard, Trio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pathlib import Path

TIMEOUT = 60
GUARD = 'if __name__ == "__main__":'


def run_program(
    tmp_path: Path, source: str, *args: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run ``source`` as a script in ``tmp_path``; return the outcome and its path."""
    script = tmp_path / "user_program.py"
    script.write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    return done, script


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


# The mistake: no `if __name__ == "__main__":`, so every worker that imports
# the script to find `square` starts a pool of its own.
UNGUARDED = """
    import sys
    import trio
    import triopool

    def square(x):
        return x * x

    async def with_open_pool():
        async with triopool.open_pool(1, start_method=sys.argv[2]) as pool:
            return await pool.run_sync(square, 3)

    async def with_run_sync():
        triopool.configure_default_pool(1, start_method=sys.argv[2])
        return await triopool.run_sync(square, 3)

    print(trio.run(with_open_pool if sys.argv[1] == "open_pool" else with_run_sync))
"""


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
@pytest.mark.parametrize("api", ["open_pool", "run_sync"])
def test_pool_started_by_an_unguarded_script_says_to_add_the_guard(
    tmp_path: Path, api: str, start_method: str
) -> None:
    done, script = run_program(tmp_path, UNGUARDED, api, start_method)
    assert done.returncode == 1
    error = last_line(done.stderr)
    # The parent's call fails: the function could not reach the worker,
    # because the worker could not import the script...
    assert error.startswith("triopool.SerializationError:"), done.stderr
    assert str(script) in error
    # ...because the script started a pool there: add the guard.
    assert f"triopool.{api}()" in error
    assert GUARD in error
    # Not the error of a pool that a worker's own workers failed in.
    assert "No module named '__mp_main__'" not in done.stderr
    assert done.stdout == ""


UNGUARDED_INITIALIZER = """
    import sys
    import trio
    import triopool

    def setup():
        pass

    async def main():
        async with triopool.open_pool(
            1, initializer=setup, max_start_failures=1, start_method=sys.argv[1]
        ) as pool:
            return await pool.run_sync(abs, -3)

    trio.run(main)
"""


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_initializer_of_an_unguarded_script_says_to_add_the_guard(
    tmp_path: Path, start_method: str
) -> None:
    done, script = run_program(tmp_path, UNGUARDED_INITIALIZER, start_method)
    assert done.returncode == 1
    error = last_line(done.stderr)
    assert error.startswith("triopool.BrokenPoolError:"), done.stderr
    assert str(script) in error
    assert "triopool.open_pool()" in error
    assert GUARD in error


# The script is guarded, but fails when a worker imports it: the parent's
# error says which file failed and with what.
FAILS_IN_WORKERS = """
    import json
    import sys
    import trio
    import triopool

    if __name__ != "__main__":
        raise LookupError("settings.toml not found")

    def square(x):
        return x * x

    async def main():
        async with triopool.open_pool(1, start_method=sys.argv[1]) as pool:
            for _ in range(2):
                try:
                    await pool.run_sync(square, 3)
                except triopool.SerializationError as exc:
                    cause = exc.__cause__
                    print(json.dumps({
                        "type": type(exc).__name__,
                        "message": str(exc),
                        "cause_type": type(cause).__name__,
                        "cause_message": str(cause),
                    }))

    if __name__ == "__main__":
        trio.run(main)
"""


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_main_script_failing_in_a_worker_names_the_file_and_the_error(
    tmp_path: Path, start_method: str
) -> None:
    done, script = run_program(tmp_path, FAILS_IN_WORKERS, start_method)
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    # Every task that needs the script gets the same answer (the script is
    # not run again after it failed).
    assert len(reports) == 2
    assert reports[0] == reports[1]
    report = reports[0]
    assert report["type"] == "SerializationError"
    assert report["cause_type"] == "RuntimeError"
    for text in (report["message"], report["cause_message"]):
        assert str(script) in text
        assert "LookupError: settings.toml not found" in text


# The pool used from asyncio, and from another thread's trio.run. Each case
# reports what it raised; the pool's own run goes on using the pool after.
WRONG_LOOPS = """
    import asyncio
    import json
    import trio
    import triopool

    def report(case, exc):
        print(json.dumps({
            "case": case,
            "type": type(exc).__name__,
            "message": str(exc),
        }))

    async def asyncio_open_pool():
        async with triopool.open_pool(1):
            pass

    async def asyncio_default_run_sync():
        await triopool.run_sync(abs, -1)

    def in_asyncio(case, fn):
        try:
            asyncio.run(fn())
        except BaseException as exc:
            report(case, exc)

    def in_other_run(case, fn):
        try:
            trio.run(fn)
        except BaseException as exc:
            report(case, exc)

    async def main():
        async with triopool.open_pool(1) as pool:

            async def asyncio_pool_run_sync():
                await pool.run_sync(abs, -1)

            async def trio_pool_run_sync():
                await pool.run_sync(abs, -1)

            async def trio_pool_map():
                await pool.map(abs, [-1, -2])

            async def trio_pool_events():
                async with pool.events():
                    pass

            await trio.to_thread.run_sync(
                in_asyncio, "asyncio Pool.run_sync", asyncio_pool_run_sync
            )
            await trio.to_thread.run_sync(
                in_other_run, "other run Pool.run_sync", trio_pool_run_sync
            )
            await trio.to_thread.run_sync(
                in_other_run, "other run Pool.map", trio_pool_map
            )
            await trio.to_thread.run_sync(
                in_other_run, "other run Pool.events", trio_pool_events
            )
            print(json.dumps({"case": "own run", "result": await pool.run_sync(abs, -2)}))

    if __name__ == "__main__":
        in_asyncio("asyncio open_pool", asyncio_open_pool)
        in_asyncio("asyncio triopool.run_sync", asyncio_default_run_sync)
        trio.run(main)
"""


def test_wrong_event_loop_or_run_gets_a_clear_runtime_error(tmp_path: Path) -> None:
    done, _ = run_program(tmp_path, WRONG_LOOPS)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    reports: dict[str, dict[str, Any]] = {}
    for line in done.stdout.splitlines():
        report = json.loads(line)
        reports[report.pop("case")] = report
    assert reports.keys() == {
        "asyncio open_pool",
        "asyncio triopool.run_sync",
        "asyncio Pool.run_sync",
        "other run Pool.run_sync",
        "other run Pool.map",
        "other run Pool.events",
        "own run",
    }
    for case in (
        "asyncio open_pool",
        "asyncio triopool.run_sync",
        "asyncio Pool.run_sync",
    ):
        report = reports[case]
        # Raised as itself, not wrapped in an ExceptionGroup.
        assert report["type"] == "RuntimeError", case
        # What is wrong, and the ways out.
        assert "needs Trio" in report["message"], case
        assert "called from asyncio" in report["message"], case
        assert "asyncio.to_thread(trio.run" in report["message"], case
        assert "start_guest_run" in report["message"], case
    for case in (
        "other run Pool.run_sync",
        "other run Pool.map",
        "other run Pool.events",
    ):
        report = reports[case]
        assert report["type"] == "RuntimeError", case
        assert "another thread's trio.run" in report["message"], case
    # The pool's own run never saw the mistakes.
    assert reports["own run"] == {"result": 2}

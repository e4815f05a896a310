"""What tasks print and log reaches the parent's stdout and stderr, whole.

Workers inherit the parent's fds 1 and 2. These tests run a program that uses
a pool in a subprocess, with stdout and stderr as pipes (block buffering, the
case where output goes missing or gets cut), and read what came out.
"""

from __future__ import annotations

import os
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest
import trio

if TYPE_CHECKING:
    from pathlib import Path

TIMEOUT = 90
# The directory holding the tests package.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import trio, triopool
    from tests import taskfuncs

    TASKS, LINES = 40, 30

    async def main():
        async with triopool.open_pool(
            3,
            start_method=sys.argv[2],
            initializer=taskfuncs.log_to_stderr_with_pid,
        ) as pool:
            async def one(task):
                await pool.run_sync(taskfuncs.print_lines, task, LINES)
                # The task's output is out before its result arrives.
                # One write per line here too (print writes the newline
                # separately when output is unbuffered: PYTHONUNBUFFERED).
                sys.stdout.write(f"result {task:03d}\\n")
                sys.stdout.flush()

            async with trio.open_nursery() as nursery:
                for task in range(TASKS):
                    nursery.start_soon(one, task)
            # Output of the last task is out even if its worker is then
            # killed, as leaving the block by an exception does.
            await pool.run_sync(taskfuncs.print_lines, 999, 1)
            raise SystemExit(0)

    trio.run(main)
    """
)


@pytest.mark.parametrize(
    ("start_method", "unbuffered"),
    [("spawn", False), ("spawn", True), ("forkserver", False), ("forkserver", True)],
)
async def test_prints_and_logging_reach_the_parent_whole(
    tmp_path: Path, start_method: str, unbuffered: bool
) -> None:
    # Forkserver workers are forked from the fork server, not started by the
    # parent: they must get the parent's fds 1 and 2 all the same, and the
    # server's own buffers must not leak into theirs.
    # Buffered: output held back could be lost or cut at buffer boundaries.
    # Unbuffered (PYTHONUNBUFFERED, as in many containers): print writes the
    # text and the newline separately, so lines could mix.
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    with trio.fail_after(TIMEOUT):
        completed = await trio.run_process(
            [sys.executable, "-c", SCRIPT, ROOT, start_method],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=tmp_path,
            env=env,
        )
    stdout = completed.stdout.decode()
    stderr = completed.stderr.decode()
    assert completed.returncode == 0, stderr
    lines = stdout.splitlines()
    printed = [line for line in lines if line.startswith("task ")]
    expected = {
        f"task {task:03d} line {line:03d} " + "x" * 200
        for task in range(40)
        for line in range(30)
    } | {"task 999 line 000 " + "x" * 200}
    # Every line arrived, once, uncut and unmixed with others.
    assert len(printed) == len(expected)
    assert set(printed) == expected
    assert all(line in expected or line.startswith("result ") for line in lines)
    # Each task's lines come before its result line.
    position = {line: index for index, line in enumerate(lines)}
    for task in range(40):
        last_line = position[f"task {task:03d} line 029 " + "x" * 200]
        assert last_line < position[f"result {task:03d}"]
    # Logging, routed by the initializer, went to stderr, tagged per worker.
    logged = [line for line in stderr.splitlines() if "tasks WARNING" in line]
    assert len(logged) == 41
    assert all(line.startswith("[worker ") for line in logged)
    assert {f"task {task:03d} logged" for task in [*range(40), 999]} == {
        line.split("WARNING ")[1] for line in logged
    }

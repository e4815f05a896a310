"""The ``triopool`` command line, driven as a user would: a real subprocess,
real stdin, stdout and stderr, and its exit status."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import pytest
import trio

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

# Generous: two cores shared with other jobs, and each run starts an
# interpreter plus its workers.
TIMEOUT = 90

MAPFUNCS = textwrap.dedent(
    """
    import os
    import signal
    import sys
    import time

    def double(x):
        return 2 * x

    def fail_on_3(x):
        if x == 3:
            raise ValueError(f"three is not allowed, got {x}")
        return x

    def die_on_3(x):
        if x == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    def sleep_on_2(x):
        if x == 2:
            time.sleep(60)
        return x

    def noisy(x):
        print(f"printed while handling {x}")
        print(f"to stderr while handling {x}", file=sys.stderr)
        return x

    def returns_a_set(x):
        return {x}

    def wait_for_marker(x):
        # Item 0 finishes only after the last item has run, so its result
        # comes after those of the items before the last one whenever results
        # are written as they complete.
        marker = os.path.join(os.path.dirname(__file__), "marker")
        if x == 0:
            deadline = time.monotonic() + 60
            while not os.path.exists(marker) and time.monotonic() < deadline:
                time.sleep(0.01)
        elif x == LAST:
            open(marker, "w").close()
        return x

    LAST = 5

    async def not_sync(x):
        return x
    """
)


class Result:
    def __init__(self, completed: subprocess.CompletedProcess[bytes]) -> None:
        self.returncode = completed.returncode
        self.stdout = completed.stdout.decode()
        self.stderr = completed.stderr.decode()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]

    def __repr__(self) -> str:
        return (
            f"<exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}>"
        )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "mapfuncs.py").write_text(MAPFUNCS)
    return tmp_path


async def triopool_cli(*args: str, stdin: bytes = b"", cwd: Path) -> Result:
    """Run ``python -m triopool ARGS`` with ``stdin`` and capture everything."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    with trio.fail_after(TIMEOUT):
        completed = await trio.run_process(
            [sys.executable, "-m", "triopool", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=cwd,
            env=env,
        )
    return Result(completed)


def lines(*values: object) -> bytes:
    return "".join(f"{json.dumps(value)}\n" for value in values).encode()


# map


async def test_map_writes_results_in_input_order(workdir: Path) -> None:
    result = await triopool_cli(
        "map", "mapfuncs:double", "--workers", "2", stdin=lines(*range(20)), cwd=workdir
    )
    assert result.returncode == 0, result
    assert result.records() == [{"input": n, "output": 2 * n} for n in range(20)]
    # stderr is not a terminal: no progress line unless asked for.
    assert result.stderr == ""


async def test_map_accepts_any_json_value_and_skips_blank_lines(
    workdir: Path,
) -> None:
    stdin = b'[1, 2]\n\n   \n"text"\n{"a": null}\n'
    result = await triopool_cli(
        "map", "builtins:repr", "--workers", "1", stdin=stdin, cwd=workdir
    )
    assert result.returncode == 0, result
    assert result.records() == [
        {"input": [1, 2], "output": "[1, 2]"},
        {"input": "text", "output": "'text'"},
        {"input": {"a": None}, "output": "{'a': None}"},
    ]


async def test_map_reads_a_file(workdir: Path) -> None:
    (workdir / "input.jsonl").write_bytes(lines(1, 2, 3))
    result = await triopool_cli(
        "map", "mapfuncs:double", "input.jsonl", "--workers", "1", cwd=workdir
    )
    assert result.returncode == 0, result
    assert [record["output"] for record in result.records()] == [2, 4, 6]


async def test_map_unordered_writes_results_as_they_complete(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "mapfuncs:wait_for_marker",
        "--unordered",
        "--workers",
        "2",
        stdin=lines(*range(6)),
        cwd=workdir,
    )
    assert result.returncode == 0, result
    outputs = [record["output"] for record in result.records()]
    assert sorted(outputs) == list(range(6))
    # Item 0 ends only once item 5 has run, on the other worker, after items
    # 1 to 4: in completion order it comes after at least four others (how
    # the last few results interleave depends on scheduling).
    assert 0 not in outputs[:4]


async def test_map_ordered_waits_for_the_slow_item(workdir: Path) -> None:
    # Three workers: 2 * 3 chunks may be read ahead, so item 5 is read while
    # item 0 still waits for it (with fewer, reading would wait for item 0).
    result = await triopool_cli(
        "map",
        "mapfuncs:wait_for_marker",
        "--workers",
        "3",
        stdin=lines(*range(6)),
        cwd=workdir,
    )
    assert result.returncode == 0, result
    assert [record["output"] for record in result.records()] == list(range(6))


async def test_map_bad_json_stops_with_the_line_number(workdir: Path) -> None:
    stdin = b"1\n\n{oops\n4\n"
    result = await triopool_cli(
        "map", "mapfuncs:double", "--workers", "1", stdin=stdin, cwd=workdir
    )
    assert result.returncode == 1, result
    assert result.records() == [{"input": 1, "output": 2}]
    assert "<stdin>:3: invalid JSON" in result.stderr
    assert "Traceback" not in result.stderr


async def test_map_bad_json_in_a_file_with_keep_going(workdir: Path) -> None:
    (workdir / "input.jsonl").write_bytes(b"1\n[2,\n3\n\xff\n")
    result = await triopool_cli(
        "map",
        "mapfuncs:double",
        "input.jsonl",
        "--keep-going",
        "--workers",
        "1",
        cwd=workdir,
    )
    assert result.returncode == 0, result
    assert [record["output"] for record in result.records()] == [2, 6]
    assert "input.jsonl:2: invalid JSON" in result.stderr
    assert "input.jsonl:4: invalid JSON" in result.stderr


async def test_map_failing_item_gives_an_error_line_and_status_1(
    workdir: Path,
) -> None:
    result = await triopool_cli(
        "map",
        "mapfuncs:fail_on_3",
        "--workers",
        "1",
        stdin=lines(1, 2, 3, 4),
        cwd=workdir,
    )
    assert result.returncode == 1, result
    assert result.records() == [
        {"input": 1, "output": 1},
        {"input": 2, "output": 2},
        {
            "input": 3,
            "error": {"type": "ValueError", "message": "three is not allowed, got 3"},
        },
    ]


async def test_map_keep_going_processes_every_item(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "mapfuncs:fail_on_3",
        "--keep-going",
        "--chunksize",
        "2",
        stdin=lines(*range(1, 7)),
        cwd=workdir,
    )
    assert result.returncode == 0, result
    records = result.records()
    assert [record["input"] for record in records] == [1, 2, 3, 4, 5, 6]
    assert records[2]["error"]["type"] == "ValueError"
    assert [record.get("output") for record in records] == [1, 2, None, 4, 5, 6]


async def test_map_worker_crash_with_keep_going(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "mapfuncs:die_on_3",
        "--keep-going",
        "--workers",
        "2",
        stdin=lines(*range(1, 8)),
        cwd=workdir,
    )
    assert result.returncode == 0, result
    records = result.records()
    assert [record["input"] for record in records] == list(range(1, 8))
    error = records[2]["error"]
    assert error["type"] == "triopool.BrokenWorkerError"
    assert "SIGKILL" in error["message"]
    assert all(
        record["output"] == record["input"]
        for i, record in enumerate(records)
        if i != 2
    )


async def test_map_worker_crash_without_keep_going_fails(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "mapfuncs:die_on_3",
        "--workers",
        "1",
        stdin=lines(1, 2, 3, 4),
        cwd=workdir,
    )
    assert result.returncode == 1, result
    assert [record["input"] for record in result.records()] == [1, 2, 3]


async def test_map_timeout_kills_the_item(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "mapfuncs:sleep_on_2",
        "--timeout",
        "0.5",
        "--keep-going",
        "--workers",
        "2",
        stdin=lines(1, 2, 3),
        cwd=workdir,
    )
    assert result.returncode == 0, result
    records = result.records()
    assert records[1]["error"]["type"] == "triopool.TimeLimitExceeded"
    assert [records[0]["output"], records[2]["output"]] == [1, 3]


async def test_map_result_that_is_not_json(workdir: Path) -> None:
    result = await triopool_cli(
        "map", "mapfuncs:returns_a_set", "--workers", "1", stdin=lines(1), cwd=workdir
    )
    assert result.returncode == 1, result
    (record,) = result.records()
    assert record["error"]["type"] == "TypeError"
    assert "not JSON serializable" in record["error"]["message"]


async def test_map_keeps_worker_prints_off_stdout(workdir: Path) -> None:
    result = await triopool_cli(
        "map", "mapfuncs:noisy", "--workers", "2", stdin=lines(*range(10)), cwd=workdir
    )
    assert result.returncode == 0, result
    assert [record["output"] for record in result.records()] == list(range(10))
    for n in range(10):
        assert f"printed while handling {n}\n" in result.stderr
        assert f"to stderr while handling {n}\n" in result.stderr


async def test_map_progress_line_on_request(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "mapfuncs:double",
        "--progress",
        "--workers",
        "1",
        stdin=lines(1, 2, 3),
        cwd=workdir,
    )
    assert result.returncode == 0, result
    last = result.stderr.splitlines()[-1]
    assert last.startswith("map  3/3  failed 0"), result
    assert "workers alive" in last


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nosuchmodule:double", "cannot import module 'nosuchmodule'"),
        (
            "mapfuncs:nosuchfunction",
            "module 'mapfuncs' has no function 'nosuchfunction'",
        ),
        ("mapfuncs", "expected MODULE:FUNCTION, got 'mapfuncs'"),
        ("mapfuncs:LAST", "mapfuncs:LAST is not callable"),
        ("mapfuncs:not_sync", "is an async function"),
    ],
)
async def test_map_bad_target(workdir: Path, target: str, message: str) -> None:
    result = await triopool_cli("map", target, stdin=lines(1), cwd=workdir)
    assert result.returncode == 2, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


async def test_map_missing_file(workdir: Path) -> None:
    result = await triopool_cli("map", "mapfuncs:double", "missing.jsonl", cwd=workdir)
    assert result.returncode == 2, result
    assert "cannot read missing.jsonl: No such file or directory" in result.stderr


async def test_map_bad_option(workdir: Path) -> None:
    result = await triopool_cli(
        "map", "mapfuncs:double", "--workers", "0", stdin=lines(1), cwd=workdir
    )
    assert result.returncode == 2, result
    assert "--workers: must be >= 1, got 0" in result.stderr


async def test_help(workdir: Path) -> None:
    result = await triopool_cli("map", "--help", cwd=workdir)
    assert result.returncode == 0, result
    for option in ("MODULE:FUNCTION", "--unordered", "--chunksize", "--timeout"):
        assert option in result.stdout
    result = await triopool_cli("--help", cwd=workdir)
    assert result.returncode == 0, result
    assert "demo" in result.stdout
    assert "map" in result.stdout


# demo


async def test_demo_small(workdir: Path) -> None:
    result = await triopool_cli("demo", "--tasks", "4", "--workers", "2", cwd=workdir)
    assert result.returncode == 0, result
    assert "speed-up:" in result.stdout
    assert "results:    4 of 4 match the sequential run" in result.stdout
    assert "started 2, recycled 0, lost 0" in result.stdout
    # The progress line, written as lines since stderr is not a terminal.
    assert "sequential  4/4" in result.stderr
    assert "pool  4/4 tasks" in result.stderr


async def test_demo_chaos_and_recycling(workdir: Path) -> None:
    result = await triopool_cli(
        "demo",
        "--tasks",
        "6",
        "--workers",
        "2",
        "--chaos",
        "0.34",
        "--max-tasks-per-child",
        "1",
        cwd=workdir,
    )
    assert result.returncode == 0, result
    assert "results:    4 of 4 match the sequential run" in result.stdout
    assert "chaos:      2 of 2 tasks killed their worker" in result.stdout
    assert "BrokenWorkerError" in result.stdout
    assert "recycled 4, lost 2" in result.stdout


async def test_console_script_is_installed(workdir: Path) -> None:
    script = os.path.join(os.path.dirname(sys.executable), "triopool")
    if not await trio.Path(script).exists():
        pytest.skip("triopool is not installed with its scripts here")
    with trio.fail_after(TIMEOUT):
        completed = await trio.run_process(
            [script, "--version"], capture_stdout=True, check=False, cwd=workdir
        )
    assert completed.returncode == 0
    assert completed.stdout.decode().startswith("triopool ")
    # The script, unlike python -m, does not put the current directory on
    # sys.path by itself; map must still find modules there.
    with trio.fail_after(TIMEOUT):
        completed = await trio.run_process(
            [script, "map", "mapfuncs:double", "--workers", "1"],
            stdin=lines(1, 2),
            capture_stdout=True,
            check=False,
            cwd=workdir,
        )
    assert completed.returncode == 0
    assert completed.stdout.decode().splitlines() == [
        '{"input": 1, "output": 2}',
        '{"input": 2, "output": 4}',
    ]

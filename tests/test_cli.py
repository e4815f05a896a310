"""The ``triopool`` command line, driven as a user would: a real subprocess,
real stdin, stdout and stderr, and its exit status."""

from __future__ import annotations

import functools
import json
import os
import pty
import re
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import pytest
import trio

if TYPE_CHECKING:
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

    def nan_on_2(x):
        return float("nan") if x == 2 else x

    def pid(x):
        return os.getpid()

    def noisy_die_on_3(x):
        print(f"printed while handling {x}")
        if x == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.2)
        return x

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


# Put on PYTHONPATH, it makes every process but the first (triopool itself)
# exit at start: every worker start fails, and the pool breaks.
BREAK_WORKERS = textwrap.dedent(
    """
    import os
    first = os.environ.setdefault("TEST_FIRST_PID", str(os.getpid()))
    if first != str(os.getpid()):
        os._exit(3)
    """
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "mapfuncs.py").write_text(MAPFUNCS)
    # A module that exists but imports one that does not: the message must
    # blame the import, not say the module is missing.
    (tmp_path / "needsmodx.py").write_text("import needsmod\n")
    return tmp_path


@pytest.fixture
def broken_workers(tmp_path: Path) -> dict[str, str]:
    """Environment variables under which no worker can start."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BREAK_WORKERS)
    return {"PYTHONPATH": str(site)}


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("TEST_FIRST_PID", None)
    env.update(extra or {})
    return env


async def triopool_cli(
    *args: str, stdin: bytes = b"", cwd: Path, env: dict[str, str] | None = None
) -> Result:
    """Run ``python -m triopool ARGS`` with ``stdin`` and capture everything."""
    env = cli_env(env)
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
        (
            "needsmodx:double",
            "importing module 'needsmodx' failed: ModuleNotFoundError: "
            "No module named 'needsmod'",
        ),
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


def strict_json(line: str) -> Any:
    """``json.loads`` that refuses NaN and the infinities, as strict readers do."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in {line!r}")

    return json.loads(line, parse_constant=refuse)


async def test_map_writes_only_strict_json(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "mapfuncs:nan_on_2",
        "--keep-going",
        "--workers",
        "1",
        stdin=b"1\n2\nNaN\n3\n",
        cwd=workdir,
    )
    assert result.returncode == 0, result
    records = [strict_json(line) for line in result.stdout.splitlines()]
    assert [record["input"] for record in records] == [1, 2, 3]
    assert records[0]["output"] == 1
    assert records[2]["output"] == 3
    error = records[1]["error"]
    assert error["type"] == "ValueError"
    assert "not JSON serializable" in error["message"]
    assert "NaN" in error["message"]
    # A NaN in the input is not JSON either: no value to echo.
    assert "<stdin>:3: invalid JSON: NaN is not valid JSON" in result.stderr


async def test_map_max_tasks_per_child_replaces_workers(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "mapfuncs:pid",
        "--max-tasks-per-child",
        "2",
        "--workers",
        "1",
        stdin=lines(*range(6)),
        cwd=workdir,
    )
    assert result.returncode == 0, result
    pids = [record["output"] for record in result.records()]
    # One worker at a time, retired after every two items.
    assert len(pids) == 6
    assert [pids[i] == pids[i + 1] for i in range(5)] == [
        True,
        False,
        True,
        False,
        True,
    ]
    assert len(set(pids)) == 3


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_map_broken_pool_is_reported_once(
    workdir: Path, broken_workers: dict[str, str], workers: str
) -> None:
    # With two workers several chunks are in flight when the pool breaks, and
    # each fails with BrokenPoolError: still one message, no traceback.
    result = await triopool_cli(
        "map",
        "math:factorial",
        "--workers",
        workers,
        stdin=lines(*range(20)),
        cwd=workdir,
        env=broken_workers,
    )
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.count("triopool map: error: the pool broke:") == 1, result
    assert "worker starts failed in a row" in result.stderr
    assert "Traceback" not in result.stderr
    assert "ExceptionGroup" not in result.stderr


async def test_map_stops_quietly_when_stdout_closes(workdir: Path) -> None:
    # ``triopool map ... | head -1``: the reader goes away after one line.
    env = cli_env()
    errors = workdir / "stderr"
    with trio.fail_after(TIMEOUT), errors.open("wb") as stderr:
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    [sys.executable, "-m", "triopool", "map", "mapfuncs:double"],
                    stdin=lines(*range(100_000)),
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    check=False,
                    cwd=workdir,
                    env=env,
                )
            )
            assert process.stdout is not None
            received = b""
            while b"\n" not in received:
                chunk = await process.stdout.receive_some()
                assert chunk, "no output"
                received += chunk
            await process.stdout.aclose()
    assert received.split(b"\n")[0] == b'{"input": 0, "output": 0}'
    assert process.returncode == 1
    assert errors.read_text() == ""


def screen(raw: str) -> list[str]:
    """The lines a terminal shows for ``raw``: carriage returns go back to
    the start of the line and ``ESC [ K`` erases to its end."""
    shown: list[str] = []
    line: list[str] = []
    column = 0
    index = 0
    while index < len(raw):
        if raw.startswith("\x1b[K", index):
            del line[column:]
            index += 3
            continue
        char = raw[index]
        index += 1
        if char == "\r":
            column = 0
        elif char == "\n":
            shown.append("".join(line))
            line, column = [], 0
        elif column < len(line):
            line[column] = char
            column += 1
        else:
            line.append(char)
            column += 1
    if line:
        shown.append("".join(line))
    return shown


def read_terminal(fd: int) -> bytes:
    """Everything written to the terminal whose master side is ``fd``."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every process holding the terminal is gone
            return data
        if not chunk:
            return data
        data += chunk


async def test_map_on_a_terminal_keeps_the_status_line_apart(workdir: Path) -> None:
    """stdout and stderr on one terminal, as when run interactively: the
    progress line shows by default, and results, worker prints and the
    pool's log records each get lines of their own."""
    master, terminal = pty.openpty()
    try:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                output: list[bytes] = []

                async def read() -> None:
                    output.append(await trio.to_thread.run_sync(read_terminal, master))

                nursery.start_soon(read)
                try:
                    completed = await trio.run_process(
                        [
                            sys.executable,
                            "-m",
                            "triopool",
                            "map",
                            "mapfuncs:noisy_die_on_3",
                            "--keep-going",
                            "--workers",
                            "2",
                        ],
                        stdin=lines(*range(1, 7)),
                        stdout=terminal,
                        stderr=terminal,
                        check=False,
                        cwd=workdir,
                        env=cli_env(),
                    )
                finally:
                    # The reader sees EIO once no process holds the terminal.
                    os.close(terminal)
                    terminal = -1
    finally:
        if terminal != -1:
            os.close(terminal)
        os.close(master)
    raw = output[0].decode(errors="replace")
    assert completed.returncode == 0, raw
    shown = [line for line in screen(raw) if line.strip()]
    status = [line for line in shown if line.startswith("map  ")]
    other = [line for line in shown if not line.startswith("map  ")]
    assert status, raw  # on by default on a terminal
    assert status[-1].startswith("map  6/6  failed 1"), raw
    for line in status:
        assert "{" not in line, raw
        assert "printed" not in line, raw
        assert "died" not in line, raw
    records = [json.loads(line) for line in other if line.startswith("{")]
    assert sorted(record["input"] for record in records) == list(range(1, 7)), raw
    printed = {line for line in other if line.startswith("printed while")}
    assert {f"printed while handling {n}" for n in (1, 2, 4, 5, 6)} <= printed, raw
    logged = [line for line in other if re.fullmatch(r"worker \d+ died .*", line)]
    assert logged, raw
    for line in other:  # every line is whole, and one of these kinds
        assert line.startswith("{") or line in printed or line in logged, (line, raw)


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


async def test_demo_broken_pool_is_reported_once(
    workdir: Path, broken_workers: dict[str, str]
) -> None:
    result = await triopool_cli(
        "demo", "--tasks", "6", "--workers", "2", cwd=workdir, env=broken_workers
    )
    assert result.returncode == 1, result
    assert result.stderr.count("triopool demo: error: the pool broke:") == 1, result
    assert "expected" not in result.stderr
    assert "Traceback" not in result.stderr


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

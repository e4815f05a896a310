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

import triopool
from triopool import _cli_worker, _demo
from triopool._cli.demo import busy_note
from triopool._cli.map import ChunkSizer

from . import workerfuncs

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

    def describe(x):
        return [type(x).__name__, x]

    def rendezvous(x):
        # Returns once two items have started (or after 60 s): only items
        # that run at the same time, on different workers, return quickly.
        here = os.path.dirname(__file__)
        open(os.path.join(here, f"started-{x}"), "w").close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(name.startswith("started-") for name in os.listdir(here)) >= 2:
                break
            time.sleep(0.01)
        return os.getpid()

    def trio_modules(x):
        return sorted(m for m in sys.modules if m.split(".")[0] in ("trio", "attrs"))

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


# map: xargs and parallel conventions


async def test_map_passes_each_line_as_a_str_by_default(workdir: Path) -> None:
    # As xargs -d '\n' and parallel do: the line is the argument, without its
    # line ending (LF or CRLF); empty lines are skipped, spaces kept.
    stdin = b"a b\n\n  \nc\r\n\xc3\xa9\n\xff\n[1]\nlast"
    result = await triopool_cli(
        "map", "mapfuncs:describe", "--keep-going", "-j", "2", stdin=stdin, cwd=workdir
    )
    assert result.returncode == 1, result
    assert [record["output"] for record in result.records()] == [
        ["str", "a b"],
        ["str", "  "],
        ["str", "c"],
        ["str", "\u00e9"],
        ["str", "[1]"],
        ["str", "last"],
    ]
    assert result.stderr.splitlines() == [
        "triopool map: <stdin>:6: not UTF-8: invalid start byte (column 1)",
        "triopool map: 1 of 7 items failed",
    ]


async def test_map_jobs_sets_the_number_of_workers(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "mapfuncs:describe",
        "-j",
        "3",
        "--progress",
        stdin=b"x\n",
        cwd=workdir,
    )
    assert result.returncode == 0, result
    last = result.stderr.splitlines()[-1]
    assert re.search(r"workers alive \d+/3 ", last), last


async def test_map_short_input_spreads_over_the_workers(workdir: Path) -> None:
    # Two items, two workers, default (auto) chunks: each item gets a worker
    # of its own (in one chunk, the first would wait 60 s for the second).
    result = await triopool_cli(
        "map", "mapfuncs:rendezvous", "-j", "2", stdin=b"a\nb\n", cwd=workdir
    )
    assert result.returncode == 0, result
    pids = [record["output"] for record in result.records()]
    assert len(pids) == 2
    assert pids[0] != pids[1]


async def test_map_auto_chunks_grow_for_fast_items(workdir: Path) -> None:
    count = 3000
    result = await triopool_cli(
        "map",
        "builtins:len",
        "-j",
        "1",
        "--progress",
        stdin=b"x\n" * count,
        cwd=workdir,
    )
    assert result.returncode == 0, result
    assert result.records() == [{"input": "x", "output": 1}] * count
    last = result.stderr.splitlines()[-1]
    match = re.search(r"  chunk (\d+)  ", last)
    assert match, last
    assert 1 < int(match[1]) <= ChunkSizer.LIMIT, last


async def test_map_fixed_chunksize_and_bad_values(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "builtins:len",
        "--chunksize",
        "7",
        "-j",
        "1",
        "--progress",
        stdin=b"x\n" * 20,
        cwd=workdir,
    )
    assert result.returncode == 0, result
    assert "  chunk 7  " in result.stderr.splitlines()[-1]
    result = await triopool_cli(
        "map", "builtins:len", "--chunksize", "big", stdin=b"x\n", cwd=workdir
    )
    assert result.returncode == 2, result
    assert "--chunksize: expected an integer, got 'big' (or 'auto')" in result.stderr


async def test_worker_side_modules_import_neither_trio_nor_attrs() -> None:
    # What workers of the command line run lives outside triopool._cli,
    # whose import pulls trio in.
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            outcomes, _ = await pool.run_sync(
                _cli_worker.call_lines, len, [b"abc"], False
            )
            count = await pool.run_sync(_demo.count_primes, 2, 20)
            modules = await pool.run_sync(workerfuncs.loaded_modules)
    assert outcomes == [(_cli_worker.OK, '{"input": "abc", "output": 3}')]
    assert count == 8
    assert {"triopool._cli_worker", "triopool._demo"} <= set(modules)
    assert [m for m in modules if m.split(".")[0] in ("trio", "attrs")] == []


@pytest.mark.parametrize(
    "module",
    [
        "triopool._cli",
        "triopool._cli.parser",
        "triopool._cli.terminal",
        "triopool._cli.demo",
        "triopool._cli.map",
        "triopool.__main__",
    ],
)
async def test_cli_modules_import_on_their_own(module: str) -> None:
    # Each module imported first, in a fresh interpreter: a cycle between
    # them would fail for one of these orders.
    with trio.fail_after(TIMEOUT):
        completed = await trio.run_process(
            [sys.executable, "-c", f"import {module}"],
            capture_stderr=True,
            check=False,
            env=cli_env(),
        )
    assert completed.returncode == 0, completed.stderr.decode()


def test_chunk_sizer_starts_small_grows_by_doubling_and_shrinks_at_once() -> None:
    sizer = ChunkSizer()
    assert sizer.size == 1
    # Fast items (10 us): the ideal is 2000 items; growth is at most double
    # the chunk measured.
    sizer.record(1, 10e-6)
    assert sizer.size == 2
    sizer.record(2, 20e-6)
    assert sizer.size == 4
    # A small chunk (the input's tail) measured later does not shrink it.
    sizer.record(1, 10e-6)
    assert sizer.size == 4
    for _ in range(20):
        sizer.record(sizer.size, sizer.size * 10e-6)
    assert abs(sizer.size - ChunkSizer.TARGET / 10e-6) <= 1
    # Items turn slow (5 ms): at once about TARGET seconds per chunk.
    sizer.record(100, 0.5)
    assert abs(sizer.size - ChunkSizer.TARGET / 5e-3) <= 1
    # Slower than TARGET: one item.
    sizer.record(4, 4.0)
    assert sizer.size == 1
    # Instant items: capped at LIMIT.
    for _ in range(20):
        sizer.record(sizer.size, 0.0)
    assert sizer.size == ChunkSizer.LIMIT
    sizer.failed()
    assert sizer.size == 1


def test_fixed_chunk_size_stays() -> None:
    sizer = ChunkSizer(fixed=500)
    sizer.record(500, 100.0)
    sizer.failed()
    assert sizer.size == 500


# map


async def test_map_writes_results_in_input_order(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "--json",
        "mapfuncs:double",
        "--workers",
        "2",
        stdin=lines(*range(20)),
        cwd=workdir,
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
        "map", "--json", "builtins:repr", "--workers", "1", stdin=stdin, cwd=workdir
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
        "map", "--json", "mapfuncs:double", "input.jsonl", "--workers", "1", cwd=workdir
    )
    assert result.returncode == 0, result
    assert [record["output"] for record in result.records()] == [2, 4, 6]


async def test_map_unordered_writes_results_as_they_complete(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "--json",
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
        "--json",
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
        "map", "--json", "mapfuncs:double", "--workers", "1", stdin=stdin, cwd=workdir
    )
    assert result.returncode == 1, result
    assert result.records() == [{"input": 1, "output": 2}]
    assert "<stdin>:3: invalid JSON" in result.stderr
    assert "triopool map: stopped at the first failure (<stdin>:3)" in result.stderr
    assert "Traceback" not in result.stderr


async def test_map_bad_json_in_a_file_with_keep_going(workdir: Path) -> None:
    (workdir / "input.jsonl").write_bytes(b"1\n[2,\n3\n\xff\n")
    result = await triopool_cli(
        "map",
        "--json",
        "mapfuncs:double",
        "input.jsonl",
        "--keep-going",
        "--workers",
        "1",
        cwd=workdir,
    )
    # Every line was processed, and two failed: status 1, and the count.
    assert result.returncode == 1, result
    assert [record["output"] for record in result.records()] == [2, 6]
    assert "input.jsonl:2: invalid JSON" in result.stderr
    assert "input.jsonl:4: not UTF-8: invalid start byte (column 1)" in result.stderr
    assert result.stderr.splitlines()[-1] == "triopool map: 2 of 4 items failed"


async def test_map_failing_item_gives_an_error_line_and_status_1(
    workdir: Path,
) -> None:
    result = await triopool_cli(
        "map",
        "--json",
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
        "--json",
        "mapfuncs:fail_on_3",
        "--keep-going",
        "--chunksize",
        "2",
        stdin=lines(*range(1, 7)),
        cwd=workdir,
    )
    # Like xargs and parallel: processing every item does not hide failures.
    assert result.returncode == 1, result
    assert result.stderr == "triopool map: 1 of 6 items failed\n"
    records = result.records()
    assert [record["input"] for record in records] == [1, 2, 3, 4, 5, 6]
    assert records[2]["error"]["type"] == "ValueError"
    assert [record.get("output") for record in records] == [1, 2, None, 4, 5, 6]


async def test_map_worker_crash_with_keep_going(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "--json",
        "mapfuncs:die_on_3",
        "--keep-going",
        # A worker's death fails its whole chunk: one item each here.
        "--chunksize",
        "1",
        "--workers",
        "2",
        stdin=lines(*range(1, 8)),
        cwd=workdir,
    )
    assert result.returncode == 1, result
    assert result.stderr.splitlines()[-1] == "triopool map: 1 of 7 items failed"
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
        "--json",
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
        "--json",
        "mapfuncs:sleep_on_2",
        "--timeout",
        "0.5",
        "--keep-going",
        "--workers",
        "2",
        stdin=lines(1, 2, 3),
        cwd=workdir,
    )
    assert result.returncode == 1, result
    assert result.stderr.splitlines()[-1] == "triopool map: 1 of 3 items failed"
    records = result.records()
    # With --timeout, auto chunks hold one item: only the slow one fails.
    assert records[1]["error"]["type"] == "triopool.TimeLimitExceeded"
    assert [records[0]["output"], records[2]["output"]] == [1, 3]


async def test_map_result_that_is_not_json(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "--json",
        "mapfuncs:returns_a_set",
        "--workers",
        "1",
        stdin=lines(1),
        cwd=workdir,
    )
    assert result.returncode == 1, result
    (record,) = result.records()
    assert record["error"]["type"] == "TypeError"
    assert "not JSON serializable" in record["error"]["message"]


async def test_map_keeps_worker_prints_off_stdout(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "--json",
        "mapfuncs:noisy",
        "--workers",
        "2",
        stdin=lines(*range(10)),
        cwd=workdir,
    )
    assert result.returncode == 0, result
    assert [record["output"] for record in result.records()] == list(range(10))
    for n in range(10):
        assert f"printed while handling {n}\n" in result.stderr
        assert f"to stderr while handling {n}\n" in result.stderr


async def test_map_progress_line_on_request(workdir: Path) -> None:
    result = await triopool_cli(
        "map",
        "--json",
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
        "map",
        "--json",
        "mapfuncs:double",
        "--workers",
        "0",
        stdin=lines(1),
        cwd=workdir,
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
        "--json",
        "mapfuncs:nan_on_2",
        "--keep-going",
        "--workers",
        "1",
        stdin=b"1\n2\nNaN\n3\n",
        cwd=workdir,
    )
    assert result.returncode == 1, result
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
        "--json",
        "mapfuncs:pid",
        "--max-tasks-per-child",
        "2",
        # The limit counts chunks: one item each.
        "--chunksize",
        "1",
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
        "--json",
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
                    [
                        sys.executable,
                        "-m",
                        "triopool",
                        "map",
                        "--json",
                        "mapfuncs:double",
                    ],
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
                            "--json",
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
    assert completed.returncode == 1, raw
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
    summary = "triopool map: 1 of 6 items failed"
    assert other[-1] == summary, raw
    for line in other[:-1]:  # every line is whole, and one of these kinds
        assert line.startswith("{") or line in printed or line in logged, (line, raw)


# demo


def demo_fields(stdout: str) -> dict[str, str]:
    """The demo's summary as ``{label: text}``; continuation lines (indented)
    are joined to their label's text."""
    fields: dict[str, str] = {}
    label = ""
    for line in stdout.splitlines():
        if line.startswith(" ") and label:
            fields[label] += " " + line.strip()
            continue
        label, colon, text = line.partition(":")
        assert colon, line
        fields[label] = text.strip()
    return fields


def demo_numbers(pattern: str, text: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return [float(group) for group in match.groups()]


async def test_demo_small(workdir: Path) -> None:
    result = await triopool_cli("demo", "--tasks", "4", "-j", "2", cwd=workdir)
    assert result.returncode == 0, result
    fields = demo_fields(result.stdout)
    assert fields["results"] == "4 of 4 match the sequential run (4,619 primes)"
    (pool_time,) = demo_numbers(r"^4 tasks in +([\d.]+) s", fields["pool"])
    # The heartbeat: counted in each run, and never late by more than the run
    # lasted (it is a measurement, not a claim: no bound on a busy machine).
    period = demo_numbers(r"wake every (\d+) ms", fields["heartbeat"])[0] / 1000
    ticks, late = demo_numbers(
        r"pool run: +(\d+) ticks?, at most ([\d.]+) ms late", fields["heartbeat"]
    )
    assert 0 <= late / 1000 <= pool_time + period
    # At most one per period, plus one due before the run and one at its end.
    assert ticks <= pool_time / period + 2
    if pool_time >= 3 * period:
        assert ticks >= 1
    sequential_ticks, sequential_late = demo_numbers(
        r"sequential run: +(\d+) ticks?, at most ([\d.]+) ms late",
        fields["heartbeat"],
    )
    assert sequential_ticks >= 0
    assert sequential_late >= 0
    # The cancelled task: its worker was killed (lost) and replaced (started).
    started_after, up_after, *counters = demo_numbers(
        r"new one started ([\d.]+) ms later and was up after ([\d.]+) ms"
        r" \(workers_started (\d+) -> (\d+), workers_lost (\d+) -> (\d+)\)",
        fields["cancel"],
    )
    assert 0 <= started_after <= up_after
    assert counters == [2, 3, 0, 1]
    assert fields["workers"] == "started 3, recycled 0, lost 1, start failures 0"
    assert fields["tasks"] == "completed 4, failed 0, cancelled 1"
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
    fields = demo_fields(result.stdout)
    assert fields["results"].startswith("4 of 4 match the sequential run")
    assert fields["chaos"].startswith("2 of 2 tasks killed their worker")
    assert fields["chaos"].count("BrokenWorkerError") == 2
    # Four tasks recycled their worker, two lost theirs, and the cancelled
    # task lost one more, which was replaced.
    counters = demo_numbers(
        r"\(workers_started (\d+) -> (\d+), workers_lost (\d+) -> (\d+)\)",
        fields["cancel"],
    )
    assert counters[1] == counters[0] + 1
    assert counters[2:] == [2, 3]
    assert "recycled 4, lost 3" in fields["workers"]
    assert fields["tasks"] == "completed 4, failed 2, cancelled 1"


@pytest.mark.parametrize(
    ("sequential_cpu", "workers_cpu", "pool_time", "busy"),
    [
        (0.98, 1.8, 1.0, False),  # idle: one CPU, then both
        (0.6, 1.8, 1.0, True),  # something took a third of the sequential CPU
        (0.98, 1.0, 1.0, True),  # the workers got half of two CPUs
        (0.98, 0.2, 0.3, False),  # too short a pool run to judge
    ],
)
def test_demo_busy_note_comes_from_cpu_time_measured(
    sequential_cpu: float, workers_cpu: float, pool_time: float, busy: bool
) -> None:
    note = busy_note(
        sequential_cpu=sequential_cpu,
        sequential_time=1.0,
        workers_cpu=workers_cpu,
        pool_time=pool_time,
        workers=2,
        cpus=2,
    )
    assert (note is not None) == busy
    if note is not None:
        assert f"the sequential run got {sequential_cpu:.2f} of a CPU" in note
        assert f"the pool's workers {workers_cpu / pool_time:.2f} of 2" in note


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
            [script, "map", "--json", "mapfuncs:double", "-j", "1"],
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

"""The benchmark suite's quick mode runs, and so does the map benchmark's
(``nox -s bench_map``), so that their code cannot rot.

No timing is asserted: only that every benchmark ran for triopool and the
peers that are installed, and that the report was written. Peers missing from
the environment (the tests session installs none of them) are skipped by the
suite itself.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import pytest
import trio

if TYPE_CHECKING:
    from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_report(directory: Path) -> tuple[str, dict[str, Any]]:
    (report,) = directory.glob("bench-quick-*.json")
    (table,) = directory.glob("bench-quick-*.md")
    return table.read_text(), json.loads(report.read_text())


@pytest.mark.slow
async def test_quick_benchmark_reports_every_metric(tmp_path: Path) -> None:
    with trio.fail_after(300):
        result = await trio.run_process(
            [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    assert "| trivial round trip (median) |" in result.stdout.decode()
    table, data = await trio.to_thread.run_sync(_read_report, tmp_path)
    assert "triopool" in table
    metrics = data["summary"]["metrics"]
    pools = set(metrics["latency"]["pools"])
    assert {"triopool", "concurrent.futures", "multiprocessing.Pool"} <= pools
    assert "floor (raw pipe + pickle)" in pools
    for key in (
        "latency",
        "parent_cpu",
        "tasks_2",
        "tasks_64",
        "echo",
        "map",
        "cpu",
        "recycle",
        "first_2",
        "busy_2",
        "shutdown",
        "worker_rss",
        "parent_per_worker",
    ):
        value = metrics[key]["pools"]["triopool"]["median"]
        assert isinstance(value, float), (key, value)
        assert value > 0 or key == "parent_per_worker", (key, value)
    # The burst after an idle period, for both start methods.
    burst = {row["start_method"]: row for row in data["burst"]}
    assert set(burst) == {"spawn", "forkserver"}
    for row in burst.values():
        assert row["first_ms"] > 0
        # All workers left idle before the first burst, and again one.
        assert row["workers_stopped"] >= row["workers"] + 1
    assert "Burst after an idle period" in table


@pytest.mark.slow
async def test_quick_map_benchmark_reports_every_chunksize() -> None:
    with trio.fail_after(300):
        result = await trio.run_process(
            [sys.executable, "bench/map_vs_multiprocessing.py", "--quick"],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("2000 trivial items, 2 workers")
    rows = {}
    table_end = lines.index("")
    for line in lines[2:table_end]:
        chunksize, *columns = line.split()
        assert len(columns) == 6, line
        rows[chunksize] = [float(value.replace(",", "")) for value in columns]
    assert set(rows) == {"default", "1", "256"}
    for values in rows.values():
        assert all(value > 0 for value in values), rows
    cpu = [line.split() for line in lines[table_end + 3 :]]
    # ... input name, library, seconds, ideal, of ideal, tail
    libraries = [row[-5] for row in cpu]
    assert libraries == ["triopool", "multiprocessing"] * 2, lines
    for row in cpu:
        seconds, ideal, tail = float(row[-4]), float(row[-3]), float(row[-1])
        assert seconds > 0, row
        assert ideal > 0, row
        assert tail >= 0, row


async def test_quick_cluster_benchmark_reports_the_local_pool() -> None:
    with trio.fail_after(120):
        result = await trio.run_process(
            [sys.executable, "bench/cluster.py", "--quick", "--engines", "local"],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in result.stdout.decode().splitlines()
        if line.startswith("| local ")
    ]
    assert len(rows) == 1, result.stdout.decode()
    _, trivial, argument, put, ratio = rows[0]
    assert float(trivial) >= 0
    assert float(argument) >= 0
    assert float(put) >= 0
    assert ratio.endswith("x")

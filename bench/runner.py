"""Runs every benchmark for every pool, interleaved, and reports medians.

Each round runs every pool once through every workload, in a rotated order,
so that a slow moment of the machine spreads over all pools instead of
landing on one. The table shows the median over the rounds and, in
parentheses, how many times better triopool is than that column (above 1:
triopool wins; the floor's is below 1 by construction).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

from bench import adapters, burst, workloads

MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does."""

    rounds: int
    latency_calls: int
    concurrency: tuple[int, ...]
    tasks_per_point: int
    echo_bytes: int
    echo_reps: int
    map_items: int
    cpu_tasks: int
    cpu_seconds: float
    recycle_tasks: int
    cold_workers: tuple[int, ...]
    memory_workers: int


FULL = Sizes(
    rounds=3,
    latency_calls=400,
    concurrency=(1, 2, 4, 8, 16, 32, 64),
    tasks_per_point=1536,
    echo_bytes=64 * MIB,
    echo_reps=2,
    map_items=2000,
    cpu_tasks=16,
    cpu_seconds=0.05,
    recycle_tasks=32,
    cold_workers=(2, 8),
    memory_workers=8,
)
QUICK = Sizes(
    rounds=1,
    latency_calls=10,
    concurrency=(2, 64),
    tasks_per_point=128,
    echo_bytes=MIB,
    echo_reps=1,
    map_items=32,
    cpu_tasks=4,
    cpu_seconds=0.01,
    recycle_tasks=4,
    cold_workers=(2,),
    memory_workers=2,
)

# (key, label, unit, higher is better)
METRICS: list[tuple[str, str, str, bool]] = [
    ("latency", "trivial round trip (median)", "µs", False),
    # CPU time the calling process spends per round trip (all its threads):
    # steadier than wall time on a busy machine.
    ("parent_cpu", "parent CPU per trivial round trip", "µs", False),
    ("tasks_2", "tiny tasks/s, 2 callers", "/s", True),
    ("tasks_64", "tiny tasks/s, 64 callers", "/s", True),
    ("echo", "64 MiB echo", "MiB/s", True),
    ("map", "map, tiny items", "items/s", True),
    ("cpu", "CPU efficiency, 16 x 50 ms on 2 workers", "of ideal", True),
    ("recycle", "recycling, 1 task per worker, 8 in flight", "/s", True),
    ("first_2", "cold start, 2 workers: first result", "ms", False),
    ("busy_2", "cold start, 2 workers: all busy", "ms", False),
    ("first_8", "cold start, 8 workers: first result", "ms", False),
    ("busy_8", "cold start, 8 workers: all busy", "ms", False),
    ("shutdown", "shutdown, 2 idle workers", "ms", False),
    ("worker_rss", "worker RSS", "MiB", False),
    ("worker_extra", "worker RSS over a bare interpreter", "MiB", False),
    ("parent_per_worker", "parent memory per worker", "KiB", False),
]


# One round of one pool.


async def _warm_async(adapter: Any, sizes: Sizes, out: dict[str, Any]) -> float:
    async with adapter.open(2) as pool:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(pool.call, workloads.noop)
        latencies = []
        cpu = time.process_time()
        for _ in range(sizes.latency_calls):
            start = time.perf_counter()
            await pool.call(workloads.noop)
            latencies.append(time.perf_counter() - start)
        out["parent_cpu"] = (time.process_time() - cpu) / sizes.latency_calls * 1e6
        out["latencies"] = latencies
        sweep = {}
        for callers in sizes.concurrency:
            each = max(1, sizes.tasks_per_point // callers)

            async def caller(each: int = each) -> None:
                for _ in range(each):
                    await pool.call(workloads.noop)

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(callers):
                    nursery.start_soon(caller)
            sweep[callers] = each * callers / (time.perf_counter() - start)
        out["sweep"] = sweep
        data = b"\x5a" * sizes.echo_bytes
        rates = []
        for _ in range(sizes.echo_reps):
            start = time.perf_counter()
            echoed = await pool.call(workloads.identity, data)
            rates.append(sizes.echo_bytes / MIB / (time.perf_counter() - start))
            assert len(echoed) == len(data)
            del echoed
        out["echo"] = statistics.median(rates)
        items = list(range(sizes.map_items))
        start = time.perf_counter()
        squares = await pool.map(workloads.square, items)
        out["map"] = len(items) / (time.perf_counter() - start)
        out["map_label"] = pool.map_label
        assert squares == [i * i for i in items]
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(sizes.cpu_tasks):
                nursery.start_soon(pool.call, workloads.burn, sizes.cpu_seconds)
        ideal = sizes.cpu_tasks * sizes.cpu_seconds / 2
        out["cpu"] = ideal / (time.perf_counter() - start)
        return time.perf_counter()


def _warm_sync(adapter: Any, sizes: Sizes, out: dict[str, Any]) -> float:
    with adapter.open(2) as pool:
        pool.run_window(workloads.noop, [()] * 4, 4)
        latencies = []
        cpu = time.process_time()
        for _ in range(sizes.latency_calls):
            start = time.perf_counter()
            pool.call(workloads.noop)
            latencies.append(time.perf_counter() - start)
        out["parent_cpu"] = (time.process_time() - cpu) / sizes.latency_calls * 1e6
        out["latencies"] = latencies
        sweep = {}
        for window in sizes.concurrency:
            count = max(window, sizes.tasks_per_point // window * window)
            start = time.perf_counter()
            pool.run_window(workloads.noop, [()] * count, window)
            sweep[window] = count / (time.perf_counter() - start)
        out["sweep"] = sweep
        data = b"\x5a" * sizes.echo_bytes
        rates = []
        for _ in range(sizes.echo_reps):
            start = time.perf_counter()
            echoed = pool.call(workloads.identity, data)
            rates.append(sizes.echo_bytes / MIB / (time.perf_counter() - start))
            assert len(echoed) == len(data)
            del echoed
        out["echo"] = statistics.median(rates)
        items = list(range(sizes.map_items))
        start = time.perf_counter()
        squares = pool.map(workloads.square, items)
        out["map"] = len(items) / (time.perf_counter() - start)
        out["map_label"] = pool.map_label
        assert squares == [i * i for i in items]
        start = time.perf_counter()
        pool.run_window(
            workloads.burn, [(sizes.cpu_seconds,)] * sizes.cpu_tasks, sizes.cpu_tasks
        )
        ideal = sizes.cpu_tasks * sizes.cpu_seconds / 2
        out["cpu"] = ideal / (time.perf_counter() - start)
        return time.perf_counter()


async def _recycle_async(adapter: Any, sizes: Sizes) -> float:
    async with adapter.open(2, max_tasks=1) as pool:
        await pool.call(workloads.noop)
        each = max(1, sizes.recycle_tasks // 8)

        async def caller() -> None:
            for _ in range(each):
                await pool.call(workloads.noop)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(caller)
        return 8 * each / (time.perf_counter() - start)


def _recycle_sync(adapter: Any, sizes: Sizes) -> float:
    with adapter.open(2, max_tasks=1) as pool:
        pool.call(workloads.noop)
        count = max(8, sizes.recycle_tasks)
        start = time.perf_counter()
        pool.run_window(workloads.noop, [()] * count, 8)
        return count / (time.perf_counter() - start)


async def _first_async(adapter: Any, workers: int) -> float:
    start = time.perf_counter()
    async with adapter.open(workers) as pool:
        await pool.call(workloads.noop)
        return time.perf_counter() - start


def _first_sync(adapter: Any, workers: int) -> float:
    start = time.perf_counter()
    with adapter.open(workers) as pool:
        pool.call(workloads.noop)
        return time.perf_counter() - start


def _all_busy(
    start: float, workers: int, stamps: list[tuple[int, float, int]]
) -> float | None:
    if len({pid for pid, _, _ in stamps}) < workers:
        return None  # some worker came up too late to take a task of its own
    return max(started for _, started, _ in stamps) - start


async def _busy_async(adapter: Any, workers: int) -> float | None:
    stamps: list[tuple[int, float, int]] = []
    with tempfile.TemporaryDirectory() as directory:
        start = time.monotonic()
        async with adapter.open(workers) as pool:

            async def one() -> None:
                stamps.append(
                    await pool.call(workloads.arrive_and_wait, directory, workers)
                )

            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(one)
    return _all_busy(start, workers, stamps)


def _busy_sync(adapter: Any, workers: int) -> float | None:
    with tempfile.TemporaryDirectory() as directory:
        start = time.monotonic()
        with adapter.open(workers) as pool:
            stamps = pool.run_window(
                workloads.arrive_and_wait, [(directory, workers)] * workers, workers
            )
    return _all_busy(start, workers, stamps)


def run_round(adapter: Any, sizes: Sizes) -> dict[str, Any]:
    """Every workload once for one pool; each pool in a trio.run of its own."""
    out: dict[str, Any] = {}
    if adapter.is_async:
        exit_start = trio.run(_warm_async, adapter, sizes, out)
    else:
        exit_start = _warm_sync(adapter, sizes, out)
    out["shutdown"] = (time.perf_counter() - exit_start) * 1000
    out["latency"] = statistics.median(out["latencies"]) * 1e6
    out["tasks_2"] = out["sweep"].get(2)
    out["tasks_64"] = out["sweep"].get(64)
    if adapter.recycles:
        if adapter.is_async:
            out["recycle"] = trio.run(_recycle_async, adapter, sizes)
        else:
            out["recycle"] = _recycle_sync(adapter, sizes)
    for workers in sizes.cold_workers:
        if adapter.is_async:
            first = trio.run(_first_async, adapter, workers)
            busy = trio.run(_busy_async, adapter, workers)
        else:
            first = _first_sync(adapter, workers)
            busy = _busy_sync(adapter, workers)
        out[f"first_{workers}"] = first * 1000
        out[f"busy_{workers}"] = None if busy is None else busy * 1000
    return out


# Memory, measured in a fresh process per pool (see bench.memory).


def measure_memory(adapter: Any, sizes: Sizes) -> dict[str, float]:
    """Worker RSS, its excess over a bare interpreter, parent memory per worker."""
    bare = int(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import bench.workloads as w; print(w.resident_memory())",
            ],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    )
    report = subprocess.run(
        [sys.executable, "-m", "bench.memory", adapter.name, str(sizes.memory_workers)],
        capture_output=True,
        check=True,
        text=True,
    )
    measured = json.loads(report.stdout)
    return {
        "worker_rss": measured["worker_rss"] / MIB,
        "worker_extra": (measured["worker_rss"] - bare) / MIB,
        "parent_per_worker": measured["parent_per_worker"] / 1024,
        "bare_rss": bare / MIB,
    }


# Reporting.


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "of ideal":
        return f"{value:.3f}"
    if unit in ("MiB",):
        return f"{value:.1f} MiB"
    if unit == "KiB":
        return f"{value:,.0f} KiB"
    if unit == "µs":
        return f"{value:,.0f} µs"
    if unit == "ms":
        return f"{value:,.1f} ms"
    if unit == "MiB/s":
        return f"{value:,.0f} MiB/s"
    return f"{value:,.0f}"


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(
    names: list[str],
    rounds: dict[str, list[dict[str, Any]]],
    memory: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Medians over the rounds, per metric and pool, plus the sweep medians."""
    metrics: dict[str, dict[str, Any]] = {}
    for key, label, unit, higher in METRICS:
        metrics[key] = {
            "label": label,
            "unit": unit,
            "higher_is_better": higher,
            "pools": {},
        }
        for name in names:
            if key in ("worker_rss", "worker_extra", "parent_per_worker"):
                value = memory.get(name, {}).get(key)
                runs = [value]
            else:
                runs = [r.get(key) for r in rounds[name]]
                value = _median(runs)
            metrics[key]["pools"][name] = {"median": value, "runs": runs}
    sweep = {
        name: {
            str(c): _median([r["sweep"].get(c) for r in rounds[name]])
            for c in rounds[name][0]["sweep"]
        }
        for name in names
    }
    latencies = {
        name: [x * 1e6 for r in rounds[name] for x in r["latencies"]] for name in names
    }
    map_labels = {name: rounds[name][0]["map_label"] for name in names}
    return {
        "metrics": metrics,
        "sweep": sweep,
        "latencies_us": latencies,
        "map_labels": map_labels,
    }


def ratio(triopool: float | None, other: float | None, higher: bool) -> float | None:
    """How many times better triopool is than ``other`` (above 1: better)."""
    if triopool is None or other is None or triopool <= 0 or other <= 0:
        return None
    return triopool / other if higher else other / triopool


def markdown(summary: dict[str, Any], names: list[str]) -> str:
    """The results table: medians, with triopool's advantage in parentheses."""
    header = "| | " + " | ".join(names) + " |"
    lines = [header, "|---" * (len(names) + 1) + "|"]
    for metric in summary["metrics"].values():
        pools = metric["pools"]
        base = pools.get("triopool", {}).get("median")
        cells = []
        for name in names:
            value = pools[name]["median"]
            cell = _format(value, metric["unit"])
            if name != "triopool" and value is not None:
                r = ratio(base, value, metric["higher_is_better"])
                if r is not None:
                    cell += f" ({r:.2f}x)"
            cells.append(cell)
        unit = metric["unit"]
        label = metric["label"] + (
            f" ({unit})" if unit in ("/s", "items/s", "of ideal") else ""
        )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    labels = ", ".join(
        f"{name}: {label}" for name, label in summary["map_labels"].items()
    )
    lines.append("")
    lines.append(
        "Medians over the rounds. In parentheses: how many times better triopool is "
        "than that column (above 1: triopool is faster or smaller). "
        f"map is done with: {labels}."
    )
    return "\n".join(lines) + "\n"


def rst(summary: dict[str, Any], names: list[str]) -> str:
    """The same table as :func:`markdown`, as a reStructuredText list-table."""
    lines = [".. list-table::", "   :header-rows: 1", "   :stub-columns: 1", ""]
    lines.append("   * -")
    lines.extend(f"     - {name}" for name in names)
    for line in markdown(summary, names).splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        lines.append(f"   * - {cells[0]}")
        lines.extend(f"     - {cell}" for cell in cells[1:])
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], names: list[str], directory: str) -> list[str]:
    """PNG plots: the latency distribution and throughput against concurrency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
    for name in names:
        values = sorted(summary["latencies_us"][name])
        if values:
            ax.plot(
                values, [(i + 1) / len(values) for i in range(len(values))], label=name
            )
    ax.set_xscale("log")
    ax.set_xlabel("trivial round trip (µs, log scale)")
    ax.set_ylabel("fraction of calls at most this long")
    ax.set_title("Round-trip latency, warm pool of 2 workers")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(directory, "latency.png"))
    fig.savefig(paths[-1])
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
    for name in names:
        points = sorted((int(c), v) for c, v in summary["sweep"][name].items() if v)
        ax.plot([c for c, _ in points], [v for _, v in points], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent callers (tasks in flight)")
    ax.set_ylabel("tiny tasks per second (log scale)")
    ax.set_title("Throughput against concurrency, 2 workers")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(directory, "throughput.png"))
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        # Other work on the machine skews everything: say how busy it was.
        "load_average": os.getloadavg(),
    }
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as meminfo:
            info["memory"] = meminfo.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    versions = {}
    from importlib import metadata

    for dist in ("triopool", "trio", "trio-parallel", "anyio"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument(
        "--only", action="append", help="run only these pools (repeatable)"
    )
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results")
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    pools = [a for a in adapters.ALL if a.available()]
    skipped = [a.name for a in adapters.ALL if not a.available()]
    if args.only:
        pools = [a for a in pools if a.name in args.only]
    names = [a.name for a in pools]
    began = time.perf_counter()
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for number in range(sizes.rounds):
        shift = number % len(pools)
        for adapter in pools[shift:] + pools[:shift]:
            print(
                f"round {number + 1}/{sizes.rounds}: {adapter.name}",
                file=sys.stderr,
                flush=True,
            )
            rounds[adapter.name].append(run_round(adapter, sizes))
    memory = {}
    for adapter in pools:
        print(f"memory: {adapter.name}", file=sys.stderr, flush=True)
        memory[adapter.name] = measure_memory(adapter, sizes)
    summary = summarize(names, rounds, memory)
    table = markdown(summary, names)
    print("burst after an idle period: triopool", file=sys.stderr, flush=True)
    burst_rows, burst_table = burst.section(args.quick)
    table += "\n" + burst_table
    info = machine()
    info["bare_interpreter_rss_mib"] = memory[names[0]]["bare_rss"] if names else None
    elapsed = time.perf_counter() - began
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    mode = "quick" if args.quick else "full"
    base = os.path.join(args.out, f"bench-{mode}-{stamp}")
    with open(base + ".md", "w") as f:
        f.write(f"{len(names)} pools, {sizes.rounds} round(s), {elapsed:.0f} s; ")
        f.write(f"{info.get('cpu', '?')}, {info['cpus']} CPUs, ")
        f.write(f"Python {info['python']}, ")
        f.write(f"load average at the end: {info['load_average'][0]:.1f}\n\n")
        f.write(table)
    with open(base + ".rst", "w") as f:
        f.write(rst(summary, names))
    with open(base + ".json", "w") as f:
        json.dump(
            {
                "mode": mode,
                "sizes": dataclasses.asdict(sizes),
                "machine": info,
                "skipped": skipped,
                "elapsed_s": elapsed,
                "summary": summary,
                "rounds": rounds,
                "burst": burst_rows,
            },
            f,
            indent=1,
            default=str,
        )
    plots = plot(summary, names, args.out)
    print(table)
    if skipped:
        print(f"Not installed, skipped: {', '.join(skipped)}")
    print(f"Saved {base}.md, {base}.json" + "".join(f", {p}" for p in plots))
    print(f"Took {elapsed:.0f} s; load average {info['load_average'][0]:.1f}.")
    return 0

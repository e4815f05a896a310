"""Every code example in the docs runs.

The pages include the files under docs/examples with ``literalinclude``: each
one runs here as its own script (``python docs/examples/NAME.py``), the way a
reader would run it (so the workers re-import it as the main script), and must
exit 0 and print what the docs say it prints. Examples that need an optional
extra (cloudpickle, Ray, Dask) are skipped where it is not installed; the
cluster ones run where the engines are (``nox -s tests_distributed`` installs
them). The ``Example::`` blocks of the public docstrings, which the reference
page shows, run inside a pool too, and so do the shell commands of the command
line page whose output it shows, and the README's example. An example that
stops working fails here
instead of rotting in the documentation.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import shlex
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

import triopool

if TYPE_CHECKING:
    from collections.abc import Iterator

DOCS = Path(__file__).resolve().parent.parent / "docs"
EXAMPLES = DOCS / "examples"

# Lines each example must print (stdout). Every file in docs/examples needs an
# entry, so a new example cannot go untested.
EXPECTED: dict[str, list[str]] = {
    "first_pool.py": [
        "primes below 50000: 5133",
        "primes in [25000, 50000): 2371",
        "by limit: {10000: 1229, 20000: 2262, 30000: 3245, 40000: 4203}",
    ],
    "errors.py": [
        "caught: ValueError('port out of range: 70000')",
        "worker frame in traceback: True",
        "time limit: 0.5 s",
        "next call: 8080",
        "workers lost: 1 tasks failed: 2",
    ],
    "cancellation.py": [
        "killed and moved on: True",
        "result kept: 16 then cancelled: True",
        "cancelled: 2 lost workers: 1",
    ],
    "body_error.py": [
        "answer: 1024",
        "caught: ConfigError('no such section: [server]')",
        "closed after the block",
    ],
    "migrate_futures_before.py": [
        "one: d29751f2649b",
        "all: ['d29751f2649b', '1fb6a051d899', 'd95df32a8454', '21f9b56105cd']",
    ],
    "migrate_futures_after.py": [
        "one: d29751f2649b",
        "all: ['d29751f2649b', '1fb6a051d899', 'd95df32a8454', '21f9b56105cd']",
    ],
    "migrate_trio_parallel.py": [
        "checksum: 2395768541",
        "seeded: 960661254",
        "limited: 1",
    ],
    "limits_time.py": [
        "('complete', 333328333350000)",
        "partial",
        "soft limit: soft time limit of 0.5 s exceeded",
        "hard limit: the worker was killed after 2.0 s",
        "333332833333500000",
        "workers killed and replaced: 1",
    ],
    "limits_recycling.py": ["workers used: 2", "recycled: 2"],
    "recovery_retries.py": [
        "fragile: done on its second run",
        "flaky: succeeded on run 3",
        "poison: runs tried: 2",
        "retried: 4 workers lost: 3",
    ],
    "limits_idle.py": ["alive after a pause: 1", "results: 328350", "target: 4"],
    "map_basic.py": [
        "1229 primes below 10000",
        "... and 33860 primes below 400000",
        "100000 words, 888890 characters",
    ],
    "map_errors.py": [
        "stopped: invalid literal for int() with base 10: 'three'",
        "worker frame in traceback: True",
        "[5, 6]",
    ],
    "map_progress.py": ["all 2000 done, 0 failed", "sum of squares: 2664667000"],
    "map_return_exceptions.py": [
        "1: 1",
        "three: failed with ValueError",
        "4: 4",
    ],
    "map_stream.py": [
        "nonce 299 gives 0040d8f8b34c1ec7...",
        "taken beyond the answer: at most 8: True",
    ],
    "map_unordered.py": [
        "all done: ['page-0', 'page-1', 'page-2', 'page-3', 'page-4']"
    ],
    "limits_sigterm.py": [
        "SIGTERM: letting the running tasks finish",
        "tasks finished after SIGTERM: 2",
        "failed: 0, workers lost: 0",
    ],
    "fd_limit.py": ["room for fds: True", "[0, 1, 4, 9, 16]"],
    "limits_soft_loop.py": [
        "stopped by the soft limit",
        "finished in time",
        "workers lost: 0",
    ],
    "map_imap.py": ["22 bits", "62 bits", "108 bits"],
    "default_pool.py": [
        "2 ** 100 = 1267650600228229401496703205376",
        "steps from 27: 111",
    ],
    "default_pool_configure.py": [
        "distinct workers for 4 calls: 4",
        "RuntimeError: the default pool of this trio.run has already started; "
        "call configure_default_pool() before the first triopool.run_sync()",
    ],
    "serialization_cloudpickle.py": ["lambda: 42", "closure: [3, 6, 9]"],
    "asyncio_thread.py": ["digit sums: [115, 1366, 13561]"],
    "asyncio_guest.py": ["digit sums: [115, 1366, 13561]"],
    "start_forkserver.py": ["H(8) = 761/280", "worker processes for 8 tasks: 8"],
    "worker_logging.py": ["['thumb-a.jpg', 'thumb-b.jpg']"],
    "observe_events.py": [
        "error: cannot read broken.png",
        "task events: {'failed': 1, 'finished': 4, 'queued': 5, 'started': 5}",
    ],
    "observe_insight.py": [
        "tasks done: 6 completed + failed: 6",
        "longest task: work at least 0.4 s: True",
    ],
    # The same line whether tqdm, rich or neither is installed.
    "observe_progress.py": ["done: 40 of 40, failed: 0"],
    "observe_statistics.py": ["30/30 done, 0 running"],
    "worker_logging_local.py": ["['thumb-a.jpg', 'thumb-b.jpg']"],
    "inside_current_worker.py": [
        "a: slot 0, port 9000, 0 done before",
        "b: slot 0, port 9000, 1 done before",
        "c: slot 0, port 9000, 0 done before",
        "new process for c: True",
    ],
    "cluster_ray.py": ["pi is about 3.1", "killed after 2.0 s"],
    "cluster_dask.py": ["total: 45", "words: [3, 3]"],
    "put_once.py": [
        "put 16777299 bytes",
        "length in a worker: 16777216",
        "16 digests, all alike: True",
    ],
}

# Text an example must write to stderr (for what goes there, such as logging).
EXPECTED_STDERR: dict[str, list[str]] = {
    "worker_logging.py": [
        "thumbnails INFO starting [worker -]",
        "thumbnails INFO resizing a.jpg [worker ",
        "thumbnails INFO resizing b.jpg [worker ",
    ],
    "worker_logging_local.py": [
        "thumbnails INFO resizing a.jpg",
        "thumbnails INFO resizing b.jpg",
    ],
}

# The module an example needs beyond triopool's own dependencies: the example
# is skipped where it is not installed.
NEEDS: dict[str, str] = {
    "serialization_cloudpickle.py": "cloudpickle",
    "cluster_ray.py": "ray",
    "cluster_dask.py": "distributed",
}


def example_files() -> list[str]:
    return sorted(path.name for path in EXAMPLES.glob("*.py"))


async def test_every_example_has_expectations() -> None:
    # async only because the autouse leak check is a Trio fixture
    files = example_files()
    assert files, f"no examples found in {EXAMPLES}"
    assert set(files) == set(EXPECTED)
    assert set(EXPECTED_STDERR) <= set(files)
    assert set(NEEDS) <= set(files)


async def run_script(script: Path) -> subprocess.CompletedProcess[bytes]:
    """Run ``script`` as a reader would, from its own folder."""
    # Generous: several helpers share two cores, and every example starts
    # worker processes (or a cluster).
    with trio.fail_after(120):
        return await trio.run_process(
            [sys.executable, str(script)],
            cwd=script.parent,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )


@pytest.mark.parametrize("name", example_files())
async def test_example_runs(name: str) -> None:
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    result = await run_script(EXAMPLES / name)
    stdout = result.stdout.decode()
    stderr = result.stderr.decode()
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = stdout.splitlines()
    for expected in EXPECTED[name]:
        assert expected in lines, f"{name} did not print {expected!r}:\n{stdout}"
    for expected in EXPECTED_STDERR.get(name, []):
        assert expected in stderr, f"{name} did not log {expected!r}:\n{stderr}"


def docstring_examples() -> dict[str, str]:
    """The ``Example::`` block of every public name (and public method) that has
    one, by qualified name."""
    objects: list[tuple[str, object]] = []
    for name in triopool.__all__:
        obj = getattr(triopool, name)
        objects.append((name, obj))
        if inspect.isclass(obj):
            objects.extend(
                (f"{name}.{attr}", value)
                for attr, value in vars(obj).items()
                if not attr.startswith("_") and callable(value)
            )
    examples: dict[str, str] = {}
    for qualname, obj in objects:
        doc = inspect.getdoc(obj) or ""
        if "Example::" not in doc:
            continue
        block: list[str] = []
        for line in doc.split("Example::", 1)[1].splitlines()[1:]:
            if line and not line.startswith(" "):
                break
            block.append(line)
        examples[qualname] = textwrap.dedent("\n".join(block)).strip()
    return examples


async def test_docstring_examples_found() -> None:
    # async only because the autouse leak check is a Trio fixture
    assert {"open_pool", "Pool.run_sync"} <= set(docstring_examples())


async def test_reference_lists_every_pool_method_run_sync_first() -> None:
    # The reference names Pool's methods in reading order (autodoc would
    # sort them by name: Pool's __module__ is "triopool", where autodoc finds
    # no source order); a method added to Pool must be added there too.
    text = (DOCS / "reference.rst").read_text()
    body = text.split(".. autoclass:: Pool()", 1)[1].split("\n.. ", 1)[0]
    listed = [
        line.split("::")[1].strip()
        for line in body.splitlines()
        if line.strip().startswith(".. automethod::")
    ]
    public = {
        name
        for name, value in vars(triopool.Pool).items()
        if not name.startswith("_") and callable(value)
    }
    assert listed[0] == "run_sync"
    assert sorted(listed) == sorted(public)


@pytest.fixture
def default_pool_options_restored() -> Iterator[None]:
    """Put the default pool's options back after the test.

    configure_default_pool's example changes a process-wide setting. A sync
    fixture, so the reset runs after the test's ``trio.run`` has ended (inside
    it, the run's default pool may have started, and the call would raise).
    """
    yield
    triopool.configure_default_pool()


# The cluster backends' examples need their engine (nox -s tests_distributed
# installs them), whose client library keeps sockets open in this process.
ENGINES = {"RayBackend": "ray", "DaskBackend": "distributed"}


def docstring_example_params() -> list[Any]:
    return [
        pytest.param(
            qualname,
            marks=[pytest.mark.engine_fds] if qualname.split(".")[0] in ENGINES else [],
        )
        for qualname in sorted(docstring_examples())
    ]


@pytest.fixture(scope="module")
def dask_resource_tracker() -> None:
    """Where Dask is installed, start multiprocessing's resource tracker before
    the leak check's baseline: DaskBackend's own LocalCluster starts it, and
    it lives (a process and a pipe) until the interpreter exits."""
    if importlib.util.find_spec("distributed") is not None:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()


@pytest.mark.usefixtures("default_pool_options_restored", "dask_resource_tracker")
@pytest.mark.parametrize("qualname", docstring_example_params())
async def test_docstring_example_runs(qualname: str) -> None:
    engine = ENGINES.get(qualname.split(".")[0])
    if engine is not None:
        pytest.importorskip(engine)
    code = docstring_examples()[qualname]
    source = "async def example(pool):\n" + textwrap.indent(code, "    ")
    # What the examples take for granted: the modules they use, some data, and
    # (for methods) an open pool.
    namespace: dict[str, Any] = {
        "functools": functools,
        "trio": trio,
        "triopool": triopool,
        "zlib": zlib,
        "data": b"example data" * 100,
    }
    exec(compile(source, f"<docstring example of {qualname}>", "exec"), namespace)
    with trio.fail_after(60):
        async with triopool.open_pool(1) as pool:
            await namespace["example"](pool)


def console_examples() -> list[tuple[str, list[str]]]:
    """The commands of the command line page that are shown with their output:
    ``$ command`` followed by output lines, up to a blank line."""
    examples: list[tuple[str, list[str]]] = []
    lines = (DOCS / "cli.rst").read_text().splitlines()
    for index, line in enumerate(lines):
        command = line.strip()
        if not command.startswith("$ "):
            continue
        output: list[str] = []
        for following in lines[index + 1 :]:
            if not following.strip() or following.strip().startswith("$ "):
                break
            output.append(following.strip())
        if output:
            examples.append((command[2:], output))
    return examples


async def test_console_examples_found() -> None:
    # async only because the autouse leak check is a Trio fixture
    assert console_examples(), "no command with its output found in cli.rst"


@pytest.mark.parametrize(("command", "output"), console_examples())
async def test_console_example_prints_what_the_page_shows(
    command: str, output: list[str]
) -> None:
    # Run in a shell as written, with "triopool" being this checkout's.
    triopool_command = f"{shlex.quote(sys.executable)} -m triopool"
    words = command.split(" ")
    script = " ".join(
        triopool_command if word == "triopool" else word for word in words
    )
    with trio.fail_after(120):
        result = await trio.run_process(
            script,
            shell=True,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == output


def readme_example() -> str:
    """The README's Python example (its first ``python`` code block)."""
    readme = (DOCS.parent / "README.md").read_text()
    start = readme.index("```python\n") + len("```python\n")
    return readme[start : readme.index("```", start)]


def readme_example_output() -> list[str]:
    """The lines the README shows its example printing (the ``text`` block
    after it)."""
    readme = (DOCS.parent / "README.md").read_text()
    start = readme.index("```text\n", readme.index("```python\n")) + len("```text\n")
    return readme[start : readme.index("```", start)].splitlines()


async def test_readme_example_runs(tmp_path: Path) -> None:
    script = tmp_path / "readme_example.py"
    script.write_text(readme_example())
    result = await run_script(script)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert stderr == ""
    printed = result.stdout.decode().splitlines()
    # What the README says it prints...
    assert printed == readme_example_output()

    # ... which is score(12_345), then the first n whose score passes 5,000.
    def score(n: int) -> float:
        return float(sum(i * i for i in range(n % 10_000)) ** 0.5)

    first = next(n for n in range(10_000) if score(n) > 5_000)
    assert printed == [
        f"score(12_345) = {score(12_345):,.1f}",
        f"first n with score(n) > 5,000: {first} (score {score(first):,.1f})",
    ]

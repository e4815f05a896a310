"""Every example under docs/examples runs, exits 0 and prints what the docs say.

The pages include these files with ``literalinclude``, so an example that stops
working fails here instead of rotting in the documentation. Each one runs as its
own script (``python docs/examples/NAME.py``), the way a reader would run it, so
the workers re-import it as the main script.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"

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
}


def example_files() -> list[str]:
    return sorted(path.name for path in EXAMPLES.glob("*.py"))


async def test_every_example_has_expectations() -> None:
    # async only because the autouse leak check is a Trio fixture
    files = example_files()
    assert files, f"no examples found in {EXAMPLES}"
    assert set(files) == set(EXPECTED)


@pytest.mark.parametrize("name", example_files())
async def test_example_runs(name: str) -> None:
    # Generous: several helpers share two cores, and every example starts
    # worker processes.
    with trio.fail_after(120):
        result = await trio.run_process(
            [sys.executable, str(EXAMPLES / name)],
            cwd=EXAMPLES,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    stdout = result.stdout.decode()
    stderr = result.stderr.decode()
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = stdout.splitlines()
    for expected in EXPECTED[name]:
        assert expected in lines, f"{name} did not print {expected!r}:\n{stdout}"

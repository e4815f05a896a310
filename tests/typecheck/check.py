"""Check that mypy --strict and pyright each report exactly the marked mistakes.

``mistakes.py`` marks each line that must get an error with ``# mistake``;
``correct.py`` must get none. Both checkers run over both files, and this
fails, listing what differs, if a checker:

- misses a marked line (a mistake the types no longer catch),
- reports an unmarked line of ``mistakes.py`` (a mistake that leaks onto the
  lines around it, or a line that is wrong by accident), or
- reports anything in ``correct.py`` (a correct use the types refuse).

Run by ``nox -s typecheck`` as ``python -m tests.typecheck.check``, with mypy
and pyright installed (the ``typecheck`` dependency group).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MISTAKES = HERE / "mistakes.py"
CORRECT = HERE / "correct.py"
MARK = "# mistake"

Errors = dict[Path, set[int]]


def marked_lines(path: Path) -> set[int]:
    """The numbers (from 1) of the lines marked as mistakes."""
    lines = path.read_text().splitlines()
    return {number for number, line in enumerate(lines, 1) if line.endswith(MARK)}


def mypy_errors(paths: list[Path]) -> Errors:
    """Lines with an error from ``mypy --strict``, by file."""
    # The files are named on the command line, so the project's exclude of
    # mistakes.py does not apply; the project's other settings do.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *paths],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode not in (0, 1) or result.stderr:
        raise SystemExit(f"mypy failed to run:\n{result.stdout}{result.stderr}")
    errors: Errors = {path: set() for path in paths}
    for line in result.stdout.splitlines():
        match = re.match(r"(.+?):(\d+): error: ", line)
        if match:
            errors.setdefault(Path(match[1]).resolve(), set()).add(int(match[2]))
    return errors


def pyright_errors(paths: list[Path]) -> Errors:
    """Lines with an error from pyright, by file (in the mode each file sets)."""
    result = subprocess.run(
        [sys.executable, "-m", "pyright", "--outputjson"]
        + ["--pythonpath", sys.executable]
        + [str(path) for path in paths],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise SystemExit(
            f"pyright failed to run:\n{result.stdout}{result.stderr}"
        ) from None
    errors: Errors = {path: set() for path in paths}
    for diagnostic in report["generalDiagnostics"]:
        if diagnostic["severity"] == "error":
            line = diagnostic["range"]["start"]["line"] + 1  # pyright counts from 0
            errors.setdefault(Path(diagnostic["file"]).resolve(), set()).add(line)
    return errors


def differences(checker: str, errors: Errors) -> list[str]:
    """What ``checker`` missed of the marked mistakes, and what else it reported."""
    expected = marked_lines(MISTAKES)
    found = errors.pop(MISTAKES, set())
    problems = [
        f"{checker} missed the mistake at {MISTAKES.name}:{line}"
        for line in sorted(expected - found)
    ]
    problems += [
        f"{checker} reported {MISTAKES.name}:{line}, which is not marked {MARK!r}"
        for line in sorted(found - expected)
    ]
    for path, lines in sorted(errors.items()):
        problems += [
            f"{checker} reported {path}:{line}, which should have no error"
            for line in sorted(lines)
        ]
    return problems


def main() -> None:
    paths = [MISTAKES, CORRECT]
    expected = marked_lines(MISTAKES)
    if not expected:
        raise SystemExit(f"no line of {MISTAKES} is marked {MARK!r}")
    problems = differences("mypy", mypy_errors(paths))
    problems += differences("pyright", pyright_errors(paths))
    if problems:
        raise SystemExit("\n".join(problems))
    print(f"mypy and pyright each report all {len(expected)} mistakes, and only them")


if __name__ == "__main__":
    main()

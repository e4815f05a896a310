"""The Python versions triopool declares are the ones CI tests it on."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def noxfile_versions() -> tuple[str, list[str]]:
    """The noxfile's default Python and the other versions it tests on."""
    wanted = {"PYTHON", "OTHER_PYTHONS"}
    values = {}
    for node in ast.parse((ROOT / "noxfile.py").read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in wanted:
                values[target.id] = ast.literal_eval(node.value)
    return values["PYTHON"], list(values["OTHER_PYTHONS"])


def test_classifiers_declare_exactly_the_tested_versions() -> None:
    default, others = noxfile_versions()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = sorted(
        classifier.rsplit(" :: ", 1)[1]
        for classifier in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", classifier)
    )
    assert declared == sorted([default, *others]) == ["3.11", "3.12", "3.13"]
    assert project["requires-python"] == f">={default}"


def test_ci_runs_the_suite_on_every_version() -> None:
    _, others = noxfile_versions()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if "nox -s" in line)
    sessions = command.split("nox -s", 1)[1].split()
    # "tests" is the README's command, on the default version.
    assert "tests" in sessions
    for version in others:
        assert f"tests-{version}" in sessions, command

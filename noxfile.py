"""Development sessions for triopool: ``nox -s tests``, ``nox -s lint``, ..."""

from __future__ import annotations

import nox

nox.needs_version = ">=2024.4.15"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


def install(session: nox.Session, *groups: str, editable: bool = True) -> None:
    """Install the project and the named dependency groups."""
    args = [arg for group in groups for arg in ("--group", group)]
    session.install("--upgrade", "pip>=25.1")
    if editable:
        session.install("-e", ".", *args)
    else:
        session.install(".", *args)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (pass pytest options after --)."""
    install(session, "test")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check the package and the tests with mypy --strict."""
    install(session, "typecheck")
    session.run("mypy")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Run the demo: a CPU-bound job, sequentially and through the pool."""
    install(session, editable=False)
    session.run("python", "-m", "triopool", "demo", *session.posargs)


@nox.session(python=PYTHON)
def stress(session: nox.Session) -> None:
    """Run the recycling storm for a while (-- --minutes N, default 1)."""
    install(session, "test")
    session.run("python", "-m", "tests.storm", *session.posargs)

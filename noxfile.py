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


# Cluster engines stay on this machine and send no usage reports.
ENGINE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@nox.session(python=PYTHON)
def tests_distributed(session: nox.Session) -> None:
    """Run the conformance tests and docs examples on Ray and Dask too (installs the extras)."""
    session.install("--upgrade", "pip>=25.1")
    session.install("-e", ".[ray,dask]", "--group", "test")
    session.run(
        "pytest",
        "tests/test_conformance.py",
        "tests/test_cluster_processes.py",
        # The docs examples again, now with the engines their cluster
        # examples need (``tests`` skips those).
        "tests/test_docs_examples.py",
        *session.posargs,
        env=ENGINE_ENV,
    )


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
def docs(session: nox.Session) -> None:
    """Build the HTML documentation, nitpicky, with warnings as errors."""
    install(session, "docs")
    session.run(
        "sphinx-build",
        "-n",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "docs",
        "docs/_build/html",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Run the demo: a CPU-bound job, sequentially and through the pool."""
    install(session, editable=False)
    session.run("python", "-m", "triopool", "demo", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmark triopool against its peers (pass --quick etc. after --)."""
    install(session, "bench")
    session.run("python", "-m", "bench", *session.posargs)


@nox.session(python=PYTHON)
def bench_recycling(session: nox.Session) -> None:
    """Benchmark worker recycling against multiprocessing and trio-parallel."""
    install(session, "bench", editable=False)
    session.run("python", "bench/recycling.py", *session.posargs)


@nox.session(python=PYTHON)
def bench_map(session: nox.Session) -> None:
    """Benchmark map/imap against multiprocessing.Pool.imap (100,000 items)."""
    install(session, "bench", editable=False)
    session.run("python", "bench/map_vs_multiprocessing.py", *session.posargs)


@nox.session(python=PYTHON)
def stress(session: nox.Session) -> None:
    """Run a storm for a while (-- --minutes N, --profile P; default 1, recycle).

    ``recycle`` (the default) is the recycling storm with hostile tasks mixed
    in; ``cancel`` alternates the two cancellation storms (``burst``: one
    worker, 3,000 callers in 1.5 s, 70 % giving up within 0.5 ms;
    ``mixed``: two workers, 10,000 callers, cancellations with
    kill_on_cancel both ways), one Trio run each, until the time is up.
    """
    install(session, "test")
    session.run("python", "-m", "tests.storm", *session.posargs)

"""Development sessions for triopool: ``nox -s tests``, ``nox -s lint``, ..."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox

nox.needs_version = ">=2024.4.15"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
# The other supported versions: ``nox -s tests-3.12 tests-3.13`` (``.ci/run`` runs them).
OTHER_PYTHONS = ("3.12", "3.13")


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


def pyenv_root() -> str | None:
    """Where pyenv keeps its interpreters, if pyenv is installed."""
    if root := os.environ.get("PYENV_ROOT"):
        return root
    if pyenv := shutil.which("pyenv"):
        done = subprocess.run([pyenv, "root"], capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip() or None
    return None


def runs_as(executable: str, version: str) -> bool:
    """Whether *executable* starts and is Python *version* (a pyenv shim may not be)."""
    try:
        done = subprocess.run(
            [executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == version


def find_python(version: str) -> str | None:
    """A Python *version* interpreter: ``pythonX.Y`` on PATH, else the newest under pyenv."""
    candidates = []
    if on_path := shutil.which(f"python{version}"):
        candidates.append(on_path)
    if root := pyenv_root():
        installed = glob.glob(os.path.join(root, "versions", f"{version}.*", "bin"))
        # Newest patch release first; "3.12.10" sorts after "3.12.9".
        installed.sort(key=lambda bin_dir: micro(bin_dir, version), reverse=True)
        candidates += [
            os.path.join(bin_dir, f"python{version}") for bin_dir in installed
        ]
    return next((exe for exe in candidates if runs_as(exe, version)), None)


def micro(bin_dir: str, version: str) -> int:
    """The patch number of a pyenv version directory (``.../3.12.1/bin`` -> 1), or -1."""
    tail = os.path.basename(os.path.dirname(bin_dir))[len(version) + 1 :]
    return int(tail) if tail.isdigit() else -1


def tests_on(version: str) -> None:
    """Define the session ``tests-X.Y``: the test suite on that Python."""
    # Looked up here rather than by nox, which finds neither a pyenv version
    # that is not active nor one behind a failing shim, and would then try to
    # download an interpreter instead of saying what is missing.
    executable = find_python(version)

    def run_tests(session: nox.Session) -> None:
        if executable is None:
            session.error(
                f"Python {version} was not found: neither python{version} on PATH"
                f" nor a {version}.x under `pyenv root`/versions. Install it (for"
                f" example `pyenv install {version}`, or your system's python{version}"
                " package) and run this session again"
            )
        install(session, "test")
        session.run("pytest", *session.posargs)

    run_tests.__doc__ = (
        f"Run the test suite on Python {version} (pytest options after --)."
    )
    # Without an interpreter, no virtualenv (python=False): the session runs
    # only to fail with the message above.
    nox.session(name=f"tests-{version}", python=executable or False)(run_tests)


for _version in OTHER_PYTHONS:
    tests_on(_version)


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
    """Type-check with mypy --strict and pyright, and check both catch the mistakes in tests/typecheck/."""
    install(session, "typecheck")
    session.run("mypy")
    session.run("pyright")
    session.run("python", "-m", "tests.typecheck.check")


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
    """Run the demo: a CPU-bound job sequentially and through the pool, beside a Trio heartbeat."""
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
    """Benchmark map/imap against multiprocessing.Pool (defaults, equal chunk sizes)."""
    install(session, "bench", editable=False)
    session.run("python", "bench/map_vs_multiprocessing.py", *session.posargs)


@nox.session(python=PYTHON)
def bench_cluster(session: nox.Session) -> None:
    """Benchmark the local pool, Ray and Dask, with and without pool.put() (installs the extras)."""
    session.install("--upgrade", "pip>=25.1")
    session.install(".[ray,dask]")
    session.run("python", "bench/cluster.py", *session.posargs, env=ENGINE_ENV)


@nox.session(python=PYTHON)
def stress(session: nox.Session) -> None:
    """Run a storm for a while (-- --minutes N, --profile P; default 1, recycle).

    ``recycle`` (the default) is the recycling storm with hostile tasks mixed
    in; ``cancel`` alternates the two cancellation storms (``burst``: one
    worker, 3,000 callers in 1.5 s, 70 % giving up within 0.5 ms;
    ``mixed``: two workers, 10,000 callers, cancellations with
    kill_on_cancel both ways), one Trio run each, until the time is up;
    ``cancel-burst`` and ``cancel-mixed`` run one kind; ``ahead-kills`` is
    the write-ahead storm: 4 workers serving 20 tasks each, short tasks
    written ahead to busy workers while workers are killed (by SIGKILL and
    by their tasks), and no task may start twice; ``elastic`` is the
    recycling storm with idle workers exiting between bursts of tasks
    (min_workers=1, a tiny idle_timeout) and a task whose worker dies under
    it running once more (retries=1). See tests/storm.py.
    """
    install(session, "test")
    session.run("python", "-m", "tests.storm", *session.posargs)

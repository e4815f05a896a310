"""Sphinx configuration for the triopool documentation (``nox -s docs``).

The build is nitpicky with warnings as errors (``-n -W``), so every
cross-reference must resolve. It must also work from a fresh clone on a machine
whose only network is the package registries, where intersphinx cannot
download ``objects.inv`` from docs.python.org or trio.readthedocs.io. So the
inventories of the few external objects these docs refer to are written here,
at configuration time, from the tables below (see ``_write_inventory``).
Links in the HTML still point at the real Python and Trio documentation; a
reference to an external name missing from the tables fails the build, which
is the cue to add it. The Python entries were checked against the
``objects.inv`` that Debian's ``python3-doc`` package ships for 3.11.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import triopool

if TYPE_CHECKING:
    from sphinx.application import Sphinx

project = "triopool"
author = "the triopool developers"
project_copyright = "2026, the triopool developers"
release = triopool.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinxcontrib_trio",
    "myst_parser",
]

# examples/ holds the .py files that pages include with literalinclude.
exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext"}
default_role = "py:obj"
nitpicky = True
nitpick_ignore = [
    # The private type variables of Pool.run_sync's signature; they have no
    # page to link to, and the prose says what they mean.
    ("py:class", "T"),
    ("py:class", "Ts"),
    ("py:class", "*Ts"),
    ("py:class", "ItemT"),
    # The backend protocol is internal (see docs/cluster.rst); its two
    # implementations, RayBackend and DaskBackend, are in the reference.
    ("py:class", "Backend"),
    # The private alias for what retry_on takes (one exception class, or a
    # sequence of them); the option's description says so.
    ("py:class", "RetryOn"),
    # The kinds of events: Literal aliases whose values the event classes'
    # docstrings list.
    ("py:class", "TaskKind"),
    ("py:class", "WorkerKind"),
]

# autodoc and napoleon: Google-style docstrings, types in the descriptions so
# that the long signatures stay readable, members in source order.
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# Attributes as one compact field list rather than an entry per attribute.
napoleon_use_ivar = True

html_theme = "furo"
html_title = f"triopool {release}"
html_static_path: list[str] = []
pygments_style = "friendly"
pygments_dark_style = "monokai"

# myst_parser renders the Markdown changelog (changelog.rst includes it).
myst_heading_anchors = 3

# -- Offline intersphinx ------------------------------------------------------

_PYTHON_URL = "https://docs.python.org/3/"
_TRIO_URL = "https://trio.readthedocs.io/en/stable/"

# name, domain:role, page#anchor ("$" stands for the name, as in objects.inv)
_PYTHON_OBJECTS = [
    ("BaseException", "py:exception", "library/exceptions.html#$"),
    ("BaseExceptionGroup", "py:exception", "library/exceptions.html#$"),
    ("Exception", "py:exception", "library/exceptions.html#$"),
    ("ExceptionGroup", "py:exception", "library/exceptions.html#$"),
    ("KeyboardInterrupt", "py:exception", "library/exceptions.html#$"),
    ("RuntimeError", "py:exception", "library/exceptions.html#$"),
    ("SystemExit", "py:exception", "library/exceptions.html#$"),
    ("TypeError", "py:exception", "library/exceptions.html#$"),
    ("ValueError", "py:exception", "library/exceptions.html#$"),
    ("None", "py:data", "library/constants.html#$"),
    ("bool", "py:class", "library/functions.html#$"),
    ("float", "py:class", "library/functions.html#$"),
    ("int", "py:class", "library/functions.html#$"),
    ("str", "py:class", "library/stdtypes.html#$"),
    ("tuple", "py:class", "library/stdtypes.html#$"),
    ("collections.abc.Callable", "py:class", "library/collections.abc.html#$"),
    ("collections.abc.Sequence", "py:class", "library/collections.abc.html#$"),
    ("concurrent.futures", "py:module", "library/concurrent.futures.html#module-$"),
    (
        "concurrent.futures.ProcessPoolExecutor",
        "py:class",
        "library/concurrent.futures.html#$",
    ),
    (
        "concurrent.futures.process.BrokenProcessPool",
        "py:exception",
        "library/concurrent.futures.html#$",
    ),
    (
        "contextlib.AbstractAsyncContextManager",
        "py:class",
        "library/contextlib.html#$",
    ),
    ("functools.partial", "py:function", "library/functools.html#$"),
    ("logging", "py:module", "library/logging.html#module-$"),
    ("multiprocessing", "py:module", "library/multiprocessing.html#module-$"),
    ("multiprocessing.pool.Pool", "py:class", "library/multiprocessing.html#$"),
    ("os.sched_getaffinity", "py:function", "library/os.html#$"),
    ("pickle", "py:module", "library/pickle.html#module-$"),
    ("traceback.format_exception", "py:function", "library/traceback.html#$"),
    ("typing.Any", "py:data", "library/typing.html#$"),
]

_TRIO_OBJECTS = [
    ("trio.CapacityLimiter", "py:class", "reference-core.html#$"),
    ("trio.Cancelled", "py:exception", "reference-core.html#$"),
    ("trio.ClosedResourceError", "py:exception", "reference-core.html#$"),
    ("trio.current_time", "py:function", "reference-core.html#$"),
    ("trio.fail_after", "py:function", "reference-core.html#$"),
    ("trio.move_on_after", "py:function", "reference-core.html#$"),
    ("trio.open_nursery", "py:function", "reference-core.html#$"),
    ("trio.run", "py:function", "reference-core.html#$"),
    ("trio.to_thread.run_sync", "py:function", "reference-core.html#$"),
    ("trio.from_thread.run", "py:function", "reference-core.html#$"),
    ("trio.lowlevel.start_guest_run", "py:function", "reference-lowlevel.html#$"),
    ("trio.lowlevel.FdStream", "py:class", "reference-lowlevel.html#$"),
    ("trio.lowlevel.notify_closing", "py:function", "reference-lowlevel.html#$"),
    ("trio.lowlevel.TrioToken", "py:class", "reference-lowlevel.html#$"),
]


def _write_inventory(
    path: Path, project: str, version: str, objects: list[tuple[str, str, str]]
) -> str:
    """Write a Sphinx ``objects.inv`` (format version 2) and return its path."""
    body = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in objects)
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + zlib.compress(body.encode()))
    return str(path)


_inventories = Path(__file__).parent / "_build" / "inventories"
intersphinx_mapping = {
    "python": (
        _PYTHON_URL,
        _write_inventory(
            _inventories / "python.inv", "Python", "3.11", _PYTHON_OBJECTS
        ),
    ),
    "trio": (
        _TRIO_URL,
        _write_inventory(_inventories / "trio.inv", "Trio", "", _TRIO_OBJECTS),
    ),
}


def _record_function_typehints(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Record a module-level function's type hints for the description.

    With Sphinx 9, sphinxcontrib-trio's function documenter (the one that
    renders ``async with open_pool(...) as pool``) no longer triggers the event
    on which autodoc records type hints, so functions lost their parameter
    types while methods kept them. Recording them from the docstring event,
    which does fire, puts them back.
    """
    if what == "function":
        from sphinx.ext.autodoc.typehints import record_typehints

        record_typehints(app, what, name, obj, options, "", "")  # type: ignore[arg-type]


def _hide_overloads(app: Sphinx) -> None:
    """Show the implementation's signature of overloaded methods.

    ``Pool.run_sync`` has overloads for type checkers only: they make passing
    an async function a type error (see ``triopool/_typing.py``). Readers call
    it one way, so the page shows the one signature with its defaults, as for
    the module-level functions (documented from ``triopool``, whose source has
    no overloads). autodoc caches one analyzer per module; emptying its
    overloads here, before any page is read, makes autodoc fall back to the
    implementation.
    """
    from sphinx.pycode import ModuleAnalyzer

    analyzer = ModuleAnalyzer.for_module("triopool._pool")
    analyzer.analyze()
    analyzer.overloads.clear()


def setup(app: Sphinx) -> None:
    app.connect("builder-inited", _hide_overloads)
    app.connect("autodoc-process-docstring", _record_function_typehints)

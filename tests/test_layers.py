"""The shape of triopool's import graph, read from the source (see DESIGN.md, "Layers").

The graph is built with :mod:`ast` from the files, so nothing is imported and
an import that only runs sometimes (inside a function, behind
``if TYPE_CHECKING:``) counts as much as one at the top of a module. That is
deliberate: a type-only or deferred import still means the importing module
cannot be read, checked or moved without the other, so a cycle through one is
a cycle in the design, merely hidden from the interpreter. (``_pool``, ``_map``
and the cluster pool once imported each other this way.)

Three checks:

- no cycle anywhere in ``triopool/``;
- no arrow up a floor: every module has a floor in :data:`FLOORS`, and
  imports only from its own floor or below;
- the worker side imports only the standard library and other worker-side
  modules, never trio or attrs (nor the package's ``__init__``, which imports
  trio). This complements the run-time check in ``test_child``: it names the
  offending line, and covers imports a test run might not reach. Here imports
  behind ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
import graphlib
import sys
from pathlib import Path

import attrs

import triopool

PACKAGE = Path(triopool.__file__).parent

#: Each module's floor, lowest first; a module imports only from its own floor
#: or below. A new module needs a line here: place it by what it may import.
FLOORS: dict[str, int] = {
    # Standard library only, used on both sides of the pipes.
    "_errors": 0,
    "_pipes": 0,
    "_protocol": 0,
    "_serialize": 0,
    "_chunksize": 0,
    "_faults": 0,
    "_typing": 0,
    "_inside": 0,
    "_handle": 0,
    "_refs": 0,
    # What the worker runs and the payloads it sends: still standard library.
    "_messages": 1,
    "_chunk": 1,
    "_child": 1,
    "_imports": 1,
    "_process": 1,
    "_forkserver_main": 1,
    "_cli_worker": 1,
    "_demo": 1,
    "_forwarder": 1,
    "_store": 1,
    "_dask_child": 1,
    # One process or one value: trio or attrs, and the floors below.
    "_context": 2,
    "_spawn": 2,
    "_forkserver": 2,
    "_worker": 2,
    "_config": 2,
    "_backend": 2,
    "_logs": 2,
    "_progress": 2,
    # The schedulers' parts, local and on a cluster engine, the counters (a
    # snapshot reads the jobs' counts), and the cut between the pool and its
    # scheduler (``_scheduler``).
    "_events": 3,
    "_stats": 3,
    "_hooks": 3,
    "_jobs": 3,
    "_pipeline": 3,
    "_outbox": 3,
    "_settle": 3,
    "_serve": 3,
    "_slots": 3,
    "_map": 3,
    "_map_call": 3,
    "_map_tasks": 3,
    "_map_input": 3,
    "_chunk_parts": 3,
    "_ray": 3,
    "_dask": 3,
    "_scheduler": 3,
    "_handles": 3,
    # The two schedulers: local worker processes, and a cluster engine.
    "_local": 4,
    "_cluster": 4,
    # The public face, the same over either scheduler.
    "_pool": 5,
    "_default": 6,
    "__init__": 6,
    # Users of the public API.
    "_cli": 7,
    "__main__": 8,
}

#: What runs in a worker process: never trio or attrs (they would slow every
#: start, and a worker must not need them).
WORKER_SIDE = frozenset(
    {
        "_child",
        "_imports",
        "_process",
        "_forkserver_main",
        "_cli_worker",
        "_demo",
        "_chunk",
        "_chunksize",
        "_errors",
        "_faults",
        "_pipes",
        "_protocol",
        "_serialize",
        "_messages",
        "_inside",
        "_forwarder",
        "_handle",
        "_refs",
        "_dask_child",
    }
)

#: What a worker-side module may import beyond the standard library: the
#: engine it runs under, which its workers have.
WORKER_SIDE_ENGINES: dict[str, frozenset[str]] = {
    "_dask_child": frozenset({"cloudpickle", "distributed"}),
}


@attrs.frozen
class Import:
    """One import statement's effect: ``source`` imports ``target``."""

    source: str  # a module of the package, "triopool._pool"
    target: str  # a module of the package, or an outside top-level name
    line: int
    type_checking: bool  # behind `if TYPE_CHECKING:`, so it never runs

    @property
    def internal(self) -> bool:
        return self.target == "triopool" or self.target.startswith("triopool.")


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root``, by dotted name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(
    node: ast.AST, *, type_checking: bool = False
) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """The import statements under ``node``, each with whether it sits behind
    ``if TYPE_CHECKING:``, at any depth (functions included)."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            found.append((child, type_checking))
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                found += _statements_of(statement, type_checking=True)
            for statement in child.orelse:
                found += _statements_of(statement, type_checking=type_checking)
        else:
            found += _statements(child, type_checking=type_checking)
    return found


def _statements_of(
    statement: ast.stmt, *, type_checking: bool
) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    if isinstance(statement, ast.Import | ast.ImportFrom):
        return [(statement, type_checking)]
    return _statements(statement, type_checking=type_checking)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """What module ``name`` (at ``path``) imports, resolved against ``modules``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for statement, type_checking in _statements(ast.parse(path.read_text(), path)):
        targets: list[str] = []
        if isinstance(statement, ast.Import):
            targets = [alias.name for alias in statement.names]
        else:
            if statement.level:
                base = package.rsplit(".", statement.level - 1)[0]
                base = f"{base}.{statement.module}" if statement.module else base
            else:
                base = statement.module or ""
            for alias in statement.names:
                # `from . import _map` imports the module; `from ._pool import
                # Pool` imports from one.
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if submodule in modules else base)
        for target in targets:
            if target not in modules:
                target = target.split(".")[0]  # outside the package
            if target != name:
                found.append(Import(name, target, statement.lineno, type_checking))
    return found


def import_graph(root: Path) -> tuple[dict[str, Path], list[Import]]:
    modules = module_names(root)
    edges = [
        edge
        for name, path in modules.items()
        for edge in imports_of(name, path, modules)
    ]
    return modules, edges


def find_cycle(edges: list[Import]) -> list[str] | None:
    """One import cycle among the package's modules, or None."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if edge.internal:
            graph.setdefault(edge.source, set()).add(edge.target)
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        cycle: list[str] = exc.args[1]
        return cycle
    return None


def floor_key(module: str) -> str:
    """The entry of :data:`FLOORS` for a module: ``triopool._cli.map`` is
    ``_cli``, the package itself is ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_graph_sees_relative_deferred_and_type_checking_imports() -> None:
    modules, edges = import_graph(PACKAGE)
    found = {(e.source, e.target, e.type_checking) for e in edges}
    # Module level, from a name in a module.
    assert ("triopool._pool", "triopool._config", False) in found
    # `from . import x`, and `from .. import x` in a subpackage.
    assert ("triopool._child", "triopool._protocol", False) in found
    assert ("triopool._cli.demo", "triopool._demo", False) in found
    assert ("triopool._cli.demo", "triopool", False) in found
    # Behind `if TYPE_CHECKING:`, where a worker module spells it its own way.
    assert ("triopool._child", "triopool._faults", True) in found
    # Outside packages, by their top-level name.
    assert ("triopool._worker", "trio", False) in found
    assert "triopool._cli.map" in modules


def test_a_cycle_is_found(tmp_path: Path) -> None:
    # The check must be able to fail: two modules that import each other,
    # one of them only for type checking and inside a function.
    package = tmp_path / "triopool"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._b import B\n"
    )
    (package / "_b.py").write_text("def f():\n    from . import _a\n")
    (package / "_c.py").write_text("from ._b import f\n")
    _, edges = import_graph(package)
    cycle = find_cycle(edges)
    assert cycle is not None
    assert set(cycle) == {"triopool._a", "triopool._b"}


def test_no_import_cycle() -> None:
    _, edges = import_graph(PACKAGE)
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(reversed(cycle or []))


def test_every_module_has_a_floor() -> None:
    modules, _ = import_graph(PACKAGE)
    missing = sorted({floor_key(m) for m in modules} - FLOORS.keys())
    assert missing == [], (
        f"place these modules in FLOORS (tests/test_layers.py): {missing}"
    )


def test_no_import_goes_up_a_floor() -> None:
    _, edges = import_graph(PACKAGE)
    upward = [
        f"{edge.source}:{edge.line} imports {edge.target}"
        for edge in edges
        if edge.internal
        and FLOORS.get(floor_key(edge.target), -1)
        > FLOORS.get(floor_key(edge.source), 99)
    ]
    assert upward == []


def test_the_pool_reaches_its_workers_only_through_a_scheduler() -> None:
    # The scheduler cut: the public face knows the Scheduler protocol and
    # which scheduler to make, not the machinery behind either; and the two
    # schedulers share nothing but what lies below them.
    _, edges = import_graph(PACKAGE)
    arrows = {(edge.source, edge.target) for edge in edges if edge.internal}
    machinery = {
        f"triopool.{name}"
        for name in ("_jobs", "_slots", "_serve", "_pipeline", "_worker", "_messages")
    }
    assert {t for s, t in arrows if s == "triopool._pool"} & machinery == set()
    assert ("triopool._local", "triopool._cluster") not in arrows
    assert ("triopool._cluster", "triopool._local") not in arrows
    assert ("triopool._pool", "triopool._scheduler") in arrows


def worker_side_violations(root: Path) -> list[str]:
    """Each import of a worker-side module that reaches beyond the standard
    library and the worker side, as ``module:line imports target``."""
    modules, edges = import_graph(root)
    present = {f"triopool.{name}" for name in WORKER_SIDE} & modules.keys()
    return [
        f"{edge.source}:{edge.line} imports {edge.target}"
        for edge in edges
        if edge.source in present
        and not edge.type_checking
        and not (
            edge.target in present
            or (not edge.internal and edge.target in sys.stdlib_module_names)
            or edge.target
            in WORKER_SIDE_ENGINES.get(edge.source.removeprefix("triopool."), ())
        )
    ]


def test_the_worker_side_imports_only_the_standard_library_and_itself() -> None:
    assert (PACKAGE / "_child.py").exists()
    assert worker_side_violations(PACKAGE) == []


def test_the_worker_check_catches_trio_attrs_and_the_package(tmp_path: Path) -> None:
    package = tmp_path / "triopool"
    package.mkdir()
    (package / "__init__.py").write_text("import trio\n")
    (package / "_errors.py").write_text("import os\n")
    (package / "_pool.py").write_text("import trio\n")
    (package / "_child.py").write_text(
        "import os\n"
        "from typing import TYPE_CHECKING\n"
        "from . import _errors\n"
        "if TYPE_CHECKING:\n"
        "    import attrs\n"  # never runs: allowed
        "def f():\n"
        "    import trio\n"  # runs in the worker when f does
        "from triopool import _pool\n"
    )
    (package / "_protocol.py").write_text("import attrs\nfrom . import Pool\n")
    assert sorted(worker_side_violations(package)) == [
        "triopool._child:7 imports trio",
        "triopool._child:8 imports triopool._pool",
        "triopool._protocol:1 imports attrs",
        "triopool._protocol:2 imports triopool",
    ]

"""How the worker imports what its tasks need: the parent's main script, on
demand, and hooks that run once a later import completes.

A pickle that refers to a function or class of the parent's ``__main__``
makes the worker run that script (as ``__mp_main__``, like multiprocessing's
spawn), but only then: workers of programs that send no such function never
run it. ``AfterImport`` runs code once something imports a module, so a
worker pays for a module (``logging``, ``multiprocessing``) only if its tasks
use it. Standard library only, like the rest of the worker side; it never
imports trio or attrs.
"""

from __future__ import annotations

import pickle
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import importlib.machinery
    import types
    from collections.abc import Callable
    from typing import Any


# The parent's main script while this worker runs it (see MainFixup):
# triopool._context reads it to refuse to start a pool meanwhile.
importing_main: str | None = None


class MainFixup:
    """Makes functions defined in the parent's main script unpicklable here.

    Like multiprocessing's spawn, the parent's ``__main__`` is run again as
    ``__mp_main__`` (so its ``if __name__ == "__main__":`` block does not run),
    but only when a pickle first refers to it, so workers of programs that
    send no such function start without running the script at all.
    """

    def __init__(self, path: str | None, name: str | None) -> None:
        self.path = path
        self.name = name
        self.done = path is None and name is None
        self.error: str | None = None
        self._unpickler: Callable[..., pickle.Unpickler] | None = None

    def run(self) -> None:
        self.done = True
        import runpy

        module = type(sys)("__mp_main__")
        if self.name is not None:
            module.__dict__.update(
                runpy.run_module(self.name, run_name="__mp_main__", alter_sys=True)
            )
        elif self.path is not None:
            module.__dict__.update(runpy.run_path(self.path, run_name="__mp_main__"))
        sys.modules["__main__"] = sys.modules["__mp_main__"] = module

    def run_once(self) -> None:
        """Run the script; if it fails, say which file and why, now and for
        every later task that needs it (a script that failed may have done
        half of what it does at import: it is not run twice)."""
        global importing_main
        if self.error is None:
            importing_main = self.path or self.name
            try:
                self.run()
                return
            except BaseException as exc:
                self.error = (
                    f"the worker could not import the main script {importing_main} "
                    "to find a function or class defined there: "
                    f"{type(exc).__name__}: {exc}"
                )
                # Not done: later tasks that need the script get this error.
                self.done = False
                raise RuntimeError(self.error) from exc
            finally:
                importing_main = None
        raise RuntimeError(self.error)

    def unpickler(
        self, payload: bytes | bytearray | memoryview
    ) -> Callable[..., pickle.Unpickler] | None:
        """The unpickler for ``payload``: None (plain, fast ``pickle.loads``)
        unless it may refer to ``__main__`` before the script ran here."""
        # A pickle names the module of every global it refers to, so one
        # without the bytes "__main__" cannot need the script.
        if self.done or not mentions_main(payload):
            return None
        if self._unpickler is None:
            fixup = self

            class Unpickler(pickle.Unpickler):
                def find_class(self, module_name: str, name: str) -> Any:
                    if module_name == "__main__" and not fixup.done:
                        fixup.run_once()
                    return super().find_class(module_name, name)

            self._unpickler = Unpickler
        return self._unpickler


class AfterImport:
    """Runs ``then(module)`` once something in the worker imports ``name``.

    A worker whose tasks never use the module never imports it: this is how
    the worker learns the parent's ``multiprocessing`` authkey only if a task
    imports ``multiprocessing``, and forwards log records only if something
    imports ``logging`` (which costs every start milliseconds otherwise).
    ``then`` runs as the import completes, before the importer sees the
    module; at once if the module is imported already (a fork server's
    preload).
    """

    def __init__(self, name: str, then: Callable[[types.ModuleType], None]) -> None:
        self.name = name
        self.then = then

    @classmethod
    def install(
        cls, name: str, then: Callable[[types.ModuleType], None]
    ) -> AfterImport | None:
        """Run ``then`` now or after the import; the hook, if it waits."""
        module = sys.modules.get(name)
        if module is not None:
            then(module)
            return None
        hook = cls(name, then)
        sys.meta_path.insert(0, hook)
        return hook

    def uninstall(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(
        self, name: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path, target)
        loader = None if spec is None else spec.loader
        if loader is not None:
            exec_module = loader.exec_module
            then = self.then

            def exec_then(module: types.ModuleType) -> None:
                exec_module(module)
                then(module)

            # The loader is this import's own instance: patching it touches
            # nothing else.
            setattr(loader, "exec_module", exec_then)  # noqa: B010
        return spec


def use_parent_authkey(key: bytes) -> None:
    """Give ``multiprocessing`` here the parent's authkey, once a task imports it.

    A ``multiprocessing.Manager()`` proxy a task receives connects to its
    manager with ``current_process().authkey``; with the worker's own random
    key the manager rejects it.
    """

    def set_key(process: types.ModuleType) -> None:
        process.current_process().authkey = key

    AfterImport.install("multiprocessing.process", set_key)


def mentions_main(payload: bytes | bytearray | memoryview) -> bool:
    if isinstance(payload, memoryview):
        # The decoder hands out views of whole bytearrays: search the
        # bytearray, since `in` on a view compares items, not substrings.
        owner = payload.obj
        if isinstance(owner, bytes | bytearray) and len(owner) == payload.nbytes:
            return b"__main__" in owner
        return b"__main__" in payload.tobytes()
    return b"__main__" in payload

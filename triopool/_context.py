"""Where triopool's API may be called from, and the errors that say where not.

A pool belongs to the ``trio.run`` that opened it, and only Trio can drive it.
Three mistakes are common enough to deserve an error that names the fix
instead of one from deep inside Trio or a worker:

- starting a pool from a worker process while it imports the parent's main
  script (the script lacks ``if __name__ == "__main__":``);
- calling the API from asyncio (or from no event loop at all);
- using a pool from another thread's ``trio.run``.

Invariant: the checks made on every task cost one comparison on the path
where nothing is wrong; the work of describing the mistake happens only once
it is known to be one.
"""

from __future__ import annotations

import sys
import threading

import trio


def importing_main_script() -> str | None:
    """The main script this process imports as a worker, or ``None``.

    Set by the worker (``_imports.MainFixup``) while it runs the parent's main
    script to unpickle a function defined there.
    """
    imports = sys.modules.get("triopool._imports")
    if imports is None:
        return None
    script: str | None = getattr(imports, "importing_main", None)
    return script


def check_start(what: str) -> None:
    """Raise RuntimeError if ``what`` (starting a pool) may not happen here."""
    if importing_main_script() is not None:
        raise RuntimeError(
            f"{what} was called while this worker process was importing the main "
            "script: the script starts a pool when it is imported, so every worker "
            "would start pools of its own. Put the code that starts the pool "
            '(trio.run(...)) under `if __name__ == "__main__":`, so that it runs '
            "when the script is run and not when workers import it"
        )
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        raise not_in_trio(what) from None


def not_in_trio(what: str) -> RuntimeError:
    """The error for ``what`` called where no Trio task runs."""
    if _asyncio_running():
        found = "it was called from asyncio"
    else:
        found = "it was called outside trio.run"
    return RuntimeError(
        f"{what} needs Trio, but {found}. triopool runs on Trio's event loop: "
        "call it from code run by trio.run(). From an asyncio program, run the "
        "Trio part in a thread of its own (await asyncio.to_thread(trio.run, main)) "
        "or as a Trio guest run on the asyncio loop "
        "(trio.lowlevel.start_guest_run); see 'Using triopool from asyncio' in "
        "the docs"
    )


# What a pool remembers of the run that opened it. Trio runs at most one
# trio.run per thread at a time, and a pool lives only inside its run, so while
# the pool is open its thread tells its run apart from every other; comparing
# thread ids costs a fraction of asking Trio for the run's token.
current_thread = threading.get_ident


def other_run(what: str) -> RuntimeError:
    """The error for ``what`` called on a pool from outside the run that opened it."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return not_in_trio(what)
    return RuntimeError(
        f"{what} was used from another thread's trio.run: a pool belongs to "
        "the trio.run that opened it, and only that run's tasks may use it. Open "
        "a pool in this run, or hand the work to the pool's run (for example "
        "with trio.from_thread.run and that run's trio token)"
    )


def _asyncio_running() -> bool:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True

"""Contract tests for how workers come to exist (real processes)."""

from __future__ import annotations

import trio
import workerfuncs

import triopool


async def test_worker_imports_neither_trio_nor_attrs() -> None:
    # The bootstrap's lazy package must not load the real __init__ (and so
    # trio) when the child imports its private submodules.
    with trio.fail_after(30):
        async with triopool.open_pool(1) as pool:
            modules = await pool.run_sync(workerfuncs.loaded_modules)
    assert "triopool._child" in modules
    assert "trio" not in modules
    assert "attrs" not in modules
    assert "triopool._pool" not in modules

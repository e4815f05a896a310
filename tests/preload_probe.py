"""A module for ``forkserver_preload`` tests: it records each import.

Each import appends the importing process's pid to the file named by
``TRIOPOOL_TEST_PRELOAD_LOG``. Standard library only, like workerfuncs.
"""

from __future__ import annotations

import os

IMPORTED_IN = os.getpid()

_log = os.environ.get("TRIOPOOL_TEST_PRELOAD_LOG")
if _log:
    with open(_log, "a") as _file:
        _file.write(f"{IMPORTED_IN}\n")

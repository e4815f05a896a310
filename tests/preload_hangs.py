"""A module for ``forkserver_preload`` tests whose import never finishes."""

from __future__ import annotations

import time

time.sleep(3600)

"""``python -m triopool``: the command line (see ``triopool --help``)."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())

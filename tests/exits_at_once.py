"""A worker entry point (see ``triopool._spawn``) that exits at once."""

from __future__ import annotations

import os


def main(*numbers: int) -> None:
    os._exit(3)

"""Pipe capacity: widened for one large frame, then put back.

A Linux pipe holds 64 KiB by default, so a large frame crosses in 64 KiB
steps, each a wake-up of the reader and of the writer: a 64 MiB task takes a
thousand round trips through the scheduler on each side. The writer of a
frame of at least :data:`LARGE_FRAME` bytes widens the pipe to
:data:`WIDE` (the most an unprivileged process may ask for, by default)
first; the parent puts both of a worker's pipes back once the answer has
arrived, when both are empty. Capacity is not kept: Linux counts it against
the user's pipe allowance (``fs.pipe-user-pages-soft``), which a pool of
many wide pipes would use up for every other program of that user.

Everything here is best effort: where the system refuses (another OS, an
allowance used up), frames cross at the default capacity.

This module imports only the standard library: the worker imports it.
"""

from __future__ import annotations

import fcntl
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

#: Frames at least this large widen their pipe.
LARGE_FRAME: Final = 1 << 20
#: The capacity a widened pipe gets.
WIDE: Final = 1 << 20
# fcntl's F_SETPIPE_SZ and F_GETPIPE_SZ (Linux only; absent elsewhere).
_SET: Final = getattr(fcntl, "F_SETPIPE_SZ", None)
_GET: Final = getattr(fcntl, "F_GETPIPE_SZ", None)
# The ioctl that counts the bytes waiting in a pipe (termios.FIONREAD, without
# importing termios in the worker).
_FIONREAD: Final = 0x541B if sys.platform.startswith("linux") else 0x4004667F
#: The most bytes a write to a pipe puts in it at once or not at all (POSIX
#: guarantees 512; Linux and macOS give 4096).
ATOMIC_WRITE: Final = 4096 if sys.platform.startswith("linux") else 512


def unread(fd: int) -> int:
    """How many bytes wait in the pipe ``fd`` is an end of (0 if unknown)."""
    try:
        return int.from_bytes(fcntl.ioctl(fd, _FIONREAD, b"\0\0\0\0"), sys.byteorder)
    except OSError:  # pragma: no cover - systems without FIONREAD on pipes
        return 0


def frame_size(pieces: list[bytes | memoryview]) -> int:
    """The bytes of an encoded frame (see ``_protocol.encode_frame``)."""
    return sum(memoryview(piece).nbytes for piece in pieces)


def capacity(fd: int) -> int | None:
    """The capacity of the pipe ``fd`` is an end of, if the system says."""
    if _GET is None:  # pragma: no cover - not Linux
        return None
    try:
        return fcntl.fcntl(fd, _GET)
    except OSError:
        return None


def widen(fd: int) -> int | None:
    """Widen the pipe to :data:`WIDE`; return its capacity before, or None
    if it was not widened (already wide, or refused)."""
    before = capacity(fd)
    if before is None or before >= WIDE or _SET is None:
        return None
    try:
        fcntl.fcntl(fd, _SET, WIDE)
    except OSError:
        return None  # the user's pipe allowance is used up: stay narrow
    return before


def narrow(fd: int, size: int) -> None:
    """Put the pipe back to ``size`` bytes if it is wider (it must hold no
    more than that: the caller knows it is empty)."""
    current = capacity(fd)
    if current is None or current <= size or _SET is None:
        return
    try:
        fcntl.fcntl(fd, _SET, size)
    except OSError:
        pass  # still holds data: stays wide until the next try

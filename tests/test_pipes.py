"""Pipe capacity for large frames (``_pipes``), alone and in a pool."""

from __future__ import annotations

import fcntl
import os

import trio

import triopool
from tests import workerfuncs as wf
from triopool import _pipes


def test_widen_then_narrow_a_pipe() -> None:
    read_end, write_end = os.pipe()
    try:
        before = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
        assert before < _pipes.WIDE
        assert _pipes.widen(write_end) == before
        assert _pipes.capacity(read_end) == _pipes.WIDE
        # Already wide: nothing to do, nothing to undo.
        assert _pipes.widen(write_end) is None
        # A pipe that holds more than the new size stays wide...
        os.write(write_end, b"x" * (before + 1))
        _pipes.narrow(read_end, before)
        assert _pipes.capacity(read_end) == _pipes.WIDE
        # ...until it is empty.
        os.read(read_end, _pipes.WIDE)
        _pipes.narrow(read_end, before)
        assert _pipes.capacity(write_end) == before
    finally:
        os.close(read_end)
        os.close(write_end)


def test_frame_size_counts_every_piece() -> None:
    assert (
        _pipes.frame_size([b"abc", memoryview(b"de"), memoryview(bytearray(5))]) == 10
    )


async def test_large_frames_leave_the_pipes_as_they_were(start_method: str) -> None:
    # Both ways: a large task (the parent widens the task pipe) and a large
    # result (the worker widens the result pipe); after each answer both
    # pipes are back to their capacity, and the data arrived whole.
    data = os.urandom(3 * _pipes.LARGE_FRAME)
    with trio.fail_after(60):
        async with triopool.open_pool(1) as pool:
            before = await pool.run_sync(wf.pipe_capacities)
            assert len(before) == 2
            assert max(before) < _pipes.WIDE
            assert await pool.run_sync(wf.identity, data) == data
            assert await pool.run_sync(wf.pipe_capacities) == before
            assert await pool.run_sync(os.urandom, 2 * _pipes.LARGE_FRAME) != b""
            assert await pool.run_sync(wf.pipe_capacities) == before

"""The floor: a blocking pool of raw pipes and pickle, with no event loop.

It does the least any process pool must do (pickle a task, write it to a
pipe, let a worker read, run and answer it, read and unpickle the answer) and
nothing else: no cancellation, no error handling, no supervision. Nothing
built on pipes and pickle can be faster, so it is the yardstick for the
others. With several tasks in flight it pipelines them, a fixed number per
worker, and collects answers round-robin (the tasks it is given are uniform).
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import subprocess
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

_HEADER = struct.Struct("<QI")
_LENGTH = struct.Struct("<Q")

# The worker: a loop of read frame, run, write frame. Kept in a string so the
# worker is a bare interpreter plus pickle and the workload module.
_CHILD = """\
import os, pickle, struct, sys
fd_in, fd_out = int(sys.argv[1]), int(sys.argv[2])
sys.path[:0] = sys.argv[3].split(os.pathsep)
from bench.floor import read_frame, write_frame
while True:
    message = read_frame(fd_in)
    if message is None:
        break
    fn, args = message
    write_frame(fd_out, fn(*args))
"""


def _read_exact(fd: int, view: memoryview) -> bool:
    while view:
        count = os.readv(fd, [view])
        if not count:
            return False
        view = view[count:]
    return True


def read_frame(fd: int) -> Any:
    """Read one pickled object (with out-of-band buffers); None at EOF."""
    head = bytearray(_HEADER.size)
    if not _read_exact(fd, memoryview(head)):
        return None
    size, nbuffers = _HEADER.unpack(head)
    lengths = bytearray(_LENGTH.size * nbuffers)
    _read_exact(fd, memoryview(lengths))
    payload = bytearray(size)
    _read_exact(fd, memoryview(payload))
    buffers = []
    for (length,) in _LENGTH.iter_unpack(lengths):
        buffer = bytearray(length)
        _read_exact(fd, memoryview(buffer))
        buffers.append(buffer)
    return pickle.loads(payload, buffers=buffers)


def write_frame(fd: int, obj: Any) -> None:
    """Write one object; large buffers go out of band, uncopied."""
    raws: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raws.append(buffer.raw())
        return False

    payload = pickle.dumps(obj, 5, buffer_callback=out_of_band)
    head = _HEADER.pack(len(payload), len(raws)) + b"".join(
        _LENGTH.pack(raw.nbytes) for raw in raws
    )
    for piece in (head + payload, *raws):
        view = memoryview(piece)
        while view:
            view = view[os.write(fd, view) :]


class FloorPool:
    """A fixed set of worker processes driven by blocking pipe I/O."""

    def __init__(self, workers: int) -> None:
        self._workers: list[tuple[subprocess.Popen[bytes], int, int]] = []
        path = os.pathsep.join(p or os.getcwd() for p in sys.path)
        for _ in range(workers):
            task_r, task_w = os.pipe()
            result_r, result_w = os.pipe()
            process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(task_r), str(result_w), path],
                pass_fds=(task_r, result_w),
            )
            os.close(task_r)
            os.close(result_w)
            self._workers.append((process, task_w, result_r))

    def close(self) -> None:
        """Close the task pipes (EOF ends each worker) and reap the workers."""
        for _, task_w, _ in self._workers:
            os.close(task_w)
        for process, _, result_r in self._workers:
            process.wait()
            os.close(result_r)
        self._workers = []

    def __enter__(self) -> FloorPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one task on the first worker and return its result."""
        _, task_w, result_r = self._workers[0]
        write_frame(task_w, (fn, args))
        return read_frame(result_r)

    def run_window(
        self, fn: Callable[..., Any], arglists: list[tuple[Any, ...]], window: int
    ) -> list[Any]:
        """Run every task with ``window`` in flight (pipelined per worker)."""
        pending = enumerate(arglists)
        per_worker = max(1, window // len(self._workers))
        # The indices of each worker's tasks in flight, oldest first: a worker
        # answers in order, so results land in input order.
        in_flight: list[collections.deque[int]] = [
            collections.deque() for _ in self._workers
        ]
        results: list[Any] = [None] * len(arglists)
        for index, (_, task_w, _) in enumerate(self._workers):
            for _ in range(per_worker):
                item = next(pending, None)
                if item is None:
                    break
                write_frame(task_w, (fn, item[1]))
                in_flight[index].append(item[0])
        while any(in_flight):
            for index, (_, task_w, result_r) in enumerate(self._workers):
                if not in_flight[index]:
                    continue
                results[in_flight[index].popleft()] = read_frame(result_r)
                item = next(pending, None)
                if item is not None:
                    write_frame(task_w, (fn, item[1]))
                    in_flight[index].append(item[0])
        return results

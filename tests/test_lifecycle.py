"""Signals and the pool's lifecycle, seen from outside: each test runs a Trio
program that uses a pool (``tests/lifecycle_program.py``) in its own process
group, signals it the way a terminal, a service manager or an OOM killer
would, and checks how the program ends and that its workers are gone.

The program is this test process's child and is always reaped here; its
workers are its children, so they are checked through ``/proc`` (gone, or a
zombie waiting for init).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import trio

import triopool
from tests import limitfuncs, workerfuncs
from tests.conftest import is_running
from triopool import _hooks

ROOT = Path(__file__).resolve().parent.parent


@attrs.define(eq=False)
class Program:
    """A running ``lifecycle_program`` and what it printed so far."""

    process: trio.Process
    stderr_path: Path
    lines: list[str] = attrs.Factory(list)
    _buffer: bytes = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    async def read_until(self, prefix: str, count: int = 1) -> list[str]:
        """Read stdout until ``count`` lines starting with ``prefix`` came."""
        assert self.process.stdout is not None
        while sum(line.startswith(prefix) for line in self.lines) < count:
            try:
                with trio.fail_after(30):
                    data = await self.process.stdout.receive_some()
            except trio.TooSlowError:
                raise AssertionError(
                    f"no {prefix!r} from the program: {self.lines!r} "
                    f"{self._buffer!r}\n{self.stderr()}"
                ) from None
            if not data:
                raise AssertionError(
                    f"the program ended before printing {prefix!r}: "
                    f"{self.lines!r}\n{self.stderr()}"
                )
            self._buffer += data
            *complete, self._buffer = self._buffer.split(b"\n")
            self.lines += [line.decode() for line in complete]
        return [line for line in self.lines if line.startswith(prefix)]

    async def read_rest(self) -> None:
        assert self.process.stdout is not None
        while data := await self.process.stdout.receive_some():
            self._buffer += data
        self.lines += [line.decode() for line in self._buffer.split(b"\n") if line]
        self._buffer = b""

    def value(self, prefix: str) -> object:
        (line,) = [line for line in self.lines if line.startswith(prefix + " ")]
        return json.loads(line.removeprefix(prefix + " "))

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    async def worker_pids(self) -> list[int]:
        (line,) = await self.read_until("workers ")
        return [int(pid) for pid in line.split()[1:]]


async def start(mode: str, tmp_path: Path) -> Program:
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tests.lifecycle_program", mode],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            # Its own process group, like a job in a shell: signalling the
            # group must not hit pytest.
            start_new_session=True,
        )
    return Program(process, stderr_path)


async def finish(program: Program) -> int:
    """Wait for the program to exit and read the rest of its output."""
    await program.read_rest()
    return await program.process.wait()


async def cleanup(program: Program) -> None:
    """Kill and reap the program (and so, by PDEATHSIG, its workers)."""
    with trio.CancelScope(shield=True):
        if program.process.returncode is None:
            try:
                os.killpg(program.pid, signal.SIGKILL)
            except ProcessLookupError:  # pragma: no cover - already gone
                pass
            await program.process.wait()
        assert program.process.stdout is not None
        await program.process.stdout.aclose()


def is_gone(pid: int) -> bool:
    """True if ``pid`` has exited: no such process, or a zombie."""
    return not is_running(pid)


async def wait_gone(pids: list[int], timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a bound on polling, reported by name
    with trio.move_on_after(timeout):
        # Polling: nothing signals the exit of another process's child.
        while not all(is_gone(pid) for pid in pids):  # noqa: ASYNC110
            await trio.sleep(0.05)
    alive = [pid for pid in pids if not is_gone(pid)]
    assert not alive, f"workers still running {timeout} s later: {alive}"


def count_tracebacks(text: str) -> int:
    return text.count("Traceback (most recent call last)")


# Worker signal dispositions


async def test_workers_leave_stop_signals_to_the_parent() -> None:
    with trio.fail_after(30):
        async with triopool.open_pool(1) as pool:
            state = await pool.run_sync(limitfuncs.signal_state)
            child = await pool.run_sync(limitfuncs.exec_child_sigterm)
            modules = await pool.run_sync(workerfuncs.loaded_modules)
    assert state == {
        "sigint_ignored": True,
        # A handler, not SIG_IGN: programs a task starts get the default
        # action back at exec.
        "sigterm_default": False,
        "sigterm_ignored": False,
        # Blocked by the parent while the worker started, unblocked since.
        "blocked": [],
    }
    assert child == str(int(signal.SIG_DFL))
    # A worker starts fast and is interrupted by nothing while it starts:
    # it imports neither trio nor attrs.
    assert "trio" not in modules
    assert "attrs" not in modules


# 5. Ctrl-C


async def test_ctrl_c_while_the_main_task_waits_for_a_task(tmp_path: Path) -> None:
    with trio.fail_after(60):
        program = await start("one-busy", tmp_path)
        try:
            workers = await program.worker_pids()
            await program.read_until("busy ")
            # A terminal sends SIGINT to the whole foreground process group.
            os.killpg(program.pid, signal.SIGINT)
            with trio.fail_after(15):
                returncode = await finish(program)
        finally:
            await cleanup(program)
        stderr = program.stderr()
        # Python re-raises SIGINT to exit when KeyboardInterrupt escapes.
        assert returncode == -signal.SIGINT, stderr
        assert count_tracebacks(stderr) == 1, stderr
        assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
        assert "Error" not in stderr, stderr
        # The pool reaped its workers itself, before its block was left (not
        # PR_SET_PDEATHSIG when the program exited).
        assert "children" in program.lines, program.lines
        assert all(is_gone(pid) for pid in workers)


async def test_ctrl_c_with_every_worker_busy(tmp_path: Path) -> None:
    with trio.fail_after(60):
        program = await start("all-busy", tmp_path)
        try:
            workers = await program.worker_pids()
            await program.read_until("busy ", 2)
            os.killpg(program.pid, signal.SIGINT)
            with trio.fail_after(15):
                returncode = await finish(program)
        finally:
            await cleanup(program)
        stderr = program.stderr()
        assert returncode != 0
        # The program's own nursery wraps the KeyboardInterrupt in a group:
        # one group traceback, with one leaf, the KeyboardInterrupt.
        assert stderr.count("Exception Group Traceback") == 1, stderr
        assert count_tracebacks(stderr) == 2, stderr
        assert stderr.count("KeyboardInterrupt") >= 1, stderr
        assert "Error" not in stderr.replace("ExceptionGroup", ""), stderr
        assert "children" in program.lines, program.lines
        assert all(is_gone(pid) for pid in workers)


# 6. SIGKILL of the parent


async def test_workers_die_with_a_parent_killed_by_sigkill(tmp_path: Path) -> None:
    with trio.fail_after(60):
        program = await start("one-busy", tmp_path)
        try:
            workers = await program.worker_pids()
            (busy_line,) = await program.read_until("busy ")
            busy = int(busy_line.split()[1])
            (idle,) = set(workers) - {busy}
            assert not is_gone(busy)
            assert not is_gone(idle)
            # Only the parent: nothing signals the workers.
            os.kill(program.pid, signal.SIGKILL)
            assert await finish(program) == -signal.SIGKILL
        finally:
            await cleanup(program)
        await wait_gone([busy, idle])
        assert program.stderr() == ""


# 7. Process-group SIGTERM


async def test_group_sigterm_with_the_default_action(tmp_path: Path) -> None:
    """A program that does not handle SIGTERM dies of it at once; its workers,
    which leave SIGTERM to their parent, die with it."""
    with trio.fail_after(60):
        program = await start("all-busy", tmp_path)
        try:
            workers = await program.worker_pids()
            await program.read_until("busy ", 2)
            os.killpg(program.pid, signal.SIGTERM)
            with trio.fail_after(15):
                returncode = await finish(program)
        finally:
            await cleanup(program)
        assert returncode == -signal.SIGTERM
        await wait_gone(workers)
        assert program.stderr() == ""


async def test_group_sigterm_lets_a_program_drain_its_tasks(tmp_path: Path) -> None:
    """Workers keep running through a process-group SIGTERM, so a program
    that shuts down gracefully gets its running tasks' results, and the pool
    reports no lost worker and no failed task."""
    with trio.fail_after(60):
        program = await start("drain-on-sigterm", tmp_path)
        try:
            workers = await program.worker_pids()
            busy = await program.read_until("busy ", 2)
            os.killpg(program.pid, signal.SIGTERM)
            with trio.fail_after(30):
                returncode = await finish(program)
        finally:
            await cleanup(program)
        stderr = program.stderr()
        assert returncode == 0, stderr
        assert stderr == ""
        # Both tasks were running when the signal came, and finished.
        assert program.value("signalled") == 2
        assert program.value("results") == sorted(int(b.split()[1]) for b in busy)
        stats = program.value("stats")
        assert isinstance(stats, dict)
        del stats["tasks_completed"]  # learning the pids ran tasks too
        assert stats == {
            "tasks_failed": 0,
            "tasks_cancelled": 0,
            "workers_lost": 0,
            "workers_alive": 0,
        }
        assert all(is_gone(pid) for pid in workers)


async def test_group_sigterm_lets_a_program_cancel_its_tasks(tmp_path: Path) -> None:
    """A program that cancels its work on SIGTERM gets the workers killed by
    the cancellation, quietly, and exits normally."""
    with trio.fail_after(60):
        program = await start("cancel-on-sigterm", tmp_path)
        try:
            workers = await program.worker_pids()
            await program.read_until("busy ", 2)
            os.killpg(program.pid, signal.SIGTERM)
            with trio.fail_after(15):
                returncode = await finish(program)
        finally:
            await cleanup(program)
        stderr = program.stderr()
        assert returncode == 0, stderr
        assert stderr == ""
        assert program.value("signalled") == 2
        assert program.value("results") == []
        stats = program.value("stats")
        assert isinstance(stats, dict)
        assert stats["tasks_cancelled"] == 2
        assert stats["tasks_failed"] == 0
        assert stats["workers_alive"] == 0
        assert all(is_gone(pid) for pid in workers)


async def test_sigterm_to_a_worker_alone_is_ignored(tmp_path: Path) -> None:
    """SIGTERM is the parent's business even when it reaches only a worker;
    SIGKILL is the way to end one worker by hand."""
    with trio.fail_after(60):
        program = await start("drain-on-sigterm", tmp_path)
        try:
            (busy_line, _) = await program.read_until("busy ", 2)
            busy = int(busy_line.split()[1])
            os.kill(busy, signal.SIGTERM)
            os.kill(program.pid, signal.SIGTERM)
            with trio.fail_after(30):
                returncode = await finish(program)
        finally:
            await cleanup(program)
        assert returncode == 0, program.stderr()
        assert busy in program.value("results")  # type: ignore[operator]


async def test_keyboard_interrupt_in_a_pool_task_leaves_as_itself() -> None:
    """Trio delivers a Ctrl-C to whatever task runs when it comes, possibly
    one of the pool's own. It must still leave the block as itself, even
    though the caller whose task it interrupted failed meanwhile."""
    armed = False

    def interrupt(event: _hooks.Trace) -> None:
        # Raised in the worker's owning task, as it receives a frame.
        if armed and event.kind == "received":
            raise KeyboardInterrupt

    async def use_pool() -> None:
        nonlocal armed
        async with triopool.open_pool(1) as pool:
            await pool.run_sync(workerfuncs.getpid)
            armed = True
            await pool.run_sync(workerfuncs.getpid)

    with (
        trio.fail_after(30),
        _hooks.installed(trace=interrupt),
        pytest.raises(KeyboardInterrupt),
    ):
        await use_pool()

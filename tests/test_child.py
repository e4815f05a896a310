"""The worker process as its parent sees it: imports, fds, signals, paths."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest
import trio

import triopool
from tests import workerfuncs as wf
from tests.conftest import fd_target, open_fds, worker_channels

if TYPE_CHECKING:
    from pathlib import Path

TIMEOUT = 60

# As /proc shows it: the file each worker holds open read-only in one test.
WORKERFUNCS_FILE = os.path.realpath(wf.__file__)

# Every test runs once per start method (see conftest.start_method).
pytestmark = pytest.mark.usefixtures("start_method")


async def test_worker_never_imports_trio_or_attrs() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            modules = await pool.run_sync(wf.loaded_modules)
    assert "triopool._child" in modules
    assert "tests.workerfuncs" in modules
    for heavy in ("trio", "attrs", "attr", "triopool._pool", "outcome", "sniffio"):
        assert heavy not in modules


async def test_worker_holds_only_its_own_pipes() -> None:
    # A pipe and a socket of the parent program, inheritable on purpose: no
    # worker may hold them, nor any other pipe or socket the parent had.
    parent_pipe = os.pipe()
    parent_socks = socket.socketpair()
    fds: dict[int, dict[int, tuple[str, bool]]] = {}
    try:
        for fd in (*parent_pipe, *(sock.fileno() for sock in parent_socks)):
            os.set_inheritable(fd, True)
        parent_channels = {fd_target(fd) for fd in open_fds()} - {None}
        assert {fd_target(fd) for fd in parent_pipe} <= parent_channels
        with trio.fail_after(TIMEOUT):
            # Each worker also holds a file open read-only, as a newer libffi
            # does: that is the worker's business, not a leak.
            async with (
                triopool.open_pool(
                    3, initializer=wf.hold_open_read_only, initargs=(wf.__file__,)
                ) as pool,
                trio.open_nursery() as nursery,
            ):

                async def collect() -> None:
                    pid, targets = await pool.run_sync(wf.pid_and_fd_targets)
                    fds.setdefault(pid, targets)

                for _ in range(30):
                    nursery.start_soon(collect)
    finally:
        os.close(parent_pipe[0])
        os.close(parent_pipe[1])
        for sock in parent_socks:
            sock.close()
    held = (WORKERFUNCS_FILE, True)
    pipes_by_worker = []
    for targets in fds.values():
        assert held in targets.values(), targets
        own = worker_channels(targets)
        # Exactly two channels besides 0, 1 and 2, both pipes, none the parent's.
        assert len(own) == 2, targets
        assert all(target.startswith("pipe:") for target in own), targets
        assert not own & parent_channels, targets
        pipes_by_worker.append(own)
    # No worker holds another worker's pipe.
    for i, mine in enumerate(pipes_by_worker):
        for theirs in pipes_by_worker[i + 1 :]:
            assert not mine & theirs


async def test_worker_ignores_sigint_and_shares_path_and_cwd() -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            assert await pool.run_sync(wf.sigint_disposition) is True
            path, cwd = await pool.run_sync(wf.sys_path_and_cwd)
    assert path == sys.path
    assert cwd == os.getcwd()


async def test_workers_use_the_cwd_of_their_start(tmp_path: Path) -> None:
    old = os.getcwd()
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, max_tasks_per_child=1) as pool:
            await pool.run_sync(wf.add, 1, 1)
            os.chdir(tmp_path)
            try:
                # The replacement worker starts after the chdir.
                _, cwd = await pool.run_sync(wf.sys_path_and_cwd)
            finally:
                os.chdir(old)
    assert cwd == str(tmp_path)


SCRIPT = """
    import sys
    import trio
    import triopool

    # Read when the script is imported: in the workers too, where it runs
    # again (as __mp_main__) with the parent's sys.argv.
    START_METHOD = sys.argv[1]

    class Point:
        def __init__(self, x):
            self.x = x

    def double(point):
        return Point(point.x * 2), START_METHOD

    async def main():
        async with triopool.open_pool(2, start_method=START_METHOD) as pool:
            result, seen = await pool.run_sync(double, Point(21))
            print("result", result.x, type(result).__name__, seen)

    if __name__ == "__main__":
        trio.run(main)
"""


def test_functions_from_the_main_script_work(tmp_path: Path, start_method: str) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(script), start_method],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"result 42 Point {start_method}"
    assert done.stderr == ""


def test_functions_from_a_main_module_run_with_dash_m(
    tmp_path: Path, start_method: str
) -> None:
    (tmp_path / "user_module.py").write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-m", "user_module", start_method],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"result 42 Point {start_method}"


async def test_a_task_can_use_the_public_package_in_the_worker() -> None:
    # The worker starts without triopool/__init__ (no trio); the first public
    # name a task asks for loads the whole package.
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            assert await pool.run_sync(wf.busy_loop, 0.01) == "finished"
            modules = await pool.run_sync(wf.loaded_modules)
            assert "triopool._errors" in modules
            with_pool = await pool.run_sync(wf.public_name_in_worker)
    assert with_pool == "open_pool"


MANAGER_SCRIPT = """
    import multiprocessing
    import sys
    import trio
    import triopool

    def record(shared_dict, shared_list, key):
        shared_dict[key] = key * 2
        shared_list.append(key)
        return len(shared_dict)

    async def main(shared_dict, shared_list):
        async with triopool.open_pool(2, start_method=sys.argv[1]) as pool:
            async with trio.open_nursery() as nursery:
                for key in range(4):
                    nursery.start_soon(
                        pool.run_sync, record, shared_dict, shared_list, key
                    )

    if __name__ == "__main__":
        with multiprocessing.Manager() as manager:
            shared_dict, shared_list = manager.dict(), manager.list()
            trio.run(main, shared_dict, shared_list)
            print(sorted(shared_dict.items()), sorted(shared_list))
"""


def test_manager_proxies_work_as_arguments(tmp_path: Path, start_method: str) -> None:
    # A proxy connects back to its manager with the authkey of the process it
    # is in: the workers must have the parent's.
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(MANAGER_SCRIPT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(script), start_method],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[(0, 0), (1, 2), (2, 4), (3, 6)] [0, 1, 2, 3]"


async def test_worker_imports_multiprocessing_only_for_a_task_that_does() -> None:
    import multiprocessing

    parent_key = bytes(multiprocessing.current_process().authkey)
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            modules = await pool.run_sync(wf.loaded_modules)
            worker_key = await pool.run_sync(wf.multiprocessing_authkey)
    assert "multiprocessing" not in modules
    assert worker_key == parent_key


async def test_worker_forked_with_multiprocessing_preloaded_has_the_parents_key() -> (
    None
):
    import multiprocessing

    parent_key = bytes(multiprocessing.current_process().authkey)
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(
            1, start_method="forkserver", forkserver_preload=["multiprocessing"]
        ) as pool:
            worker_key = await pool.run_sync(wf.multiprocessing_authkey)
    assert worker_key == parent_key

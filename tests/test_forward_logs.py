"""``forward_logs``: records that tasks and initializers log in real workers
reach the parent's loggers, with the worker's pid and slot, and only those
the parent's levels let through ever cross the pipe.

Records are matched by their structured fields (``step``, ``worker_pid``,
``worker_index``, ``levelno``), never by their text.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

import pytest
import trio

import triopool
from tests import logfuncs as lf
from tests import workerfuncs as wf

if TYPE_CHECKING:
    from collections.abc import Iterator

TIMEOUT = 60

pytestmark = pytest.mark.usefixtures("start_method")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def from_workers(self) -> list[logging.LogRecord]:
        return [r for r in self.records if hasattr(r, "step")]


@pytest.fixture
def records() -> Iterator[Records]:
    """A handler on the parent's root logger, which is at INFO for the test."""
    root = logging.getLogger()
    handler = Records()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_records_arrive_with_the_worker_and_respect_levels(
    records: Records,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            made = await pool.run_sync(lf.log_levels)
            info = await pool.run_sync(lf.where)
    # DEBUG is below the parent's INFO: the worker never even made it.
    assert made == {"INFO": 1, "WARNING": 1, "ERROR": 1}
    got = records.from_workers()
    assert [r.step for r in got] == [logging.INFO, logging.WARNING, logging.ERROR]  # type: ignore[attr-defined]
    for record in got:
        assert record.name == "tests.logfuncs"
        assert record.worker_pid == info.pid  # type: ignore[attr-defined]
        assert record.worker_index == 0  # type: ignore[attr-defined]
        assert record.process == info.pid
        assert record.args is None
        assert record.getMessage() == record.msg


async def test_a_logger_level_set_in_the_parent_reaches_the_worker(
    records: Records,
) -> None:
    logger = logging.getLogger("tests.logfuncs.verbose")
    logger.setLevel(logging.DEBUG)
    try:
        with trio.fail_after(TIMEOUT):
            async with triopool.open_pool(1) as pool:
                made = await pool.run_sync(lf.log_levels, "tests.logfuncs.verbose")
                quiet = await pool.run_sync(lf.log_levels, "tests.logfuncs.quiet")
    finally:
        logger.setLevel(logging.NOTSET)
    assert made == {"DEBUG": 1, "INFO": 1, "WARNING": 1, "ERROR": 1}
    assert quiet == {"INFO": 1, "WARNING": 1, "ERROR": 1}
    by_name: dict[str, list[int]] = {}
    for record in records.from_workers():
        by_name.setdefault(record.name, []).append(record.levelno)
    assert by_name == {
        "tests.logfuncs.verbose": [10, 20, 30, 40],
        "tests.logfuncs.quiet": [20, 30, 40],
    }


async def test_a_level_raised_later_in_the_parent_holds_at_once(
    records: Records,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            await pool.run_sync(lf.where)  # the worker started with INFO
            logging.getLogger().setLevel(logging.ERROR)
            made = await pool.run_sync(lf.log_levels)
    # The worker still makes INFO records; the parent drops what is now below.
    assert made == {"INFO": 1, "WARNING": 1, "ERROR": 1}
    assert [r.levelno for r in records.from_workers()] == [logging.ERROR]


async def test_an_exception_keeps_its_traceback_text(records: Records) -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            assert await pool.run_sync(lf.log_exception) == "logged"
    (record,) = records.from_workers()
    assert record.step == "exception"  # type: ignore[attr-defined]
    assert record.exc_info is None
    assert record.exc_text is not None
    assert "ZeroDivisionError" in record.exc_text
    assert "log_exception" in record.exc_text  # the worker's frame
    assert record.exc_text in logging.Formatter().format(record)


async def test_unpicklable_arguments_and_fields_never_break_a_task(
    records: Records,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            assert await pool.run_sync(lf.log_unpicklable) == "logged"
            assert await pool.run_sync(lf.log_then_return, 5) == 5
    unpicklable, returning = records.from_workers()
    assert unpicklable.thing == "<Unpicklable>"  # type: ignore[attr-defined]
    assert unpicklable.msg == "thing <Unpicklable>"
    assert returning.step == "return"  # type: ignore[attr-defined]


async def test_the_initializer_logs_and_a_logger_the_parent_never_made(
    records: Records,
) -> None:
    name = f"never.made.{uuid.uuid4().hex}"
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(
            1, initializer=lf.log_in_initializer, initargs=(name,)
        ) as pool:
            info = await pool.run_sync(lf.where)
    (record,) = records.from_workers()
    assert record.step == "init"  # type: ignore[attr-defined]
    assert record.name == name
    assert (record.worker_pid, record.worker_index) == (info.pid, 0)  # type: ignore[attr-defined]


async def test_records_from_threads_and_from_an_idle_worker(
    records: Records,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            assert await pool.run_sync(lf.log_from_thread, 200) == 200
            assert await pool.run_sync(lf.log_later, 0.3) == "returned"
            # The record comes while the pool has nothing to say: poll for it.
            while not any(getattr(r, "step", None) == "idle" for r in records.records):  # noqa: ASYNC110
                await trio.sleep(0.05)
            assert await pool.run_sync(lf.log_then_return, 1) == 1
            stats = pool.statistics()
    steps = [r.step for r in records.from_workers()]  # type: ignore[attr-defined]
    assert sorted(s for s in steps if isinstance(s, int)) == list(range(-200, 200))
    assert steps[-2:] == ["idle", "return"]
    # A record between tasks is no stray answer: the worker served on.
    assert stats.workers_lost == 0
    assert stats.workers_started == 1


async def test_off_the_worker_keeps_its_own_logging(
    records: Records, capfd: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, forward_logs=False) as pool:
            made = await pool.run_sync(lf.log_levels)
    # The worker's own default (WARNING), not the parent's INFO; nothing sent.
    assert made == {"WARNING": 1, "ERROR": 1}
    assert records.from_workers() == []


def test_forward_logs_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="forward_logs"):
        triopool.open_pool(1, forward_logs=1)  # type: ignore[arg-type]


async def test_a_soft_limit_never_cuts_a_record(records: Records) -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            count = await pool.run_sync(lf.log_until_soft_limit, soft_time_limit=0.3)
            assert await pool.run_sync(lf.log_then_return, 2) == 2
            stats = pool.statistics()
    steps = [r.step for r in records.from_workers()]  # type: ignore[attr-defined]
    # The limit may strike in the call that sent the last record, before the
    # task counted it.
    assert count > 0
    assert steps[-1] == "return"
    assert steps[:-1] == ["busy"] * (len(steps) - 1)
    assert count <= len(steps) - 1 <= count + 1
    # Every frame whole: the worker served on.
    assert stats.workers_lost == 0


async def test_a_fork_server_that_preloaded_logging_forwards_too(
    records: Records,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(
            1, start_method="forkserver", forkserver_preload=["logging"]
        ) as pool:
            made = await pool.run_sync(lf.log_levels)
    assert made == {"INFO": 1, "WARNING": 1, "ERROR": 1}
    assert len(records.from_workers()) == 3


async def test_a_worker_whose_tasks_never_log_never_imports_logging() -> None:
    # Forwarding starts when something in the worker imports logging: until
    # then it costs a worker nothing, not even the import.
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1) as pool:
            modules = await pool.run_sync(wf.loaded_modules)
            made = await pool.run_sync(lf.log_levels)
    assert "logging" not in modules
    assert "triopool._forwarder" not in modules
    # Imported by the next task: the parent's levels hold there at once.
    parent = logging.getLogger("tests.logfuncs").getEffectiveLevel()
    assert made == {
        logging.getLevelName(level): 1
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
        if level >= parent
    }


async def test_a_worker_that_configures_its_own_logging_keeps_its_records(
    records: Records,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with triopool.open_pool(1, initializer=lf.configure_own_logging) as pool:
            made = await pool.run_sync(lf.log_levels)
    # basicConfig() worked there (its level, DEBUG), and nothing was sent.
    assert made == {"DEBUG": 1, "INFO": 1, "WARNING": 1, "ERROR": 1}
    assert records.from_workers() == []

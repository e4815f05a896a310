"""Fault injection for the tests: make workers die or stall at chosen stages.

Off unless the environment variable ``TRIOPOOL_FAULTS`` is set. A worker reads
it once when it starts, the parent once when ``triopool._pool`` is imported
(tests replace ``triopool._pool._PARENT_FAULTS`` instead). When it is unset,
a worker's task loop is exactly the normal one and the parent pays one
``is None`` test of a module global per task: nothing else runs.

This module imports only the standard library: workers import it.

Syntax: ``stage=action[@modifier]...`` entries separated by ``,``.

Worker stages (in ``_child``):

- ``before_up``: after the initializer, before the worker sends UP.
- ``after_up``: just after the worker sent UP, before it reads a task.
- ``after_receive``: after a task frame arrived, before it is unpickled.
- ``mid_result``: while writing an answer frame: about half of it is written,
  then the action runs (``kill``/``exit``: the frame stays cut).

Parent stages (in ``_pool``, on the slot that owns the worker):

- ``before_config``: between starting the process and sending its
  configuration (the start of the handshake).
- ``before_send``: after a slot took a task for its worker, before the task is
  written to the worker's pipe.

Actions: ``exit:N`` (``os._exit(N)``; worker stages only), ``kill`` (SIGKILL
the worker; in the parent also reap it, so its pipes are dead for sure),
``sleep:S`` (stall S seconds).

Several entries may name one stage; a worker runs all that are due, in
order (``after_up=sleep:1,after_up=exit:3`` stalls, then dies).

Modifiers: ``@once:PATH`` fires in the first process (or slot) that manages
to create the file ``PATH`` and nowhere else; ``@task:N`` fires only for the
N-th task of a worker (per-task stages).

Example: ``TRIOPOOL_FAULTS="before_up=sleep:5@once:/tmp/x,mid_result=kill@task:2"``
"""

from __future__ import annotations

import os
import signal
import time

ENV = "TRIOPOOL_FAULTS"

WORKER_STAGES = frozenset({"before_up", "after_up", "after_receive", "mid_result"})
PARENT_STAGES = frozenset({"before_config", "before_send"})
PER_TASK_STAGES = frozenset({"after_receive", "mid_result", "before_send"})


class Fault:
    """One injection: what to do at one stage, and when."""

    def __init__(
        self,
        stage: str,
        action: str,
        argument: float,
        once_path: str | None,
        task: int | None,
    ) -> None:
        self.stage = stage
        self.action = action
        self.argument = argument
        self.once_path = once_path
        self.task = task

    def __repr__(self) -> str:
        return f"<Fault {self.stage}={self.action}:{self.argument:g}>"

    def applies(self, task: int | None) -> bool:
        """Whether the fault fires now (claims its ``once`` file if it has one)."""
        if self.task is not None and task != self.task:
            return False
        if self.once_path is not None:
            try:
                fd = os.open(self.once_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            os.close(fd)
        return True

    def act_in_worker(self) -> None:
        """Run the action in the worker process."""
        if self.action == "sleep":
            time.sleep(self.argument)
        elif self.action == "exit":
            os._exit(int(self.argument))
        else:
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # pragma: no cover - the signal arrives first


class Plan:
    """The parsed faults, by stage."""

    def __init__(self, faults: list[Fault]) -> None:
        self.by_stage: dict[str, list[Fault]] = {}
        for fault in faults:
            self.by_stage.setdefault(fault.stage, []).append(fault)

    def __bool__(self) -> bool:
        return bool(self.by_stage)

    def has(self, *stages: str) -> bool:
        return any(stage in self.by_stage for stage in stages)

    def due(self, stage: str, task: int | None = None) -> Fault | None:
        """The fault to fire at ``stage`` now, if any."""
        for fault in self.by_stage.get(stage, ()):
            if fault.applies(task):
                return fault
        return None

    def fire_in_worker(self, stage: str, task: int | None = None) -> None:
        """Run, in order, every fault due at ``stage`` (``sleep`` then ``exit``)."""
        for fault in self.by_stage.get(stage, ()):
            if fault.applies(task):
                fault.act_in_worker()


def parse(spec: str, stages: frozenset[str] | None = None) -> Plan:
    """Parse a ``TRIOPOOL_FAULTS`` value, keeping only entries for ``stages``.

    Raises:
        ValueError: the text is malformed (a typo must not silently disable a
            test's fault).
    """
    faults = []
    for entry in spec.split(","):
        entry = entry.strip()
        if not entry:
            continue
        head, *modifiers = entry.split("@")
        stage, sep, action_text = head.partition("=")
        if not sep or stage not in WORKER_STAGES | PARENT_STAGES:
            raise ValueError(f"{ENV}: unknown stage in {entry!r}")
        action, _, arg_text = action_text.partition(":")
        if action not in ("exit", "kill", "sleep"):
            raise ValueError(f"{ENV}: unknown action in {entry!r}")
        if action == "exit" and stage in PARENT_STAGES:
            raise ValueError(f"{ENV}: exit is for worker stages, in {entry!r}")
        if action != "kill" and not arg_text:
            raise ValueError(f"{ENV}: {action} needs an argument, in {entry!r}")
        argument = float(arg_text) if arg_text else 0.0
        once_path = None
        task = None
        for modifier in modifiers:
            name, _, value = modifier.partition(":")
            if name == "once" and value:
                once_path = value
            elif name == "task" and value:
                task = int(value)
            else:
                raise ValueError(f"{ENV}: unknown modifier in {entry!r}")
        if stages is None or stage in stages:
            faults.append(Fault(stage, action, argument, once_path, task))
    return Plan(faults)


def from_environment(stages: frozenset[str]) -> Plan | None:
    """The faults for ``stages`` from the environment, or None if there are none."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    plan = parse(spec, stages)
    return plan if plan else None

"""Seconds of each task of a playbook run, for the converge bench (bench/converge_bench.py).

One JSON line per task to the file named by SLIPWAY_TASK_TIMES: its role, name and action, and
the seconds from its start to the start of the next task, the next play or the end of the run.
Under the linear strategy a task ends on every host before the next begins, so they add up to
the run less the plays' own set-up. The bench enables it on the command line; ansible.cfg
does not.
"""

from __future__ import annotations

import json
import os
import time
from typing import IO, Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: slipway_task_times
type: aggregate
short_description: Writes each task's seconds to the file named by SLIPWAY_TASK_TIMES
description:
  - One JSON line per task, C({"role", "task", "action", "seconds"}); used by the converge bench.
requirements:
  - enabled in callbacks_enabled, and SLIPWAY_TASK_TIMES set
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "slipway_task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        path = os.environ.get("SLIPWAY_TASK_TIMES")
        self._out: IO[str] | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
        self._task: dict[str, str] | None = None
        self._started = 0.0

    def _end_task(self) -> None:
        if self._task is not None and self._out is not None:
            seconds = round(time.monotonic() - self._started, 3)
            self._out.write(json.dumps({**self._task, "seconds": seconds}) + "\n")
        self._task = None

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._end_task()
        role = task._role.get_name() if task._role else ""
        name = task.get_name().removeprefix(f"{role} : ")
        self._task = {"role": role, "task": name, "action": task.action}
        self._started = time.monotonic()

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._end_task()

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._end_task()
        if self._out is not None:
            self._out.close()
            self._out = None

"""Appends one JSON line per task to $BENCH_TASK_TIMES: task name and wall seconds."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: task_times
    type: aggregate
    short_description: task durations for bench/transfer.py
    description: Writes the wall time of every task to the file named by BENCH_TASK_TIMES.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._task = None
        self._started = None

    def _flush(self):
        path = os.environ.get("BENCH_TASK_TIMES")
        if self._task is not None and path:
            with open(path, "a") as out:
                out.write(json.dumps({"task": self._task, "secs": time.monotonic() - self._started}) + "\n")
        self._task = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._flush()
        self._task = task.get_name()
        self._started = time.monotonic()

    def v2_playbook_on_stats(self, stats):
        self._flush()

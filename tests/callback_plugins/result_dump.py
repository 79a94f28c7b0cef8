"""Test-only callback: append every task result as one JSON line to the file named by $FERROGEN_RESULTS.

ansible-core 2.19 ships no json stdout callback (it lives in ansible.posix), so the integration
tests enable this small aggregate callback next to the default stdout one. The results handed to
callbacks are already censored for no_log tasks, so nothing secret lands in the file.
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: result_dump
    type: aggregate
    short_description: write task results as JSON lines to $FERROGEN_RESULTS
    description:
      - Used by ferrogen's integration tests.
    requirements:
      - enable in callbacks_enabled
"""

# Facts are large and not what the tests compare; keep only their names.
_FACT_KEYS = ("ansible_facts",)


def _summarize(res: dict) -> dict:
    out = {}
    for key, value in res.items():
        if key in _FACT_KEYS and isinstance(value, dict):
            out[key] = {"_keys": sorted(value)}
        elif key == "results" and isinstance(value, list):
            out[key] = [_summarize(v) if isinstance(v, dict) else v for v in value]
        else:
            out[key] = value
    return out


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "result_dump"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._path = os.environ.get("FERROGEN_RESULTS")
        self._play = None

    def _write(self, status: str, result) -> None:
        if not self._path:
            return
        res = getattr(result, "result", None)
        if res is None:
            res = result._result
        task = result._task
        record = {
            "status": status,
            "play": self._play,
            "host": result._host.get_name(),
            "task": task.get_name(),
            "action": task.action,
            "ignore_errors": bool(getattr(task, "ignore_errors", False)),
            "changed": bool(res.get("changed", False)),
            "failed": status == "failed" or bool(res.get("failed", False)),
            "unreachable": status == "unreachable" or bool(res.get("unreachable", False)),
            "skipped": status == "skipped" or bool(res.get("skipped", False)),
            "rc": res.get("rc"),
            "stdout": res.get("stdout"),
            "stderr": res.get("stderr"),
            "msg": res.get("msg"),
            "result": _summarize(dict(res)),
        }
        with open(self._path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=repr, sort_keys=True) + "\n")

    def v2_playbook_on_play_start(self, play):
        self._play = play.get_name()

    def v2_runner_on_ok(self, result, *args, **kwargs):
        self._write("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False, *args, **kwargs):
        self._write("failed", result)

    def v2_runner_on_skipped(self, result, *args, **kwargs):
        self._write("skipped", result)

    def v2_runner_on_unreachable(self, result, *args, **kwargs):
        self._write("unreachable", result)

"""Test-only callback for the differential harness (tests/differential/): one JSON line per task
result and host, with what a playbook can observe of it, to the file named by
$FERROGEN_DIFFERENTIAL_RESULTS. Warnings and deprecations are kept as their message text, on
every ansible-core from 2.16 (result keys) to 2.19 and later (summary objects).
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: differential
    type: aggregate
    short_description: write observable task results as JSON lines to $FERROGEN_DIFFERENTIAL_RESULTS
    description:
      - Used by ferrogen's differential harness.
    requirements:
      - enable in callbacks_enabled
"""


def _message(entry) -> str:
    """The text of a warning or deprecation, whatever shape this ansible-core gives it."""
    event = getattr(entry, 'event', None)
    if event is not None:
        return str(getattr(event, 'msg', event))
    if isinstance(entry, dict):
        return str(entry.get('msg', entry))
    return str(entry)


def _plain(value):
    """JSON-able copy of a result: tagged strings and the like become plain values."""
    return json.loads(json.dumps(value, default=repr))


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'differential'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._path = os.environ.get('FERROGEN_DIFFERENTIAL_RESULTS')
        self._counter = 0

    def _write(self, status: str, result, item: bool = False) -> None:
        if not self._path:
            return
        res = getattr(result, 'result', None)
        if res is None:
            res = result._result
        warnings = getattr(result, 'warnings', None)
        if warnings is None:
            warnings = res.get('warnings') or []
        deprecations = getattr(result, 'deprecations', None)
        if deprecations is None:
            deprecations = res.get('deprecations') or []
        self._counter += 1
        record = {
            'seq': self._counter,
            'status': status,
            'item': item,
            'host': result._host.get_name(),
            'task': result._task.get_name(),
            'action': result._task.action,
            'warnings': [_message(w) for w in warnings],
            'deprecations': [_message(d) for d in deprecations],
            'result': _plain(dict(res)),
        }
        with open(self._path, 'a', encoding='utf-8') as fh:
            fh.write(json.dumps(record, sort_keys=True) + '\n')

    def v2_runner_on_ok(self, result, *args, **kwargs):
        self._write('ok', result)

    def v2_runner_on_failed(self, result, ignore_errors=False, *args, **kwargs):
        self._write('failed', result)

    def v2_runner_on_skipped(self, result, *args, **kwargs):
        self._write('skipped', result)

    def v2_runner_on_unreachable(self, result, *args, **kwargs):
        self._write('unreachable', result)

    def v2_runner_item_on_ok(self, result, *args, **kwargs):
        self._write('ok', result, item=True)

    def v2_runner_item_on_failed(self, result, *args, **kwargs):
        self._write('failed', result, item=True)

    def v2_runner_item_on_skipped(self, result, *args, **kwargs):
        self._write('skipped', result, item=True)

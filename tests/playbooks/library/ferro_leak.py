#!/usr/bin/python
# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test module: 'dirty' leaves every kind of trace a module can leave in its interpreter;
'check' reports which of them a later task can still see."""

from __future__ import annotations

import json
import os
import sys

from ansible.module_utils.basic import AnsibleModule

MARK = 'ferro-leak-mark'


def main():
    module = AnsibleModule(argument_spec={'mode': {'type': 'str', 'choices': ['dirty', 'check'], 'required': True}})
    if module.params['mode'] == 'dirty':
        os.environ['FERRO_LEAK'] = MARK
        os.chdir('/')
        sys.argv.append(MARK)
        sys.ferro_leak = MARK
        json.ferro_leak = MARK
        os.ferro_leak = MARK
        module.exit_json(changed=True, pid=os.getpid(), ppid=os.getppid())
    leaks = []
    if os.environ.get('FERRO_LEAK') == MARK:
        leaks.append('environment')
    if os.getcwd() == '/' and os.path.expanduser('~') != '/':
        leaks.append('cwd')
    if MARK in sys.argv:
        leaks.append('sys.argv')
    for name, mod in (('sys', sys), ('json', json), ('os', os)):
        if getattr(mod, 'ferro_leak', None) == MARK:
            leaks.append(f'{name} module state')
    if not sys.stdin.closed and sys.stdin.isatty():
        leaks.append('stdin is a terminal')
    module.exit_json(changed=False, leaks=leaks, pid=os.getpid(), ppid=os.getppid())


if __name__ == '__main__':
    main()

#!/usr/bin/python
"""Test module: says how module_utils greeting of ferrotest.alpha was loaded."""
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ferrotest.alpha.plugins.module_utils import greeting

if __name__ == '__main__':
    AnsibleModule(argument_spec={}).exit_json(
        changed=False, loader=type(greeting.__loader__).__name__, file=greeting.__file__)

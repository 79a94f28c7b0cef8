#!/usr/bin/python
# Test module for the differential harness: which Python runs modules, where, with what limits.
from __future__ import annotations

import os
import resource
import sys

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={})
    try:
        cwd = os.getcwd()
    except OSError as exc:
        cwd = 'unnamed: %s' % exc.strerror
    module.exit_json(
        executable=sys.executable,
        version=list(sys.version_info[:2]),
        cwd=cwd,
        nofile_soft=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        fg_var=os.environ.get('FG_VAR'),
    )


if __name__ == '__main__':
    main()

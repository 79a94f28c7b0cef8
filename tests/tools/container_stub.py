#!/usr/bin/env python3
"""Stand-in for a container tool that cannot run on the test machine (kubectl, lxc-attach,
jexec, ...). tests/test_containers.py copies it under the tool's name with a JSON file beside
it (NAME.json): the exact arguments ferrogen must pass, and what to do when they match.

mode "exec": the arguments must be the expected ones followed by `/bin/sh -c COMMAND`; the
stub then runs that command here, as the tool would have run it in the container, so the agent
comes up and the task runs. mode "pid": the arguments must be exactly the expected ones (a
setns pid lookup); the stub prints a pid of the transport that asked (its process group's
leader, the shell that then execs nsenter), in the form `print` gives.
Every call is appended to NAME.calls, one JSON list per line.
"""

import json
import os
import sys

config = json.loads(open(sys.argv[0] + '.json').read())
argv = sys.argv[1:]
with open(sys.argv[0] + '.calls', 'a') as calls:
    calls.write(json.dumps(argv) + '\n')
expected = config['expected']
if config['mode'] == 'pid':
    if argv != expected:
        sys.exit(f'stub: expected {expected}, got {argv}')
    print(config.get('print', '{pid}').format(pid=os.getpgrp()))
    sys.exit(0)
command = argv[len(expected):]
if argv[:len(expected)] != expected or len(command) != 3 or command[:2] != ['/bin/sh', '-c']:
    sys.exit(f'stub: expected {expected} + [/bin/sh, -c, COMMAND], got {argv}')
os.execv('/bin/sh', command)

"""ansible-playbook with ferrogen's ssh connection plugin loaded in the controller before any
worker forks: connection-only mode as it would run if Ansible let a connection plugin prepare
itself there, as a strategy does. bench.py's ferrogen-conn-floor engine runs playbooks through
it, to measure what a connection-only worker spends importing and resolving the plugin: the
difference between ferrogen-conn and ferrogen-conn-floor. Not a way to run ferrogen."""

from __future__ import annotations

import sys

from ansible.executor import playbook_executor
from ansible.plugins.loader import connection_loader

run_playbooks = playbook_executor.PlaybookExecutor.run


def run(self):
    # Where a hook in the controller would run: after the built-in plugins are loaded, whose
    # options ours reuse (PlaybookExecutor.run loads them first thing; again there, from cache).
    list(connection_loader.all(class_only=True))
    connection_loader.get("ferrogen.mux.ssh", class_only=True)
    return run_playbooks(self)


playbook_executor.PlaybookExecutor.run = run

if __name__ == "__main__":
    from ansible.cli.playbook import main

    sys.argv[0] = "ansible-playbook"
    sys.exit(main())

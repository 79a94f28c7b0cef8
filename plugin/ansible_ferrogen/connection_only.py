"""Connection-only mode: ferrogen's connection plugins under Ansible's own strategies.

The ferrogen strategies install, in the controller before workers fork, what spares actions
round trips on our connections (action_mixin, module_cache, speculation, fetch_action). Without one, the
worker that loads one of the collection's connection plugins installs the same for itself, and
its first call finds or starts the run's mux (run_mux.py). A worker runs one task, so it imports,
checks and installs only what that task uses: speculation only once the task turns out to run
the copy action, fetch_action only for the fetch action. Under a ferrogen strategy this finds everything installed already.
"""

from __future__ import annotations

import sys

from ansible.plugins.action import ActionBase

from ansible_ferrogen import action_mixin, ansible_internals, module_cache



def action_names(*names: str) -> frozenset[str]:
    """Every name Ansible may resolve the builtin actions `names` under."""
    return frozenset(f'{prefix}{name}' for prefix in ('', 'ansible.builtin.', 'ansible.legacy.') for name in names)


# The tasks that run the copy action (template runs it for the rendered file).
COPYING_ACTIONS = action_names('copy', 'template')
FETCHING_ACTIONS = action_names('fetch')


def runs(action: ActionBase, names: frozenset[str]) -> bool:
    task = action._task
    return task.action in names or getattr(task, 'resolved_action', None) in names


def install_speculation_for(action: ActionBase) -> None:
    """Install speculation, and warn about what of it is off, for a task that copies; other
    workers neither import it nor load the copy action. The action's class is patched before it
    runs."""
    if 'ansible_ferrogen.speculation' in sys.modules and sys.modules['ansible_ferrogen.speculation']._installed:
        return
    if runs(action, COPYING_ACTIONS):
        from ansible_ferrogen import speculation  # noqa: PLC0415 - only in workers whose task copies

        ansible_internals.start(speculation.OPTIMISATIONS)
        speculation.install()


def install_fetch_action_for(action: ActionBase) -> None:
    """Install fetch_action, and warn about what of it is off, for a task that fetches."""
    if 'ansible_ferrogen.fetch_action' in sys.modules and sys.modules['ansible_ferrogen.fetch_action']._installed:
        return
    if runs(action, FETCHING_ACTIONS):
        from ansible_ferrogen import fetch_action  # noqa: PLC0415 - only in workers whose task fetches

        ansible_internals.start(fetch_action.OPTIMISATIONS)
        fetch_action.install()


def init(original):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        install_speculation_for(self)
        install_fetch_action_for(self)

    __init__.ferrogen_connection_only = True
    return __init__


def install() -> None:
    action_mixin.install()
    module_cache.install()
    if not getattr(ActionBase.__init__, 'ferrogen_connection_only', False):
        ActionBase.__init__ = init(ActionBase.__init__)

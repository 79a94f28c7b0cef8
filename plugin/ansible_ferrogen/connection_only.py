"""Connection-only mode: ferrogen's connection plugins under Ansible's own strategies.

The ferrogen strategies install, in the controller before workers fork, what spares actions
round trips on our connections (action_mixin, module_cache, speculation). Without one, the
worker that loads one of the collection's connection plugins installs the same for itself, and
its first call finds or starts the run's mux (run_mux.py). A worker runs one task, so it installs
only what that task uses: the copy action's patches once the task's action turns out to run it.
Under a ferrogen strategy this finds everything installed already.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_ferrogen import action_mixin, module_cache, speculation


def init(original):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        speculation.install_for(self)

    __init__.ferrogen_connection_only = True
    return __init__


def install() -> None:
    action_mixin.install()
    module_cache.install()
    if not getattr(ActionBase.__init__, 'ferrogen_connection_only', False):
        ActionBase.__init__ = init(ActionBase.__init__)

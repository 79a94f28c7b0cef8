# Test action for the differential harness: what a plugin that reuses the ssh connection class
# (as the network connections do) finds through the loader while a strategy redirects `ssh`.
from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible.plugins.connection.ssh import Connection as BuiltinSsh
from ansible.plugins.loader import connection_loader


class ActionModule(ActionBase):
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        loaded = connection_loader.get('ssh', class_only=True)
        result['missing'] = sorted(name for name in dir(BuiltinSsh) if not hasattr(loaded, name))
        result['control_path'] = loaded._create_control_path('host', 22, 'user')
        return result

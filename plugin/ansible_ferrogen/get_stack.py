"""The mitogen_get_stack action: the route (each hop and account) a task for the host would
take, as the mux would be asked to take it. Shipped twice over one class: as
``ferrogen.mux.mitogen_get_stack`` (found wherever the collection is) and as the short name
``mitogen_get_stack`` (plugins/action, which the ferrogen strategies add to Ansible's action
path while they run, so that it resolves in tasks parsed meanwhile: dynamic includes and later
playbooks of the run; a task parsed before needs the FQCN or ``action_plugins``)."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_ferrogen import via
from ansible_ferrogen.connection import Connection


class GetStack(ActionBase):
    """The connection's route, as the mux would be asked to take it."""

    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        connection = self._connection
        if not isinstance(connection, Connection):
            raise AnsibleActionFail(
                f'mitogen_get_stack needs a ferrogen connection; this host uses {connection.transport!r}')
        become = None
        if self._play_context.become and self._connection.become is not None:
            become = connection.become_account()
        result.update(changed=True, result=via.stack(connection.target_spec(), become))
        return result

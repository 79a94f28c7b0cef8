# Copyright: ferrogen contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..')))

from ansible.errors import AnsibleActionFail  # noqa: E402
from ansible.plugins.action import ActionBase  # noqa: E402

from ansible_ferrogen import via  # noqa: E402
from ansible_ferrogen.connection import Connection  # noqa: E402

DOCUMENTATION = r"""
name: mitogen_get_stack
short_description: the route a task for this host would take through ferrogen
description:
  - Returns each hop of the connection, nearest first, with the settings ferrogen extracted from
    Ansible; become accounts are hops of their own. Creates no connection.
  - Use it with the same C(become) and C(delegate_to) as the task being diagnosed.
"""


class ActionModule(ActionBase):
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

# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

try:
    import ansible_ferrogen  # noqa: F401 - installed beside this collection
except ImportError:  # a checkout's plugin/ directory on the collections path
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..', '..')))

DOCUMENTATION = """
    name: preload
    type: aggregate
    short_description: loads ferrogen's connection plugins once, before ansible-playbook forks its workers
    description:
        - For connection-only mode (ferrogen.mux.ssh or ferrogen.mux.local under Ansible's own
          strategies). Without it, every task's worker loads the connection plugin and builds
          Ansible's module index for itself, about 15 ms of controller CPU a task. With it,
          ansible-playbook does that once, as the ferrogen.mux strategies do, and every worker
          inherits it.
        - It prints nothing and changes no result. It is not needed in strategy mode.
    requirements:
        - enabled in C(callbacks_enabled) (C(ANSIBLE_CALLBACKS_ENABLED)), beside any other callback
          enabled there
    author: ferrogen developers
"""

from ansible.plugins.callback import CallbackBase  # noqa: E402

from ansible_ferrogen.preload import preload_connections  # noqa: E402


class CallbackModule(CallbackBase):
    """Loads ferrogen's connection plugins in ansible-playbook, before any worker forks."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'ferrogen.mux.preload'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        preload_connections()

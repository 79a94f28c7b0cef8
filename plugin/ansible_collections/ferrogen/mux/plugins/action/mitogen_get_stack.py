# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

try:
    import ansible_ferrogen  # noqa: F401 - installed beside this collection
except ImportError:  # a checkout's plugin/ directory on the collections path
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..', '..')))

DOCUMENTATION = r"""
name: mitogen_get_stack
short_description: the route a task for this host would take through ferrogen
description:
  - Returns each hop of the connection, nearest first, with the settings ferrogen extracted from
    Ansible; become accounts are hops of their own. Creates no connection. Passwords show as
    C(********).
  - Use it with the same C(become) and C(delegate_to) as the task being diagnosed.
  - Resolves wherever the collection is installed, before and without any strategy.
"""

from ansible_ferrogen.get_stack import GetStack  # noqa: E402


class ActionModule(GetStack):
    """mitogen_get_stack, as ferrogen.mux.mitogen_get_stack."""

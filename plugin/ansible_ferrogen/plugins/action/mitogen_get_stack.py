# Copyright: ferrogen contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..')))

from ansible_ferrogen.get_stack import GetStack  # noqa: E402

DOCUMENTATION = r"""
name: mitogen_get_stack
short_description: the route a task for this host would take through ferrogen
description:
  - Returns each hop of the connection, nearest first, with the settings ferrogen extracted from
    Ansible; become accounts are hops of their own. Creates no connection.
  - Use it with the same C(become) and C(delegate_to) as the task being diagnosed.
  - Also shipped as C(ferrogen.mux.mitogen_get_stack), which resolves without any setting.
"""


class ActionModule(GetStack):
    """mitogen_get_stack, by its short name."""

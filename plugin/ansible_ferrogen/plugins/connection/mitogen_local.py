# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..')))

from ansible.plugins.connection.local import DOCUMENTATION as _LOCAL_DOCUMENTATION  # noqa: E402

from ansible_ferrogen.connection import LOCAL_EXTRA_OPTIONS, LocalConnection, borrow_documentation  # noqa: E402

DOCUMENTATION = borrow_documentation(_LOCAL_DOCUMENTATION, 'mitogen_local',
                                     'run on the controller through a persistent ferrogen interpreter',
                                     LOCAL_EXTRA_OPTIONS)


class Connection(LocalConnection):
    """local execution through ferrogen-mux"""

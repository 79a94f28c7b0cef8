# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..')))

from ansible_ferrogen.containers import ContainerConnection, documentation  # noqa: E402

DOCUMENTATION = documentation('incus')


class Connection(ContainerConnection):
    """incus through ferrogen-mux"""

    transport = 'mitogen_incus'
    kind = 'incus'

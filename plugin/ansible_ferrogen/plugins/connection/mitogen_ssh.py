# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..')))

from ansible.plugins.connection.ssh import DOCUMENTATION as _SSH_DOCUMENTATION  # noqa: E402
from ansible.plugins.connection.ssh import Connection as _SshConnection  # noqa: E402

from ansible_ferrogen.connection import (  # noqa: E402
    SSH_EXTRA_OPTIONS,
    SshConnection,
    borrow_documentation,
    keep_vanilla_attributes,
)

DOCUMENTATION = borrow_documentation(_SSH_DOCUMENTATION, 'mitogen_ssh',
                                     'connect via ssh through ferrogen-mux (one ssh per target)',
                                     SSH_EXTRA_OPTIONS)


class Connection(SshConnection):
    """ssh through ferrogen-mux"""


keep_vanilla_attributes(Connection, _SshConnection)

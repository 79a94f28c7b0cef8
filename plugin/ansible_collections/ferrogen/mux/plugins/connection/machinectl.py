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
    name: machinectl
    short_description: run in a systemd-nspawn machine through ferrogen-mux
    description:
        - Every task runs in one persistent interpreter inside a systemd-nspawn machine, started through
          nsenter, its leader found with machinectl by ferrogen-mux (Mitogen's mitogen_machinectl connection type). Become works inside
          as on any target.
        - Needs no other collection.
        - Under Ansible's own strategies (linear, free, host_pinned) the first task that needs it
          starts the run's ferrogen-mux, and every other task of the run finds it; under the
          ferrogen.mux strategies the strategy starts it.
    author: ferrogen developers
    extends_documentation_fragment:
        - ferrogen.mux.containers.MACHINECTL
"""

from ansible_ferrogen import connection_only  # noqa: E402
from ansible_ferrogen.containers import ContainerConnection, register_options  # noqa: E402

connection_only.install()
register_options(__name__, 'machinectl')


class Connection(ContainerConnection):
    """machinectl through ferrogen-mux"""

    transport = 'ferrogen.mux.machinectl'
    kind = 'machinectl'

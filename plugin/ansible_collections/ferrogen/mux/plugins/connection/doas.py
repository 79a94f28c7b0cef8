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
    name: doas
    short_description: run as another account on the controller through doas, via ferrogen-mux
    description:
        - Every task runs as C(ansible_user) in one persistent interpreter started through doas
          (Mitogen's mitogen_doas connection type). The inventory hostname has no special meaning.
        - Under Ansible's own strategies (linear, free, host_pinned) the first task that needs it
          starts the run's ferrogen-mux, and every other task of the run finds it; under the
          ferrogen.mux strategies the strategy starts it.
    author: ferrogen developers
    extends_documentation_fragment:
        - ferrogen.mux.become_connection.DOAS
"""

from ansible_ferrogen import connection_only  # noqa: E402
from ansible_ferrogen.become_connection import BecomeConnection  # noqa: E402

connection_only.install()


class Connection(BecomeConnection):
    """doas on the controller through ferrogen-mux"""

    transport = 'ferrogen.mux.doas'
    method = 'doas'

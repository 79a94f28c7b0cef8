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
    name: local
    short_description: run on the controller through a persistent ferrogen interpreter
    description:
        - Runs on the controller as ansible.builtin.local does, with all of its options and variables,
          in one persistent Python interpreter per account for the whole run.
        - Under Ansible's own strategies (linear, free, host_pinned) the first task that needs it
          starts the run's ferrogen-mux, and every other task of the run finds it; under the
          ferrogen.mux strategies the strategy starts it.
    author: ferrogen developers
    extends_documentation_fragment:
        - ferrogen.mux.local
"""

from ansible_ferrogen import connection_only  # noqa: E402
from ansible_ferrogen.connection import LOCAL_EXTRA_OPTIONS, LocalConnection, reuse_builtin_options  # noqa: E402

connection_only.install()
reuse_builtin_options(__name__, 'local', LOCAL_EXTRA_OPTIONS)


class Connection(LocalConnection):
    """local execution through ferrogen-mux"""

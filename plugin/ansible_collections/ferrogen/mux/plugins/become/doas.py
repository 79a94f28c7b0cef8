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
    short_description: Do As user (OpenBSD's doas, or opendoas on Linux)
    description:
        - Runs tasks as another account through doas. On ferrogen connections the account gets its
          own persistent interpreter; on others the command is wrapped as the community.general
          plugin of the same name would wrap it.
        - Shipped with ferrogen so that doas works with ansible-core alone.
    author: ferrogen developers
    extends_documentation_fragment:
        - ferrogen.mux.become_doas
"""

from ansible_ferrogen.plugins.become.doas import BecomeModule  # noqa: E402, F401

# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

try:
    import ansible_ferrogen  # noqa: F401 - installed beside this collection
except ImportError:  # a checkout's plugin/ directory on the collections path
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..', '..')))

from ansible_ferrogen.become_connection import documentation  # noqa: E402
from ansible_ferrogen.connection import options_fragment  # noqa: E402


class ModuleDocFragment:
    # The options of the sudo, su and doas connection types (Mitogen's mitogen_<method>).
    SUDO = options_fragment(documentation('sudo'))
    SU = options_fragment(documentation('su'))
    DOAS = options_fragment(documentation('doas'))

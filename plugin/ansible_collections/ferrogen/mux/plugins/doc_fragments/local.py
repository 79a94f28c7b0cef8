# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

try:
    import ansible_ferrogen  # noqa: F401 - installed beside this collection
except ImportError:  # a checkout's plugin/ directory on the collections path
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..', '..')))

from ansible.plugins.connection.local import DOCUMENTATION as _LOCAL_DOCUMENTATION  # noqa: E402

from ansible_ferrogen.connection import LOCAL_EXTRA_OPTIONS, options_fragment  # noqa: E402


class ModuleDocFragment:
    # Every option of ansible.builtin.local in this ansible-core, plus ferrogen's.
    DOCUMENTATION = options_fragment(_LOCAL_DOCUMENTATION, LOCAL_EXTRA_OPTIONS)

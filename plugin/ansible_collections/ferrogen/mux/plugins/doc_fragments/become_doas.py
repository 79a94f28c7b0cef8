# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

try:
    import ansible_ferrogen  # noqa: F401 - installed beside this collection
except ImportError:  # a checkout's plugin/ directory on the collections path
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..', '..')))

import yaml  # noqa: E402

from ansible_ferrogen.plugins.become import doas  # noqa: E402


class ModuleDocFragment:
    # The options of the doas become plugin ferrogen ships.
    DOCUMENTATION = yaml.safe_dump({'options': yaml.safe_load(doas.DOCUMENTATION)['options']}, sort_keys=False)

# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

try:
    import ansible_ferrogen  # noqa: F401 - installed beside this collection
except ImportError:  # a checkout's plugin/ directory on the collections path
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..', '..')))

from ansible.plugins.strategy.linear import StrategyModule as _Builtin  # noqa: E402

from ansible_ferrogen.strategy import strategy_with_mux  # noqa: E402

DOCUMENTATION = """
    name: linear
    short_description: Ansible's linear strategy, with connections through ferrogen-mux
    description:
        - Runs like the built-in linear strategy (Mitogen's mitogen_linear); ssh, smart and local
          connections go through one long-lived connection and persistent interpreter per target,
          held by the ferrogen-mux this strategy starts for the run.
    author: ferrogen developers
"""

StrategyModule = strategy_with_mux(_Builtin)

# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

# Setting strategy_plugins to this directory is all a user does; make the package importable.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..')))

from ansible.plugins.strategy.host_pinned import StrategyModule as _HostPinned  # noqa: E402

from ansible_ferrogen.strategy import strategy_with_mux  # noqa: E402

DOCUMENTATION = """
    name: mitogen_host_pinned
    short_description: Ansible's host_pinned strategy, with connections through ferrogen-mux
    description:
        - Runs like the built-in host_pinned strategy; ssh, smart and local connections go through one
          long-lived connection and persistent interpreter per target, held by ferrogen-mux.
    author: ferrogen developers
"""

StrategyModule = strategy_with_mux(_HostPinned)

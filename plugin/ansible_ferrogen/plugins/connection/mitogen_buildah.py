# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..')))

from ansible_ferrogen.containers import ContainerConnection, register_options  # noqa: E402

DOCUMENTATION = """
    name: mitogen_buildah
    short_description: Mitogen's mitogen_buildah connection type, through ferrogen-mux
    description:
        - The options are ferrogen.mux.buildah's (C(ansible-doc -t connection ferrogen.mux.buildah)), given to
          Ansible when this file loads, so its loader has no documentation to parse.
    author: ferrogen developers
    extends_documentation_fragment:
        - ferrogen.mux.containers.BUILDAH
"""
register_options('mitogen_buildah', 'buildah')


class Connection(ContainerConnection):
    """buildah through ferrogen-mux"""

    transport = 'mitogen_buildah'
    kind = 'buildah'

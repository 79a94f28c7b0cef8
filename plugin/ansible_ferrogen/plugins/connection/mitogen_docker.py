# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..')))

from ansible_ferrogen.containers import ContainerConnection, register_options  # noqa: E402

DOCUMENTATION = """
    name: mitogen_docker
    short_description: Mitogen's mitogen_docker connection type, through ferrogen-mux
    description:
        - The options are ferrogen.mux.docker's (C(ansible-doc -t connection ferrogen.mux.docker)), given to
          Ansible when this file loads, so its loader has no documentation to parse.
    author: ferrogen developers
    extends_documentation_fragment:
        - ferrogen.mux.containers.DOCKER
"""
register_options('mitogen_docker', 'docker')


class Connection(ContainerConnection):
    """docker through ferrogen-mux"""

    transport = 'mitogen_docker'
    kind = 'docker'

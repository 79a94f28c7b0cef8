# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import sys

import yaml

try:
    import ansible_ferrogen  # noqa: F401 - installed beside this collection
except ImportError:  # a checkout's plugin/ directory on the collections path
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..', '..')))

from ansible_ferrogen.containers import options  # noqa: E402


def _fragment(kind: str) -> str:
    return yaml.safe_dump({'options': options(kind)}, sort_keys=False)


class ModuleDocFragment:
    # The options of each container connection type (Mitogen's mitogen_<kind>).
    DOCKER = _fragment('docker')
    PODMAN = _fragment('podman')
    BUILDAH = _fragment('buildah')
    LXC = _fragment('lxc')
    LXD = _fragment('lxd')
    INCUS = _fragment('incus')
    KUBECTL = _fragment('kubectl')
    JAIL = _fragment('jail')
    MACHINECTL = _fragment('machinectl')
    SETNS = _fragment('setns')

"""The strategy works out in the controller what forked workers would each work out again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# Run in a fresh interpreter: the plugin loader's caches and sys.modules are process-wide.
PROBE = textwrap.dedent(
    """
    import json, os, sys
    from ansible.plugins.loader import init_plugin_loader, module_loader
    from ansible.module_utils.common.json import Direction, get_module_encoder, get_module_decoder
    from ansible_ferrogen import strategy

    init_plugin_loader()
    if sys.argv[1] == 'warm':
        strategy.warm_worker_caches()

    # What a worker does for a `command` task, counted after the fork would have happened.
    listed = []
    real_listdir = os.listdir
    os.listdir = lambda path='.': listed.append(path) or real_listdir(path)
    before = set(sys.modules)
    found = module_loader.find_plugin_with_context('ansible.legacy.command', '.py')
    get_module_decoder('legacy', Direction.CONTROLLER_TO_MODULE)
    get_module_encoder('legacy', Direction.MODULE_TO_CONTROLLER)
    print(json.dumps({
        'resolved': found.plugin_resolved_path,
        'listed': len(listed),
        'imported': sorted(set(sys.modules) - before),
    }))
    """
)


PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def probe(mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=PLUGIN_DIR)
    out = subprocess.run(
        [sys.executable, '-c', PROBE, mode], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_a_worker_finds_its_module_and_json_profiles_without_listing_or_importing():
    cold, warm = probe('cold'), probe('warm')
    assert cold['resolved'] == warm['resolved']
    assert warm['resolved'].endswith('/ansible/modules/command.py')
    # The probe can see the work: without the warm-up the worker lists module directories and
    # imports the profiles itself.
    assert cold['listed'] > 0 and cold['imported']
    assert warm['listed'] == 0
    assert warm['imported'] == []

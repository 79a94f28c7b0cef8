"""Module payloads built by Ansible's own code, for tests that run modules in the agent."""

from __future__ import annotations

import json
import sys

from ansible.executor import module_common
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder
from ansible_ferrogen import ansiballz


class ModuleRunner:
    """Builds the module at module_path as Ansible would and runs it in an agent."""

    def __init__(self, agent, module_path, monkeypatch, local_temp):
        monkeypatch.setenv('ANSIBLE_LOCAL_TEMP', str(local_temp))
        _AnsibleCollectionFinder()._install()
        self.agent = agent
        self.module_path = module_path
        # The zip hash of the last module run, to find the zip in the agent's temp dir.
        self.zip_hash = None

    def payload(self, module_args):
        built = module_common.modify_module(
            module_name=self.module_path.stem, module_path=str(self.module_path), module_args=module_args,
            templar=Templar(loader=DataLoader()), task_vars={'ansible_python_interpreter': sys.executable})
        return ansiballz.parse(built.b_module_data, sys.executable)

    def run(self, module_args):
        """The module's result; fails the test if the call failed."""
        payload = self.payload(module_args)
        self.zip_hash = payload.zip_hash
        self.agent.send({'type': 'blob', 'hash': payload.zip_hash}, payload.zip_data)
        header, body = self.agent.call('run_module', payload.args)
        assert header['ok'], header
        return json.loads(body.decode().strip().splitlines()[-1])

"""Connection option handling that must match what users set for vanilla ssh."""

from __future__ import annotations

import yaml

from ansible_ferrogen.connection import borrow_documentation, drop_control_options


def test_control_master_options_are_dropped_in_every_spelling():
    args = ['-C', '-o', 'ControlMaster=auto', '-o', 'ControlPersist=60s', '-oControlPath=/x',
            '-o', 'ServerAliveInterval=5', '-o', 'controlpersist = 10']
    assert drop_control_options(args) == ['-C', '-o', 'ServerAliveInterval=5']


def test_borrowed_documentation_keeps_vanilla_variables():
    from ansible.plugins.connection.ssh import DOCUMENTATION

    doc = yaml.safe_load(borrow_documentation(DOCUMENTATION, 'mitogen_ssh', 'x'))
    assert doc['name'] == 'mitogen_ssh'
    port_vars = [entry['name'] for entry in doc['options']['port']['vars']]
    assert 'ansible_port' in port_vars
    assert doc['options']['python_interpreter']['vars'] == [{'name': 'ansible_python_interpreter'}]

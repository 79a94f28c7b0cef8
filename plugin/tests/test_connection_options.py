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


def test_target_spec_follows_new_options():
    """The spec is worked out once per set of options: new options give a new spec."""
    from ansible.playbook.play_context import PlayContext
    from ansible.plugins.loader import connection_loader

    from ansible_ferrogen.strategy import CONNECTION_DIR

    connection_loader.add_directory(CONNECTION_DIR)
    connection = connection_loader.get('mitogen_ssh', PlayContext())
    connection.set_options(var_options={'ansible_host': '127.0.0.1', 'ansible_port': 2201})
    assert connection.target_spec()['port'] == 2201
    assert connection.target_spec() is connection.target_spec()
    connection.set_options(var_options={'ansible_host': '127.0.0.1', 'ansible_port': 2202})
    assert connection.target_spec()['port'] == 2202


def ssh_args_for(var_options: dict) -> list[str]:
    from ansible.playbook.play_context import PlayContext
    from ansible.plugins.loader import connection_loader

    from ansible_ferrogen.strategy import CONNECTION_DIR

    connection_loader.add_directory(CONNECTION_DIR)
    connection = connection_loader.get('mitogen_ssh', PlayContext())
    connection.set_options(var_options={'ansible_host': '127.0.0.1', **var_options})
    return connection.target_spec()['ssh_args']


def test_ssh_compression_only_where_the_user_asks_for_it():
    """Ansible's default ssh_args lose their -C (the mux compresses the link itself); -C stays
    where the user put it, and mitogen_ssh_compression decides above both."""
    assert '-C' not in ssh_args_for({})
    assert ssh_args_for({'mitogen_ssh_compression': True}).count('-C') == 1
    assert ssh_args_for({'ansible_ssh_args': '-C -o ServerAliveInterval=5'}) == ['-C', '-o', 'ServerAliveInterval=5']
    assert ssh_args_for({'ansible_ssh_extra_args': '-C'}) == ['-C']
    assert ssh_args_for({'ansible_ssh_extra_args': '-C', 'mitogen_ssh_compression': False}) == []
    assert ssh_args_for({'ansible_ssh_args': '-C', 'mitogen_ssh_compression': True}) == ['-C']


def _ssh_spec(var_options: dict) -> dict:
    from ansible.playbook.play_context import PlayContext
    from ansible.plugins.loader import connection_loader

    from ansible_ferrogen.strategy import CONNECTION_DIR

    connection_loader.add_directory(CONNECTION_DIR)
    connection = connection_loader.get('mitogen_ssh', PlayContext())
    connection.set_options(var_options={'ansible_host': '127.0.0.1', **var_options})
    return connection.target_spec()


def test_mitogen_ssh_variables_reach_the_target_spec():
    spec = _ssh_spec({'ansible_ssh_pass': 'pw', 'mitogen_ssh_debug_level': 2,
                      'mitogen_ssh_keepalive_interval': 5, 'mitogen_ssh_keepalive_count': 4,
                      'mitogen_mask_remote_name': True})
    assert spec['password'] == 'pw'
    assert spec['ssh_debug_level'] == 2
    assert spec['keepalive_interval'] == 5.0
    assert spec['keepalive_count'] == 4
    assert spec['mask_remote_name'] is True


def test_unset_mitogen_ssh_variables_leave_the_spec_as_before():
    spec = _ssh_spec({})
    for field in ('password', 'ssh_debug_level', 'keepalive_interval', 'keepalive_count', 'mask_remote_name'):
        assert field not in spec


def test_ssh_verbosity_and_debug_level_take_the_larger_at_most_three():
    assert _ssh_spec({'ansible_ssh_verbosity': 1, 'mitogen_ssh_debug_level': 2})['ssh_debug_level'] == 2
    assert _ssh_spec({'ansible_ssh_verbosity': 5})['ssh_debug_level'] == 3

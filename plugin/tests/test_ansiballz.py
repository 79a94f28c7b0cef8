"""The AnsiballZ payload Ansible 2.19 pipelines is taken apart into a cacheable zip and args."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import zipfile

import pytest

from ansible_ferrogen import ansiballz


@pytest.fixture(scope='module')
def payload(tmp_path_factory):
    os.environ.setdefault('ANSIBLE_LOCAL_TEMP', str(tmp_path_factory.mktemp('local-tmp')))
    from ansible.executor.module_common import modify_module
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    import ansible.modules.ping as ping_module

    _AnsibleCollectionFinder()._install()
    built = modify_module(module_name='ping', module_path=ping_module.__file__, module_args={'data': 'pong 1'},
                          templar=Templar(loader=DataLoader()),
                          task_vars={'ansible_python_interpreter': '/usr/bin/python3'})
    return built.b_module_data


def test_parse_extracts_zip_args_and_environment(payload):
    parsed = ansiballz.parse(payload, "/bin/sh -c 'LANG=C FOO='\"'\"'a b'\"'\"' /usr/bin/python3 && sleep 0'")
    assert parsed is not None
    assert parsed.args['module_fqn'] == 'ansible.modules.ping'
    assert parsed.args['env'] == {'LANG': 'C', 'FOO': 'a b'}
    assert '"pong 1"' in parsed.args['params']
    assert parsed.zip_hash == hashlib.sha1(parsed.zip_data).hexdigest() == parsed.args['zip']
    names = zipfile.ZipFile(io.BytesIO(base64.b64decode(parsed.zip_data))).namelist()
    assert 'ansible/modules/ping.py' in names
    assert 'ansible/module_utils/basic.py' in names


def test_zip_is_the_same_for_every_task_of_a_module(payload):
    first = ansiballz.parse(payload, '/usr/bin/python3')
    other_args = payload.replace(b'pong 1', b'pong 2')
    second = ansiballz.parse(other_args, '/usr/bin/python3')
    assert first.zip_hash == second.zip_hash
    assert first.args['params'] != second.args['params']


@pytest.mark.parametrize('cmd', [
    "sudo -H -S -n -u root /bin/sh -c 'echo BECOME-SUCCESS-x ; /usr/bin/python3'",
    "/bin/sh -c '/usr/bin/python3 /tmp/x/AnsiballZ_ping.py && sleep 0'",
])
def test_other_command_shapes_run_verbatim(payload, cmd):
    assert ansiballz.parse(payload, cmd) is None


def test_non_ansiballz_input_runs_verbatim():
    assert ansiballz.parse(b'#!/bin/sh\necho hi\n', '/bin/sh') is None
    assert ansiballz.parse(b'#!/usr/bin/python3\n_ANSIBALLZ_WRAPPER = True\n', '/usr/bin/python3') is None
    broken = b'#!/usr/bin/python3\n_ANSIBALLZ_WRAPPER = True\nif __name__ == "__main__":\n    _ansiballz_main(\nzip_data=1,\n'
    assert ansiballz.parse(broken, '/usr/bin/python3') is None

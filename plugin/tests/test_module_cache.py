"""Module payloads for ferrogen connections carry a reference to the zip, never a broken one."""

from __future__ import annotations

import os
import types

import pytest

from ansible_ferrogen import ansiballz, module_cache

COMMAND = "/bin/sh -c '/usr/bin/python3 && sleep 0'"


@pytest.fixture(scope='module')
def build(tmp_path_factory):
    """build(referencing) -> the pipelined payload of a ping task, as Ansible makes it."""
    os.environ.setdefault('ANSIBLE_LOCAL_TEMP', str(tmp_path_factory.mktemp('local-tmp')))
    from ansible.executor.module_common import modify_module
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    import ansible.modules.ping as ping_module

    _AnsibleCollectionFinder()._install()
    module_cache.install()

    def build(referencing: bool) -> bytes:
        module_cache._State.referencing = referencing
        try:
            return modify_module(module_name='ping', module_path=ping_module.__file__,
                                 module_args={'data': 'pong'}, templar=Templar(loader=DataLoader()),
                                 task_vars={'ansible_python_interpreter': '/usr/bin/python3'}).b_module_data
        finally:
            module_cache._State.referencing = False

    build(False)  # the first build writes Ansible's on-disk cache; later ones load it
    return build


def test_a_referencing_payload_is_small_and_parses_to_the_same_call(build):
    full, referencing = build(False), build(True)
    assert len(referencing) < len(full) / 10
    assert module_cache.BLOB_REFERENCE_PREFIX in referencing
    from_full, from_reference = ansiballz.parse(full, COMMAND), ansiballz.parse(referencing, COMMAND)
    assert from_reference.zip_hash == from_full.zip_hash == from_reference.args['zip']
    assert from_reference.zip_data == from_full.zip_data
    assert from_reference.args['params'] == from_full.args['params']


def test_expanding_restores_a_payload_that_runs_verbatim(build):
    full, referencing = build(False), build(True)
    expanded = module_cache.expand(referencing)
    assert module_cache.BLOB_REFERENCE_PREFIX not in expanded
    assert ansiballz.parse(expanded, COMMAND).zip_data == ansiballz.parse(full, COMMAND).zip_data


def test_payloads_for_other_connections_carry_the_zip(build):
    assert module_cache.BLOB_REFERENCE_PREFIX not in build(False)


def _action(resolves=True, async_val=0, pipelining=True):
    connection = types.SimpleNamespace(is_pipelining_enabled=lambda wrap_async: pipelining)
    if resolves:
        connection.resolves_module_references = True
    return types.SimpleNamespace(_connection=connection, _task=types.SimpleNamespace(async_val=async_val))


@pytest.mark.parametrize('action, allowed', [
    (_action(), True),
    (_action(resolves=False), False),   # a vanilla connection
    (_action(async_val=30), False),     # async: Ansible writes the module to a file
    (_action(pipelining=False), False),  # keep_remote_files: likewise
])
def test_references_only_where_the_payload_is_pipelined_to_us(action, allowed):
    assert module_cache._references_allowed(action) is allowed

"""The copy action's module payloads are built once, whether captured ahead or asked for; a
large source is hashed from the start of the action."""

from __future__ import annotations

import hashlib
import os
from types import SimpleNamespace
from unittest import mock

import pytest
from ansible.errors import AnsibleError

from ansible_ferrogen import frames, speculation, transfer
from ansible_ferrogen.connection import Connection
from ansible_ferrogen.speculation import configure_module


class Builder:
    """Stands in for ActionBase._configure_module: counts builds, returns a fresh object each."""

    def __init__(self):
        self.builds = 0

    def __call__(self, action, module_name, module_args, task_vars):
        self.builds += 1
        return object(), f'/modules/{module_name}.py'


def action(builds):
    return SimpleNamespace(_ferrogen_builds=builds, _connection=SimpleNamespace(_capturing=False))


def test_a_captured_build_is_handed_to_the_same_call_once():
    builder = Builder()
    configure = configure_module(builder)
    copy = action({})
    copy._connection._capturing = True
    captured = configure(copy, 'ansible.legacy.stat', {'path': '/x'}, {})
    copy._connection._capturing = False
    assert configure(copy, 'ansible.legacy.stat', {'path': '/x'}, {}) is captured
    assert builder.builds == 1
    # Asked again, or with other arguments, it is built afresh.
    assert configure(copy, 'ansible.legacy.stat', {'path': '/x'}, {}) is not captured
    configure(copy, 'ansible.legacy.stat', {'path': '/y'}, {})
    assert builder.builds == 3


def test_nothing_is_kept_outside_a_prepared_copy_or_for_arguments_json_cannot_tell_apart():
    builder = Builder()
    configure = configure_module(builder)
    plain = action(None)
    plain._connection._capturing = True
    first = configure(plain, 'ansible.legacy.copy', {'src': '/a'}, {})
    plain._connection._capturing = False
    assert configure(plain, 'ansible.legacy.copy', {'src': '/a'}, {}) is not first
    odd = action({})
    odd._connection._capturing = True
    configure(odd, 'ansible.legacy.copy', {'src': object()}, {})
    assert odd._ferrogen_builds == {}
    assert builder.builds == 3


class CopyAction:
    """Stands in for the copy action: its task's arguments, its file search, its connection."""

    def __init__(self, files, connection=None, **args):
        self.files = files
        self._task = SimpleNamespace(args=args)
        self._connection = connection

    def _find_needle(self, dirname, needle):
        path = os.path.join(self.files, needle)
        if not os.path.exists(path):
            raise AnsibleError(f'could not find {needle}')
        return path


@pytest.fixture
def files(tmp_path):
    (tmp_path / 'large.bin').write_bytes(os.urandom(frames.SMALL_FILE_LIMIT + 1))
    (tmp_path / 'small.txt').write_bytes(b'small')
    (tmp_path / 'vault.yml').write_bytes(speculation.VAULT_HEADER + b'x' * frames.SMALL_FILE_LIMIT)
    (tmp_path / 'dir').mkdir()
    return tmp_path


def test_a_large_source_is_hashed_from_the_start_of_the_action_until_its_end(files):
    """Before the action's run waits for the connection, and only for our connections."""
    large = str(files / 'large.bin')
    seen = []

    def run(action, tmp=None, task_vars=None):
        seen.append(transfer.digests_ahead_of(large, only_sha1=True))
        return {'changed': True}

    hashing_run = speculation.hash_source_ahead(run)
    ours = mock.Mock(spec=Connection)
    assert hashing_run(CopyAction(str(files), ours, src='large.bin'), task_vars={}) == {'changed': True}
    assert seen == [{'sha1': hashlib.sha1((files / 'large.bin').read_bytes()).hexdigest()}]
    assert large not in transfer.DIGESTS_AHEAD
    hashing_run(CopyAction(str(files), SimpleNamespace(), src='large.bin'), task_vars={})
    assert seen[-1] is None


@pytest.mark.parametrize('args', [
    {'src': 'small.txt'}, {'src': 'vault.yml'}, {'src': 'dir'}, {'src': 'missing'},
    {'src': 'large.bin', 'remote_src': True}, {'content': 'text'}, {'src': ['large.bin']},
])
def test_no_other_source_is_hashed_ahead(files, args):
    assert speculation.source_hashed_ahead(CopyAction(str(files), **args)) is None
    assert not transfer.DIGESTS_AHEAD


"""A module hashing a file streamed into its task temp dir gets the digests the agent kept while
receiving it (the copy module hashes its upload with SHA-1 and MD5), for as long as the file
is the one received; nothing else changes what a module computes."""

from __future__ import annotations

import hashlib
import os

import pytest
from module_payloads import ModuleRunner

CHUNK = 1 << 20

HASHING_MODULE = '''
from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(argument_spec={'path': {'type': 'str'}})
path = module.params['path']
module.exit_json(sha1=module.sha1(path), md5=module.md5(path))
'''

# A digest the sender claims for the bytes: the agent cannot check an MD5 claim, only that
# the SHA-1 of what it received matches, so a claim nobody could compute shows where an
# answer came from.
CLAIMED_MD5 = '0' * 32


@pytest.fixture
def hash_file(agent, tmp_path, monkeypatch):
    """hash_file(path) -> the hashing module's result, run by the agent."""
    module_path = tmp_path / 'ferrogen_hashing.py'
    module_path.write_text(HASHING_MODULE)
    runner = ModuleRunner(agent, module_path, monkeypatch, tmp_path / 'local-tmp')

    def run(path):
        result = runner.run({'path': str(path)})
        return {name: result[name] for name in ('sha1', 'md5')}

    return run


def stream(agent, dest, data, claims):
    agent.next_id += 1
    call_id = agent.next_id
    agent.send({'type': 'call', 'id': call_id, 'op': 'put_begin', 'args': {'path': str(dest), 'size': len(data)}})
    for offset in range(0, len(data), CHUNK):
        agent.send({'type': 'chunk', 'id': call_id, 'offset': offset}, data[offset:offset + CHUNK])
    agent.send({'type': 'put_end', 'id': call_id, 'size': len(data), 'sha1': hashlib.sha1(data).hexdigest(),
                'digests': claims})
    while True:
        header, _ = agent.read()
        if header['type'] == 'reply':
            assert header['ok'], header
            return


def digests_of(data):
    return {'sha1': hashlib.sha1(data).hexdigest(), 'md5': hashlib.md5(data).hexdigest()}


def test_a_module_gets_the_kept_digests_while_the_file_is_the_one_received(agent, tmp_path, hash_file):
    task_dir = tmp_path / 'ansible-tmp-1'
    assert agent.call('make_dir', {'path': str(task_dir)})[0]['ok']
    upload = task_dir / '.source'
    data = os.urandom(2 * CHUNK + 5)
    stream(agent, upload, data, {'md5': CLAIMED_MD5})
    assert hash_file(upload) == dict(digests_of(data), md5=CLAIMED_MD5)
    # A chmod (Ansible's _fixup_perms2) leaves the file what it was.
    os.chmod(upload, 0o700)
    assert hash_file(upload)['md5'] == CLAIMED_MD5
    # Rewritten with other bytes of the same size, it is hashed again.
    other = os.urandom(len(data))
    upload.write_bytes(other)
    assert hash_file(upload) == digests_of(other)


def test_only_uploads_into_task_temp_dirs_with_well_formed_claims_are_kept(agent, tmp_path, hash_file):
    task_dir = tmp_path / 'ansible-tmp-2'
    assert agent.call('make_dir', {'path': str(task_dir)})[0]['ok']
    data = os.urandom(CHUNK + 1)
    outside = tmp_path / 'elsewhere'
    stream(agent, outside, data, {'md5': CLAIMED_MD5})
    assert hash_file(outside) == digests_of(data)
    malformed = task_dir / 'malformed'
    stream(agent, malformed, data, {'md5': 'not hex at all, and too long for an MD5'})
    assert hash_file(malformed) == digests_of(data)
    # A removed task temp dir takes its entries along: a new file at the same path is hashed.
    kept = task_dir / 'kept'
    stream(agent, kept, data, {'md5': CLAIMED_MD5})
    assert agent.call('remove_tree', {'path': str(task_dir)})[0]['ok']
    task_dir.mkdir()
    kept.write_bytes(data)
    assert hash_file(kept) == digests_of(data)

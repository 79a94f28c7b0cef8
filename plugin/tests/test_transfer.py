"""Worker-side file transfer: atomic local files, the streaming loops against a scripted mux."""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import subprocess
import sys

import pytest
from ansible.errors import AnsibleError

from ansible_ferrogen import frames, transfer
from ansible_ferrogen.client import MuxError


class FakeMux:
    """Stands in for MuxClient: a mux that reads a put's source itself and an agent that acks
    every chunk, or streams a file back."""

    def __init__(self, fetch_data: bytes | None = None, fail_put_with: str | None = None):
        self.sock, self._peer = socket.socketpair()
        self.ids = iter(range(1, 100))
        self.inbox: list[tuple[dict, bytes]] = []
        self.received = bytearray()
        self.sent_frames: list[dict] = []
        self.fetch_data = fetch_data
        self.fail_put_with = fail_put_with

    def next_id(self) -> int:
        return next(self.ids)

    def send(self, data: bytes) -> None:
        header, body, _ = frames.decode(data)
        self._handle(header, body)

    def _handle(self, header: dict, body: bytes) -> None:
        self.sent_frames.append(header)
        kind = header['type']
        if kind == 'call' and header['op'] == 'put_begin' and self.fail_put_with:
            self.inbox.append(({'type': 'reply', 'id': header['id'], 'ok': False,
                                'error': {'kind': 'agent_error', 'message': self.fail_put_with}}, b''))
        elif kind == 'call' and header['op'] == 'put_begin':
            source = header['args']['source']
            info = os.stat(source['path'])
            assert (info.st_dev, info.st_ino) == (source['dev'], source['ino'])
            with open(source['path'], 'rb') as handle:
                while chunk := handle.read(transfer.CHUNK):
                    self.received += chunk
                    self.inbox.append(({'type': 'ack', 'id': header['id'], 'bytes': len(self.received)}, b''))
        elif kind == 'call' and header['op'] == 'fetch_begin':
            data = self.fetch_data
            for offset in range(0, len(data), transfer.CHUNK):
                self.inbox.append(({'type': 'chunk', 'id': header['id'], 'offset': offset, 'size': len(data)},
                                   data[offset:offset + transfer.CHUNK]))
            self.inbox.append(({'type': 'reply', 'id': header['id'], 'ok': True,
                                'result': {'size': len(data), 'sha1': hashlib.sha1(data).hexdigest(), 'mode': 0o640}},
                               b''))
        elif kind == 'ack':
            pass
        elif kind == 'put_end':
            assert header['size'] == len(self.received)
            assert header['sha1'] == hashlib.new('sha1', self.received).hexdigest()
            self.inbox.append(({'type': 'reply', 'id': header['id'], 'ok': True,
                                'result': {'size': header['size'], 'sha1': header['sha1']}}, b''))
        else:
            raise AssertionError(f'the worker sent a {kind!r} frame')

    def read(self) -> tuple[dict, bytes]:
        return self.inbox.pop(0)

    def result(self, header: dict) -> dict:
        if not header.get('ok'):
            raise MuxError(header['error']['kind'], header['error']['message'])
        return header['result']


def test_put_stream_names_the_file_for_the_mux_and_sends_only_its_size_and_sha1(tmp_path, monkeypatch):
    data = os.urandom(9 * transfer.CHUNK + 5)
    source = tmp_path / 'src'
    source.write_bytes(data)
    monkeypatch.chdir(tmp_path)
    mux = FakeMux()
    reports = []
    with open('src', 'rb') as handle:
        result = transfer.put_stream(mux, {'type': 'call', 'target': {}, 'args': {'path': '/x'}}, handle, len(data),
                                     lambda *a: reports.append(a))
    assert result['sha1'] == hashlib.sha1(data).hexdigest()
    assert bytes(mux.received) == data
    begin, end = mux.sent_frames
    assert begin['op'] == 'put_begin' and begin['args']['source']['path'] == str(source)
    assert begin['args']['path'] == '/x'
    assert end == {'type': 'put_end', 'id': begin['id'], 'size': len(data), 'sha1': hashlib.sha1(data).hexdigest()}
    assert reports[-1][0] == len(data) and reports[-1][1] == len(data)


def test_put_stream_stops_on_an_early_error(tmp_path):
    source = tmp_path / 'src'
    source.write_bytes(os.urandom(3 * transfer.CHUNK))
    mux = FakeMux(fail_put_with='Permission denied')
    # The error reply is waiting before the first chunk goes: the loop sees it pending.
    mux._peer.send(b'x')
    with open(source, 'rb') as handle, pytest.raises(MuxError, match='Permission denied'):
        transfer.put_stream(mux, {'type': 'call', 'target': {}, 'args': {}}, handle, 3 * transfer.CHUNK)
    assert not any(f['type'] == 'put_end' for f in mux.sent_frames)


def test_fetch_stream_writes_an_atomic_file(tmp_path):
    data = os.urandom(5 * transfer.CHUNK + 3)
    dest = tmp_path / 'dest'
    dest.write_bytes(b'old')
    mux = FakeMux(fetch_data=data)
    with transfer.AtomicFile(str(dest)) as sink:
        result = transfer.fetch_stream(mux, {'type': 'call', 'target': {}, 'args': {'path': '/src'}}, sink)
        assert dest.read_bytes() == b'old'  # not before commit
        sink.commit(0o600)
    assert result['size'] == len(data)
    assert dest.read_bytes() == data
    assert dest.stat().st_mode & 0o777 == 0o600
    acks = [f for f in mux.sent_frames if f['type'] == 'ack']
    assert acks[-1]['bytes'] == len(data)
    assert [p.name for p in tmp_path.iterdir()] == ['dest']


def test_fetch_stream_rejects_a_checksum_mismatch(tmp_path):
    mux = FakeMux(fetch_data=b'abc')
    mux.fetch_data = b'abc'
    original = mux._handle

    def corrupt(header, body):
        original(header, body)
        if header['type'] == 'call':
            mux.inbox[-1][0]['result']['sha1'] = '0' * 40

    mux._handle = corrupt
    with transfer.AtomicFile(str(tmp_path / 'dest')) as sink, pytest.raises(transfer.StreamError, match='SHA-1'):
        transfer.fetch_stream(mux, {'type': 'call', 'target': {}, 'args': {}}, sink)
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_abort_and_dead_writer_sweep(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = tmp_path / f'.ferrogen-{dead.pid}-00ff.tmp'
    stale.write_bytes(b'partial')
    mine_live = tmp_path / f'.ferrogen-{os.getppid()}-00ff.tmp'
    mine_live.write_bytes(b'in use')
    # A live writer holds its file's lock (a pid alone means nothing across PID namespaces).
    live_writer = os.open(mine_live, os.O_WRONLY)
    fcntl.flock(live_writer, fcntl.LOCK_EX)
    with transfer.AtomicFile(str(tmp_path / 'dest')) as sink:
        sink.write(b'data')
        assert not stale.exists()  # swept: its writer is dead
        assert mine_live.exists()
    # Left without commit: the temp file is gone, the destination never appeared.
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine_live.name]
    os.close(live_writer)


def test_a_locked_temp_file_is_kept_whatever_its_pid_says(tmp_path):
    """A writer in another PID namespace (a container sharing the directory) names its file
    after a pid that means nothing here, maybe a dead one: its lock says it is alive."""
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    elsewhere = tmp_path / f'.ferrogen-{dead.pid}-00aa.tmp'
    elsewhere.write_bytes(b'in use elsewhere')
    writer = subprocess.Popen([sys.executable, '-c', 'import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); '
                               'fcntl.flock(fd, fcntl.LOCK_EX); print(flush=True); sys.stdin.read()', str(elsewhere)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        writer.stdout.readline()
        with transfer.AtomicFile(str(tmp_path / 'dest')):
            assert elsewhere.exists()
    finally:
        writer.stdin.close()
        writer.wait()
    with transfer.AtomicFile(str(tmp_path / 'dest2')):
        assert not elsewhere.exists()  # its writer is gone now


def test_fetched_mode_follows_vanilla(tmp_path):
    umask = os.umask(0o022)
    try:
        existing = tmp_path / 'existing'
        existing.write_bytes(b'')
        existing.chmod(0o600)
        assert transfer.fetched_mode(str(existing), 0o755) == 0o600
        assert transfer.fetched_mode(str(tmp_path / 'new'), 0o777) == 0o755
        assert transfer.fetched_mode(str(tmp_path / 'new'), 0o666) == 0o644
    finally:
        os.umask(umask)


def test_stream_errors_become_ansible_errors():
    from ansible_ferrogen.connection import LocalConnection

    connection = LocalConnection.__new__(LocalConnection)
    connection.target_spec = lambda: {'name': 'web1'}
    connection.become = None
    connection.python_interpreter = lambda: None

    def broken(client, target, account):
        raise transfer.StreamError('received 3 bytes')

    import ansible_ferrogen.connection as module

    original = module.MuxClient.get
    module.MuxClient.get = staticmethod(lambda: None)
    try:
        with pytest.raises(AnsibleError, match='fetch_file on web1: received 3 bytes'):
            connection._run('fetch_file', broken)
    finally:
        module.MuxClient.get = original


def test_digests_hashed_ahead_match_and_give_way_once_the_file_changes(tmp_path):
    data = os.urandom(3 * transfer.CHUNK + 7)
    source = tmp_path / 'src'
    source.write_bytes(data)
    ahead = transfer.DigestsAhead(str(source))
    assert ahead.result() == {'sha1': hashlib.sha1(data).hexdigest(), 'md5': hashlib.md5(data).hexdigest()}
    source.write_bytes(data + b'more')
    assert ahead.result() is None


def test_the_actions_checksum_of_a_file_hashed_ahead_is_not_computed_again(tmp_path, monkeypatch):
    data = os.urandom(transfer.CHUNK)
    source = tmp_path / 'src'
    source.write_bytes(data)
    other = tmp_path / 'other'
    other.write_bytes(b'other')
    monkeypatch.setitem(transfer.DIGESTS_AHEAD, str(source), transfer.DigestsAhead(str(source)))
    computed = []
    checksum = transfer.sha1_ahead_or(lambda path: computed.append(path) or 'computed')
    assert checksum(str(source)) == hashlib.sha1(data).hexdigest()
    assert checksum(os.fsencode(source)) == hashlib.sha1(data).hexdigest()
    assert checksum(str(other)) == 'computed' and computed == [str(other)]


def test_put_stream_sends_the_digests_hashed_ahead_for_the_agent_to_check_and_keep(tmp_path, monkeypatch):
    data = os.urandom(2 * transfer.CHUNK + 1)
    source = tmp_path / 'src'
    source.write_bytes(data)
    monkeypatch.setitem(transfer.DIGESTS_AHEAD, str(source), transfer.DigestsAhead(str(source)))
    monkeypatch.setattr(transfer.hashlib, 'sha1', lambda: pytest.fail('the worker hashed the file again'))
    mux = FakeMux()
    with open(source, 'rb') as handle:
        transfer.put_stream(mux, {'type': 'call', 'target': {}, 'args': {'path': '/x'}}, handle, len(data))
    end = mux.sent_frames[-1]
    assert end['type'] == 'put_end' and end['sha1'] == hashlib.new('sha1', data).hexdigest()
    assert end['digests'] == {'md5': hashlib.md5(data).hexdigest()}


def test_the_md5_is_hashed_only_once_the_upload_starts(tmp_path):
    """The action's checksum needs the SHA-1 alone, and an unchanged file is never uploaded:
    its MD5 would be work for nothing, competing with the action's module builds."""
    data = os.urandom(transfer.CHUNK)
    source = tmp_path / 'src'
    source.write_bytes(data)
    ahead = transfer.DigestsAhead(str(source))
    assert ahead.result(only_sha1=True) == {'sha1': hashlib.sha1(data).hexdigest()}
    assert set(ahead.threads) == {'sha1'}
    assert ahead.result() == {'sha1': hashlib.sha1(data).hexdigest(), 'md5': hashlib.md5(data).hexdigest()}


def test_the_fetch_actions_digests_of_a_fetched_file_come_from_its_stream(tmp_path, monkeypatch):
    data = os.urandom(2 * transfer.CHUNK + 3)
    dest = tmp_path / 'dest'
    monkeypatch.setattr(transfer, 'FETCHED', {})
    with transfer.AtomicFile(str(dest)) as sink:
        transfer.fetch_stream(FakeMux(fetch_data=data), {'type': 'call', 'target': {}, 'args': {'path': '/src'}}, sink)
        sink.commit(0o600)
    transfer.record_fetched(str(dest), sink.digests())
    computed = []

    def hashed(filename, hash_func=hashlib.sha1):
        computed.append(hash_func().name)
        return 'computed'

    secure_hash, md5 = transfer.fetched_digests_or(hashed, lambda filename: hashed(filename, hashlib.md5))
    assert secure_hash(str(dest)) == hashlib.sha1(data).hexdigest()
    assert secure_hash(os.fsencode(dest), hashlib.sha1) == hashlib.sha1(data).hexdigest()
    assert md5(str(dest)) == hashlib.md5(data).hexdigest()
    assert secure_hash(str(dest), hashlib.sha256) == 'computed' and computed == ['sha256']
    dest.write_bytes(data + b'changed')
    assert secure_hash(str(dest)) == 'computed' and md5(str(dest)) == 'computed'
    assert str(dest) not in transfer.FETCHED

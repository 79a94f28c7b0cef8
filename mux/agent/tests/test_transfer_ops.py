"""The agent's file-transfer ops (docs/protocol.md, "File transfer"), driven over its stdio."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ansible_ferrogen import frames
from test_agent import AgentProcess

CHUNK = 1 << 20
WINDOW = 4 << 20


def temps(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith('.ferrogen-'))


def put_stream(agent, dest, data, mode=None, call_id=100, end=True):
    args = {'path': str(dest), 'size': len(data)}
    if mode is not None:
        args['mode'] = mode
    agent.send({'type': 'call', 'id': call_id, 'op': 'put_begin', 'args': args})
    acked = 0
    for offset in range(0, len(data), CHUNK):
        agent.send({'type': 'chunk', 'id': call_id, 'offset': offset}, data[offset:offset + CHUNK])
        header, _ = agent.read()
        assert header == {'type': 'ack', 'id': call_id, 'bytes': min(offset + CHUNK, len(data))}
        acked = header['bytes']
    assert acked == len(data)
    if not end:
        return None
    agent.send({'type': 'put_end', 'id': call_id, 'size': len(data), 'sha1': hashlib.sha1(data).hexdigest()})
    header, _ = agent.read()
    return header


def test_streamed_put_is_atomic_fsynced_and_keeps_the_mode(agent, tmp_path):
    dest = tmp_path / 'dest'
    dest.write_bytes(b'old')
    data = os.urandom(3 * CHUNK + 17)
    header = put_stream(agent, dest, data, mode=0o640, end=False)
    # Mid-transfer: the destination is untouched, the data sits in a hidden temp file named
    # after the agent's pid.
    assert header is None
    assert dest.read_bytes() == b'old'
    [temp] = temps(tmp_path)
    assert temp.startswith(f'.ferrogen-{agent.proc.pid}-') and temp.endswith('.tmp')
    assert (tmp_path / temp).stat().st_mode & 0o777 == 0o600
    agent.send({'type': 'put_end', 'id': 100, 'size': len(data), 'sha1': hashlib.sha1(data).hexdigest()})
    header, _ = agent.read()
    assert header['ok'], header
    assert header['result'] == {'size': len(data), 'sha1': hashlib.sha1(data).hexdigest()}
    assert dest.read_bytes() == data
    assert dest.stat().st_mode & 0o777 == 0o640
    assert temps(tmp_path) == []


def test_put_with_a_wrong_checksum_keeps_the_old_file(agent, tmp_path):
    dest = tmp_path / 'dest'
    dest.write_bytes(b'old')
    data = os.urandom(CHUNK + 1)
    put_stream(agent, dest, data, end=False)
    agent.send({'type': 'put_end', 'id': 100, 'size': len(data), 'sha1': '0' * 40})
    header, _ = agent.read()
    assert not header['ok'] and 'SHA-1' in header['error']['message']
    assert dest.read_bytes() == b'old'
    assert temps(tmp_path) == []


def test_out_of_order_chunk_fails_the_transfer(agent, tmp_path):
    agent.send({'type': 'call', 'id': 5, 'op': 'put_begin', 'args': {'path': str(tmp_path / 'd'), 'size': 10}})
    agent.send({'type': 'chunk', 'id': 5, 'offset': 3}, b'abc')
    header, _ = agent.read()
    assert header['type'] == 'reply' and not header['ok']
    assert 'offset' in header['error']['message']
    assert temps(tmp_path) == []
    # Later frames of the failed transfer are dropped quietly.
    agent.send({'type': 'put_end', 'id': 5, 'size': 3, 'sha1': 'x'})
    assert agent.call('ping', {})[0]['ok']


def test_cancel_removes_the_temp_file(agent, tmp_path):
    put_stream(agent, tmp_path / 'dest', os.urandom(CHUNK), end=False)
    assert len(temps(tmp_path)) == 1
    agent.send({'type': 'cancel', 'id': 100})
    header, _ = agent.read()
    assert header['error']['kind'] == 'cancelled'
    assert temps(tmp_path) == []


def test_end_of_stream_removes_open_transfers(agent, tmp_path):
    put_stream(agent, tmp_path / 'dest', os.urandom(CHUNK), end=False)
    assert len(temps(tmp_path)) == 1
    assert agent.close() == 0
    assert temps(tmp_path) == []


def test_put_into_a_missing_directory_is_not_found(agent, tmp_path):
    header, _ = agent.call('put_begin', {'path': str(tmp_path / 'nodir' / 'f'), 'size': 1})
    assert header['error']['kind'] == 'not_found'


def test_temp_files_of_dead_writers_are_swept(agent, tmp_path):
    # A writer that died mid-transfer (kill -9) left its temp file; a live process's temp
    # file and unrelated dot files stay.
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    # A live writer holds its temp file's lock (its pid alone means nothing across PID
    # namespaces): it names the file after itself, creates and locks it, then says so.
    live = subprocess.Popen([sys.executable, '-c', 'import fcntl, os, sys, time\n'
                             'path = os.path.join(sys.argv[1], ".ferrogen-%d-abcdef.tmp" % os.getpid())\n'
                             'fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)\n'
                             'os.write(fd, b"in use")\n'
                             'fcntl.flock(fd, fcntl.LOCK_EX)\n'
                             'print(flush=True)\n'
                             'time.sleep(60)', str(tmp_path)], stdout=subprocess.PIPE)
    try:
        live.stdout.readline()
        (tmp_path / f'.ferrogen-{dead.pid}-abcdef.tmp').write_bytes(b'partial')
        (tmp_path / '.ferrogen-notes.tmp').write_bytes(b'not ours')
        header, _ = agent.call('put_file', {'path': str(tmp_path / 'dest')}, b'x')
        assert header['ok']
        assert temps(tmp_path) == sorted(['.ferrogen-notes.tmp', f'.ferrogen-{live.pid}-abcdef.tmp'])
    finally:
        live.kill()
        live.wait()


def test_sibling_ansible_tmp_dirs_are_swept(agent, tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    old_task = tmp_path / 'ansible-tmp-1-old'
    new_task = tmp_path / 'ansible-tmp-2-new'
    old_task.mkdir()
    new_task.mkdir()
    (old_task / f'.ferrogen-{dead.pid}-0123.tmp').write_bytes(b'partial')
    header, _ = agent.call('put_file', {'path': str(new_task / 'source')}, b'x')
    assert header['ok']
    assert temps(old_task) == []


def test_small_put_reports_size_and_checksum(agent, tmp_path):
    header, _ = agent.call('put_file', {'path': str(tmp_path / 'f')}, b'hello')
    assert header['result'] == {'size': 5, 'sha1': hashlib.sha1(b'hello').hexdigest()}
    assert (tmp_path / 'f').stat().st_mode & 0o777 == 0o600


def fetch_all(agent, path, call_id=200, ack=True):
    agent.send({'type': 'call', 'id': call_id, 'op': 'fetch_begin', 'args': {'path': str(path)}})
    data = bytearray()
    while True:
        header, body = agent.read()
        if header['type'] == 'reply':
            return header, bytes(data)
        assert header['type'] == 'chunk' and header['offset'] == len(data)
        data += body
        if ack:
            agent.send({'type': 'ack', 'id': call_id, 'bytes': len(data)})


def test_streamed_fetch_returns_the_file_and_its_checksum(agent, tmp_path):
    source = tmp_path / 'src'
    data = os.urandom(6 * CHUNK + 5)
    source.write_bytes(data)
    source.chmod(0o604)
    header, got = fetch_all(agent, source)
    assert got == data
    assert header['result'] == {'size': len(data), 'sha1': hashlib.sha1(data).hexdigest(), 'mode': 0o604}


def test_fetch_stops_at_the_window_without_acks(agent, tmp_path):
    source = tmp_path / 'src'
    source.write_bytes(os.urandom(10 * CHUNK))
    agent.send({'type': 'call', 'id': 7, 'op': 'fetch_begin', 'args': {'path': str(source)}})
    got = 0
    while got < WINDOW:
        header, body = agent.read()
        assert header['type'] == 'chunk'
        got += len(body)
    assert got == WINDOW
    # Nothing more comes until an ack: a ping is answered next.
    agent.send({'type': 'call', 'id': 8, 'op': 'ping', 'args': {}})
    header, _ = agent.read()
    assert header['type'] == 'reply' and header['id'] == 8
    agent.send({'type': 'cancel', 'id': 7})
    header, _ = agent.read()
    assert header['error']['kind'] == 'cancelled'


def test_fetch_of_a_missing_file_is_not_found(agent, tmp_path):
    header, _ = fetch_all(agent, tmp_path / 'missing')
    assert header['error']['kind'] == 'not_found'


def test_fetch_of_an_empty_file(agent, tmp_path):
    (tmp_path / 'empty').write_bytes(b'')
    header, data = fetch_all(agent, tmp_path / 'empty')
    assert data == b'' and header['result']['size'] == 0


def test_agent_memory_stays_bounded_on_a_large_put(agent, tmp_path):
    """64 MiB through the agent must not grow it by more than a few MB."""
    def hwm_kib():
        with open(f'/proc/{agent.proc.pid}/status') as status:
            return next(int(line.split()[1]) for line in status if line.startswith('VmHWM'))

    before = hwm_kib()
    block = os.urandom(CHUNK)
    agent.send({'type': 'call', 'id': 9, 'op': 'put_begin', 'args': {'path': str(tmp_path / 'big'), 'size': 64 * CHUNK}})
    digest = hashlib.sha1()
    acked = sent = 0
    while sent < 64 * CHUNK:
        while sent - acked >= WINDOW:
            acked = agent.read()[0]['bytes']
        agent.send({'type': 'chunk', 'id': 9, 'offset': sent}, block)
        digest.update(block)
        sent += CHUNK
    agent.send({'type': 'put_end', 'id': 9, 'size': sent, 'sha1': digest.hexdigest()})
    while True:
        header, _ = agent.read()
        if header['type'] == 'reply':
            break
    assert header['ok'], header
    grown = hwm_kib() - before
    assert grown < 16 * 1024, f'agent VmHWM grew by {grown} KiB'


def test_killed_agent_leaves_a_temp_file_that_the_next_one_sweeps(tmp_path):
    first = AgentProcess()
    put_stream(first, tmp_path / 'dest', os.urandom(CHUNK), end=False)
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    assert len(temps(tmp_path)) == 1
    second = AgentProcess()
    try:
        header, _ = second.call('put_file', {'path': str(tmp_path / 'other')}, b'x')
        assert header['ok']
        deadline = time.monotonic() + 5
        while temps(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert temps(tmp_path) == []
    finally:
        second.close()


def test_become_interpreter_writes_and_reads_streamed_files(tmp_path):
    """Transfer frames addressed to a become interpreter are relayed to it: the file is
    written by that account, and read back through it."""
    from test_agent import BecomeAgent

    import shutil
    import uuid

    agent = BecomeAgent()
    base = Path(f'/tmp/ferrogen-become-{uuid.uuid4().hex[:10]}')  # reachable by ferrotest
    try:
        assert agent.spawn(1, method='sudo', user='ferrotest')['ok']
        base.mkdir(mode=0o755)
        private = base / 'ferrotest-only'
        private.mkdir(mode=0o700)
        os.chown(private, pwd_uid('ferrotest'), -1)
        dest = private / 'dest'
        data = os.urandom(2 * CHUNK + 9)
        agent.send({'type': 'call', 'id': 50, 'interp': 1, 'op': 'put_begin',
                    'args': {'path': str(dest), 'size': len(data), 'mode': 0o600}})
        for offset in range(0, len(data), CHUNK):
            agent.send({'type': 'chunk', 'id': 50, 'interp': 1, 'offset': offset}, data[offset:offset + CHUNK])
            assert agent.read()[0]['type'] == 'ack'
        agent.send({'type': 'put_end', 'id': 50, 'interp': 1, 'size': len(data), 'sha1': hashlib.sha1(data).hexdigest()})
        header, _ = agent.read()
        assert header['ok'], header
        assert dest.read_bytes() == data
        assert dest.stat().st_uid == pwd_uid('ferrotest') and dest.stat().st_mode & 0o777 == 0o600
        agent.send({'type': 'call', 'id': 51, 'interp': 1, 'op': 'fetch_begin', 'args': {'path': str(dest)}})
        got = bytearray()
        while True:
            header, body = agent.read()
            if header['type'] == 'reply':
                break
            got += body
            agent.send({'type': 'ack', 'id': 51, 'interp': 1, 'bytes': len(got)})
        assert header['ok'] and bytes(got) == data
    finally:
        agent.close()
        shutil.rmtree(base, ignore_errors=True)


def pwd_uid(user):
    import pwd

    return pwd.getpwnam(user).pw_uid


def test_a_put_chunk_arriving_in_pieces_is_read_whole(agent, tmp_path):
    data = os.urandom(CHUNK)
    dest = tmp_path / 'dest'
    agent.send({'type': 'call', 'id': 7, 'op': 'put_begin', 'args': {'path': str(dest), 'size': len(data)}})
    frame = frames.encode_frame({'type': 'chunk', 'id': 7, 'offset': 0}, data)
    # Prefix and part of the header, then the rest of the header and part of the body, then
    # the rest.
    for start, end in ((0, 10), (10, 200), (200, len(frame))):
        agent.proc.stdin.write(frame[start:end])
        agent.proc.stdin.flush()
        time.sleep(0.2)
    header, _ = agent.read()
    assert header == {'type': 'ack', 'id': 7, 'bytes': len(data)}
    agent.send({'type': 'put_end', 'id': 7, 'size': len(data), 'sha1': hashlib.sha1(data).hexdigest()})
    header, _ = agent.read()
    assert header['ok'], header
    assert dest.read_bytes() == data


def test_a_put_chunk_and_the_frames_behind_it_in_one_write_all_arrive(agent, tmp_path):
    data = os.urandom(CHUNK + 100)
    dest = tmp_path / 'dest'
    agent.send({'type': 'call', 'id': 8, 'op': 'put_begin', 'args': {'path': str(dest), 'size': len(data)}})
    # A megabyte chunk read straight into its own buffer, a small chunk read through the channel's
    # buffer, and the end: in one write, then in pieces cut across the frames' boundaries.
    stream = (frames.encode_frame({'type': 'chunk', 'id': 8, 'offset': 0}, data[:CHUNK])
              + frames.encode_frame({'type': 'chunk', 'id': 8, 'offset': CHUNK}, data[CHUNK:])
              + frames.encode_frame({'type': 'put_end', 'id': 8, 'size': len(data),
                                     'sha1': hashlib.sha1(data).hexdigest()}))
    for start in range(0, len(stream), 300007):
        agent.proc.stdin.write(stream[start:start + 300007])
        agent.proc.stdin.flush()
    replies = [agent.read()[0] for _ in range(3)]
    assert replies[:2] == [{'type': 'ack', 'id': 8, 'bytes': CHUNK}, {'type': 'ack', 'id': 8, 'bytes': len(data)}]
    assert replies[2]['ok'], replies[2]
    assert dest.read_bytes() == data

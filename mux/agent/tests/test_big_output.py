"""A task writing more than a reply can carry (issue 20, item 2): that one call fails with a
clear error, read from the output's size before any of it is in memory, and the interpreter,
login or become, carries on. No frame over the limit ever reaches the link."""

from __future__ import annotations

from test_agent import BecomeAgent

MAX_BODY = 256 * 1024 * 1024
TOO_MUCH = f'head -c {MAX_BODY + 1} /dev/zero'


def hwm_kib(pid):
    with open(f'/proc/{pid}/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith('VmHWM'))


def test_output_beyond_a_reply_fails_the_call_and_the_agent_carries_on(agent):
    before = hwm_kib(agent.proc.pid)
    header, body = agent.call('exec_command', {'cmd': TOO_MUCH})
    assert not header['ok'] and header['error']['kind'] == 'output_too_large', header
    assert f'{MAX_BODY + 1} bytes of output' in header['error']['message']
    assert body == b''
    assert hwm_kib(agent.proc.pid) - before < 64 * 1024, 'the agent read the output into memory'
    header, body = agent.call('exec_command', {'cmd': 'echo after'})
    assert header['ok'] and body == b'after\n'


def test_a_terminals_line_endings_count_too(agent):
    header, _ = agent.call('exec_command', {'cmd': f'head -c {MAX_BODY // 2 + 1} /dev/zero | tr "\\0" "\\n"',
                                            'emulate_tty': True})
    assert header['error']['kind'] == 'output_too_large', header


def test_a_become_interpreters_big_output_fails_only_its_call():
    agent = BecomeAgent()
    try:
        assert agent.spawn(1, method='sudo', user='ferrotest')['ok']
        agent.next_id += 1
        agent.send({'type': 'call', 'id': agent.next_id, 'interp': 1, 'op': 'exec_command', 'args': {'cmd': TOO_MUCH}})
        header, _ = agent.read()
        while header['type'] != 'reply':
            header, _ = agent.read()
        assert header['error']['kind'] == 'output_too_large', header
        agent.next_id += 1
        agent.send({'type': 'call', 'id': agent.next_id, 'interp': 1, 'op': 'exec_command', 'args': {'cmd': 'id -un'}})
        header, body = agent.read()
        while header['type'] != 'reply':
            header, body = agent.read()
        assert header['ok'] and body == b'ferrotest\n', header
    finally:
        agent.close()


# Outputs over this stream (transfers.STREAMED_OUTPUT_MIN); the window and chunk of a fetch.
STREAMED_OUTPUT_MIN = 1 << 20
WINDOW = 4 << 20
CHUNK = 1 << 20
STREAMED = 12 << 20


def fetch_output(agent, output, interp=0, call_id=900):
    """The chunks of a streamed output (fetch_begin with `output`), acknowledged one by one,
    checking that no frame is larger than a chunk and none runs past the window."""
    header = {'type': 'call', 'id': call_id, 'op': 'fetch_begin', 'args': {'output': output}}
    agent.send(dict(header, interp=interp) if interp else header)
    data = bytearray()
    while True:
        header, body = agent.read()
        if header.get('id') != call_id:
            continue
        if header['type'] == 'reply':
            return header, bytes(data)
        assert header['type'] == 'chunk' and header['offset'] == len(data), header
        assert len(body) <= CHUNK
        data += body
        agent.send({'type': 'ack', 'id': call_id, 'bytes': len(data), **({'interp': interp} if interp else {})})


def test_an_output_over_a_chunk_is_fetched_in_chunks(agent):
    before = hwm_kib(agent.proc.pid)
    header, body = agent.call('exec_command', {'cmd': f'head -c {STREAMED} /dev/zero | tr "\\0" o; echo err >&2'})
    assert header['ok'] and body == b'', header
    result = header['result']
    assert result['rc'] == 0 and result['stdout_len'] == STREAMED and result['output'] == header['id']
    reply, data = fetch_output(agent, result['output'])
    assert reply['ok'], reply
    assert data == b'o' * STREAMED + b'err\n', (len(data), data[-20:])
    assert reply['result']['size'] == len(data)
    assert hwm_kib(agent.proc.pid) - before < 8 * 1024, 'the agent read the output into memory'
    # Fetched once: it is gone.
    reply, _ = fetch_output(agent, result['output'], call_id=901)
    assert reply['error']['kind'] == 'not_found'


def test_a_streamed_terminal_output_has_its_line_endings(agent):
    lines = STREAMED_OUTPUT_MIN // 4 + 1
    header, _ = agent.call('exec_command', {'cmd': f'yes abc | head -n {lines}', 'emulate_tty': True})
    assert header['result']['stdout_len'] == lines * 5
    _, data = fetch_output(agent, header['result']['output'])
    assert data == b'abc\r\n' * lines


def test_a_become_interpreters_big_output_is_relayed_in_chunks():
    agent = BecomeAgent()
    try:
        assert agent.spawn(1, method='sudo', user='ferrotest')['ok']
        header, body = agent.call_in(1, 'exec_command', {'cmd': f'head -c {STREAMED} /dev/zero; id -un'})
        assert header['ok'] and body == b'', header
        reply, data = fetch_output(agent, header['result']['output'], interp=1)
        assert reply['ok'] and data == b'\0' * STREAMED + b'ferrotest\n'
    finally:
        agent.close()

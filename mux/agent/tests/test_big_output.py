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

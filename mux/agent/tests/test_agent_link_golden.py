"""The agent link's golden frames (worker-ipc/tests/golden/agent/), decoded and re-encoded with
the agent's own frame code: the Rust side checks the same files against its typed messages."""

from __future__ import annotations

import os

import ferrogen_agent
import pytest

agent_module = ferrogen_agent.load()

GOLDEN = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'worker-ipc', 'tests', 'golden', 'agent')
GOLDEN_FILES = sorted(name for name in os.listdir(GOLDEN) if name.endswith('.bin'))


def decode_with_agent(data):
    """The frames in data, read through a pipe as the agent reads its stdin."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
        os.close(write_fd)
        write_fd = None
        os.set_blocking(read_fd, False)
        frames = agent_module.read_frames(read_fd, bytearray())
    finally:
        os.close(read_fd)
        if write_fd is not None:
            os.close(write_fd)
    return frames


def test_there_are_golden_frames_both_ways():
    assert any(name.startswith('to_') for name in GOLDEN_FILES)
    assert any(name.startswith('from_') for name in GOLDEN_FILES)


@pytest.mark.parametrize('name', GOLDEN_FILES)
def test_golden_frame_round_trips_through_the_agent_codec(name):
    with open(os.path.join(GOLDEN, name), 'rb') as handle:
        data = handle.read()
    frames = decode_with_agent(data)
    assert len(frames) == 1
    header, body = frames[0]
    assert agent_module.encode_frame(header, body) == data


def read_golden(name):
    with open(os.path.join(GOLDEN, name + '.bin'), 'rb') as handle:
        [(header, body)] = decode_with_agent(handle.read())
    return header, body


def test_frames_to_the_agent_carry_what_its_dispatch_reads():
    header, body = read_golden('to_call')
    assert (header['type'], header['id'], header['interp'], header['op'], body) == ('call', 12, 0, 'exec_command', b'stdin\n')
    assert hasattr(agent_module.Agent, 'op_' + header['op'])
    header, _ = read_golden('to_fetch_output')
    assert header['op'] == 'fetch_begin' and header['args']['output'] == 12
    header, body = read_golden('from_reply_streamed_output')
    assert header['result']['output'] == header['id'] and body == b''
    header, _ = read_golden('to_spawn')
    assert header['become']['password'] == 'secret' and header['interp'] == 3
    header, _ = read_golden('to_put_end')
    assert set(header) == {'type', 'id', 'interp', 'size', 'sha1', 'digests'}
    header, body = read_golden('to_blob_cached')
    assert header['cached'] is True and body == b''


def test_frames_from_the_agent_are_the_ones_it_sends():
    header, _ = read_golden('from_reply_error')
    assert header['error']['kind'] == agent_module.NOT_FOUND
    header, _ = read_golden('from_spawn_failed')
    assert header['error']['kind'] == agent_module.BECOME_FAILED

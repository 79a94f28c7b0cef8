"""MITOGEN_ROUTER_DEBUG's /tmp/mitogen.<pid>.log, when that name is free and when it is not ours.

/tmp outlives processes and pids are reused, so the name can be taken by another account's log
from an earlier process, or by a link someone planted. The agent must start either way."""

from __future__ import annotations

import glob
import os
import re

import pytest
from test_agent import AgentProcess

ROUTER_DEBUG = 'ROUTER_DEBUG=1;'


def launcher(squat: str) -> tuple[str, ...]:
    """Runs `squat` with $$ as the interpreter's pid-to-be, then becomes the interpreter."""
    return ('sh', '-c', squat + '; exec "$@"', 'sh')


@pytest.fixture
def debug_logs():
    """The logs of the agents a test starts, by pid; removed afterwards with what squatted them."""
    pids = []
    yield pids
    for pid in pids:
        for path in glob.glob(f'/tmp/mitogen.{pid}.log') + glob.glob(f'/tmp/mitogen.{pid}.*.log'):
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)


def start(debug_logs, squat: str = 'true') -> AgentProcess:
    agent = AgentProcess(settings=ROUTER_DEBUG, launcher=launcher(squat))
    debug_logs.append(agent.ready['pid'])
    return agent


def test_the_log_is_tmp_mitogen_pid_log(debug_logs):
    agent = start(debug_logs)
    pid = agent.ready['pid']
    assert agent.call('ping', {})[0]['ok']
    agent.close()
    with open(f'/tmp/mitogen.{pid}.log') as handle:
        assert f'agent ready: pid {pid}' in handle.read()


def test_our_own_stale_log_is_emptied_and_reused(debug_logs):
    agent = start(debug_logs, 'echo "an earlier process with this pid" > /tmp/mitogen.$$.log')
    pid = agent.ready['pid']
    agent.close()
    with open(f'/tmp/mitogen.{pid}.log') as handle:
        text = handle.read()
    assert 'an earlier process' not in text and f'agent ready: pid {pid}' in text, text


VICTIM = '/tmp/ferrogen-test-debug-victim'


@pytest.fixture
def victim():
    with open(VICTIM, 'w') as handle:
        handle.write('precious\n')
    yield VICTIM
    os.unlink(VICTIM)


@pytest.mark.parametrize('squat, why', [
    (f'ln -s {VICTIM} /tmp/mitogen.$$.log', 'it is a symbolic link'),
    ('echo theirs > /tmp/mitogen.$$.log && chown ferronopw /tmp/mitogen.$$.log', 'it belongs to uid'),
    ('mkfifo /tmp/mitogen.$$.log', 'it is not a regular file'),
    ('mkdir /tmp/mitogen.$$.log', 'it is not a regular file'),
], ids=['planted-link', 'another-account', 'fifo', 'directory'])
def test_a_name_that_is_not_ours_moves_the_log_aside_and_says_so(debug_logs, victim, squat, why):
    agent = start(debug_logs, squat)
    pid = agent.ready['pid']
    header, _ = agent.read()
    assert header['type'] == 'log' and header['level'] == 'warning', header
    message = header['message']
    assert f'not writing the debug log to /tmp/mitogen.{pid}.log: {why}' in message, message
    detour = re.search(r'; it is (\S+)$', message).group(1)
    assert re.fullmatch(rf'/tmp/mitogen\.{pid}\.\d+\.log', detour), message
    assert agent.call('ping', {})[0]['ok']
    agent.close()
    with open(detour) as handle:
        assert f'agent ready: pid {pid}' in handle.read()
    with open(victim) as handle:
        assert handle.read() == 'precious\n'
    squatted = f'/tmp/mitogen.{pid}.log'
    if os.path.isfile(squatted) and not os.path.islink(squatted):
        with open(squatted) as handle:
            assert handle.read() == 'theirs\n'


def test_with_every_name_taken_the_agent_runs_without_a_log(debug_logs):
    agent = start(debug_logs, 'mkdir /tmp/mitogen.$$.log; for n in $(seq 100); do : > /tmp/mitogen.$$.$n.log; done')
    header, _ = agent.read()
    assert header['message'].endswith('the 100 other names are taken too; no debug log'), header
    assert agent.call('ping', {})[0]['ok']
    agent.close()

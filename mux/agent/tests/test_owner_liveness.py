"""Who is alive, as the agent's sweeps of dead writers' temp dirs and temp files decide it
(issue 20, item 1): by a lock the live writer holds, which means the same thing in every PID
namespace, on every host sharing a home, and after a reboot. A pid means none of that."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys

import pytest
from module_payloads import ModuleRunner
from test_agent import AgentProcess
from test_transfer_ops import CHUNK, put_stream, temps

# Another PID namespace with its own /proc, the way a container sees the host's processes:
# none of ours exist there, and its pids mean nothing here.
OTHER_PID_NAMESPACE = ('unshare', '--pid', '--fork', '--mount-proc')

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which('unshare') is None,
                                reason='needs root and unshare(1) for PID namespaces')



def kill_agent_in_namespace(process):
    """SIGKILL the agent, which is unshare's child (pid 1 of its namespace), then unshare."""
    unshare = process.proc.pid
    with open(f'/proc/{unshare}/task/{unshare}/children') as children:
        (agent_pid,) = [int(pid) for pid in children.read().split()]
    os.kill(agent_pid, signal.SIGKILL)
    process.proc.wait(timeout=10)


ECHO_MODULE = """
from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(argument_spec={'word': {'type': 'str'}})
module.exit_json(changed=False, word=module.params['word'])
"""


def test_an_agent_in_another_pid_namespace_leaves_a_live_agents_temp_dir_alone():
    live = AgentProcess()
    try:
        other = AgentProcess(launcher=OTHER_PID_NAMESPACE)
        assert os.path.dirname(other.ready['tmpdir']) == os.path.dirname(live.ready['tmpdir'])
        other.close()
        assert os.path.isdir(live.ready['tmpdir'])
        header, body = live.call('exec_command', {'cmd': 'echo still here'})
        assert header['ok'] and body == b'still here\n'
    finally:
        live.close()


def test_a_dead_agents_temp_dir_from_another_pid_namespace_is_swept():
    """Its pid (1 or 2 in its namespace) is alive here: only the lock tells."""
    dead = AgentProcess(launcher=OTHER_PID_NAMESPACE)
    tmpdir = dead.ready['tmpdir']
    kill_agent_in_namespace(dead)
    assert os.path.isdir(tmpdir)
    sweeper = AgentProcess()
    try:
        assert not os.path.exists(tmpdir)
    finally:
        sweeper.close()


def test_a_writer_in_another_pid_namespace_keeps_its_temp_file(tmp_path):
    """A transfer into a directory shared with another namespace's agent (a shared home, a
    volume) survives that agent's sweep and completes."""
    writer = AgentProcess()
    try:
        data = os.urandom(2 * CHUNK + 5)
        put_stream(writer, tmp_path / 'dest', data, end=False)
        assert len(temps(tmp_path)) == 1
        neighbour = AgentProcess(launcher=OTHER_PID_NAMESPACE)
        header, _ = neighbour.call('put_file', {'path': str(tmp_path / 'other')}, b'x')
        assert header['ok'], header
        neighbour.close()
        assert len(temps(tmp_path)) == 1
        writer.send({'type': 'put_end', 'id': 100, 'size': len(data), 'sha1': hashlib.sha1(data).hexdigest()})
        header, _ = writer.read()
        assert header['ok'], header
        assert (tmp_path / 'dest').read_bytes() == data
    finally:
        writer.close()


def test_a_dead_writers_temp_file_from_another_pid_namespace_is_swept(tmp_path):
    dead = AgentProcess(launcher=OTHER_PID_NAMESPACE)
    put_stream(dead, tmp_path / 'dest', os.urandom(CHUNK), end=False)
    kill_agent_in_namespace(dead)
    assert len(temps(tmp_path)) == 1
    sweeper = AgentProcess()
    try:
        header, _ = sweeper.call('put_file', {'path': str(tmp_path / 'other')}, b'x')
        assert header['ok']
        assert temps(tmp_path) == []
    finally:
        sweeper.close()


def test_an_agent_whose_temp_dir_vanished_recreates_it_and_carries_on(agent, tmp_path, monkeypatch):
    module_path = tmp_path / 'ferrogen_echo.py'
    module_path.write_text(ECHO_MODULE)
    runner = ModuleRunner(agent, module_path, monkeypatch, tmp_path / 'local-tmp')
    assert runner.run({'word': 'before'})['word'] == 'before'
    shutil.rmtree(agent.ready['tmpdir'])
    # The module's zip, cached before, is back where the compiled module expects it.
    payload = runner.payload({'word': 'after'})
    header, body = agent.call('run_module', payload.args)
    assert header['ok'], header
    assert json.loads(body.decode().strip().splitlines()[-1])['word'] == 'after'
    assert os.path.isfile(os.path.join(agent.ready['tmpdir'], payload.zip_hash + '.zip'))
    # A blob arriving into a vanished dir is kept too.
    shutil.rmtree(agent.ready['tmpdir'])
    assert runner.run({'word': 'third'})['word'] == 'third'
    header, body = agent.call('exec_command', {'cmd': 'echo ok'})
    assert header['ok'] and body == b'ok\n'
    assert agent.proc.poll() is None, sys.stderr


def test_a_cached_blob_reaches_a_become_interpreter_after_the_temp_dir_vanished():
    """The login agent keeps a descriptor on each blob it relayed, and relays a `cached` one
    from it: the temp dir it was written to may be gone."""
    import base64
    import glob

    from test_agent import BecomeAgent

    agent = BecomeAgent()
    try:
        for interp in (1, 2):
            assert agent.spawn(interp, method='sudo', user='ferrotest')['ok']
        data = base64.b64encode(os.urandom(1000))
        digest = hashlib.sha1(data).hexdigest()
        agent.send({'type': 'blob', 'hash': digest, 'interp': 1}, data)
        # The agent takes frames in order: once this call is answered, the blob's copy is
        # written and the temp dir can be removed without racing that write.
        agent.call_in(1, 'ping', {})
        shutil.rmtree(agent.ready['tmpdir'])
        agent.send({'type': 'blob', 'hash': digest, 'interp': 2, 'cached': True})
        second = agent.call_in(2, 'ping', {})[0]['result']['pid']
        [kept] = glob.glob(f'/home/ferrotest/.ansible/tmp/ferrogen-{second}-*/{digest}.zip')
        with open(kept, 'rb') as handle:
            assert handle.read() == base64.b64decode(data)
        assert agent.proc.poll() is None
    finally:
        agent.close()

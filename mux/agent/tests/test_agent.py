"""The agent, driven directly over its stdio exactly as the mux drives it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib

import ferrogen_agent
import pytest
from ansible_ferrogen import frames



class AgentProcess:
    def __init__(self, early: bytes = b'', python: str = sys.executable, settings: str = '',
                 launcher: tuple[str, ...] = ()):
        """Start the agent as the mux does; `early` follows the bootstrap payload in the same
        write, as frames the mux sends before `ready` do. `settings` are the debug statements
        the mux puts in the stub; `launcher` runs the interpreter (and keeps its pid)."""
        source = zlib.compress(ferrogen_agent.source())
        stub = (f'import sys,zlib;{settings}SOURCE=sys.stdin.buffer.read({len(source)});'
                'exec(zlib.decompress(SOURCE))')
        self.proc = subprocess.Popen([*launcher, python, '-c', stub], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.proc.stdin.write(source + early)
        self.proc.stdin.flush()
        self.ready, _ = self.read()
        self.next_id = 0

    def read(self):
        return frames.read_frame(self.proc.stdout.read)

    def send(self, header, body=b''):
        self.proc.stdin.write(frames.encode_frame(header, body))
        self.proc.stdin.flush()

    def call(self, op, args, body=b''):
        self.next_id += 1
        self.send({'type': 'call', 'id': self.next_id, 'op': op, 'args': args}, body)
        while True:
            header, reply_body = self.read()
            if header['type'] == 'reply':
                assert header['id'] == self.next_id
                return header, reply_body

    def close(self):
        self.proc.stdin.close()
        return self.proc.wait(timeout=10)


def frame(header, body=b''):
    return frames.encode_frame(header, body)


def test_calls_sent_behind_the_bootstrap_payload_are_answered_after_ready():
    """The stub reads its payload through a buffered reader, which also takes in the first
    frames; the agent must still see them, with no further input to wake it up."""
    early = frame({'type': 'call', 'id': 1, 'op': 'ping', 'args': {}})
    early += frame({'type': 'call', 'id': 2, 'op': 'exec_command', 'args': {'cmd': 'cat'}}, b'x' * 100000)
    agent = AgentProcess(early)
    try:
        assert agent.ready['type'] == 'ready'
        replies = {}
        while len(replies) < 2:
            header, body = agent.read()
            if header['type'] == 'reply':
                replies[header['id']] = (header, body)
        assert replies[1][0]['ok'] and replies[1][0]['result']['pid'] == agent.proc.pid
        assert replies[2][0]['result']['rc'] == 0 and replies[2][1] == b'x' * 100000
    finally:
        agent.close()


def test_ready_names_a_private_temp_dir(agent):
    assert agent.ready['type'] == 'ready'
    assert agent.ready['pid'] == agent.proc.pid
    assert os.stat(agent.ready['tmpdir']).st_mode & 0o777 == 0o700


def test_exec_command_separates_streams_and_feeds_stdin(agent):
    header, body = agent.call('exec_command', {'cmd': 'echo out; echo err >&2; cat; exit 3'}, b'fed\n')
    result = header['result']
    assert result['rc'] == 3
    assert body[:result['stdout_len']] == b'out\nfed\n'
    assert body[result['stdout_len']:] == b'err\n'


def test_exec_command_tty_emulation_merges_streams(agent):
    header, body = agent.call('exec_command', {'cmd': 'echo out; echo err >&2', 'emulate_tty': True})
    assert body == b'out\r\nerr\r\n'
    assert header['result']['stdout_len'] == len(body)


def test_tasks_leave_no_trace_in_the_interpreter(agent):
    agent.call('exec_command', {'cmd': 'cd /; export LEAK=1'})
    header, body = agent.call('exec_command', {'cmd': 'echo "${LEAK:-none}"; pwd'})
    assert body.split() == [b'none', os.getcwd().encode()]


def test_killed_task_reports_the_signal(agent):
    header, _ = agent.call('exec_command', {'cmd': 'kill -9 $$'})
    assert header['result']['rc'] == -signal.SIGKILL


def children_of(pid, zombies=False):
    """The live child processes of pid, or with zombies=True, those exited and not reaped."""
    children = []
    for entry in os.listdir('/proc'):
        try:
            with open(f'/proc/{entry}/stat') as handle:
                fields = handle.read().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and (fields[0] == 'Z') == zombies:
            children.append(int(entry))
    return children


def wait_for(predicate, timeout=5):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.02)


def test_a_spare_task_process_waits_while_idle_and_goes_with_the_agent(agent):
    agent.call('exec_command', {'cmd': 'true'})
    wait_for(lambda: len(children_of(agent.proc.pid)) == 1)
    (spare,) = children_of(agent.proc.pid)
    # The next task runs in that spare (the shell execs in the task's process), and a new
    # spare is forked for the task after it.
    _, body = agent.call('exec_command', {'cmd': 'echo $$'})
    assert int(body) == spare
    wait_for(lambda: len(children_of(agent.proc.pid)) == 1 and children_of(agent.proc.pid) != [spare])
    (next_spare,) = children_of(agent.proc.pid)
    assert agent.close() == 0
    wait_for(lambda: not os.path.exists(f'/proc/{next_spare}'))


EXITING_MODULE = """
import sys
from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(argument_spec={'code': {'type': 'int'}})
print('{"changed": false, "code": %d}' % module.params['code'])
sys.stdout.flush()
sys.exit(module.params['code'])
"""


def test_a_module_task_is_answered_with_its_exit_code_and_its_process_reaped(agent, tmp_path, monkeypatch):
    """A module task process says it is done before it exits, and the agent answers then; the
    process is reaped all the same."""
    from module_payloads import ModuleRunner

    module_path = tmp_path / 'ferrogen_exiting.py'
    module_path.write_text(EXITING_MODULE)
    runner = ModuleRunner(agent, module_path, monkeypatch, tmp_path / 'local-tmp')
    for code in (0, 3, 0, 255):
        payload = runner.payload({'code': code})
        agent.send({'type': 'blob', 'hash': payload.zip_hash}, payload.zip_data)
        header, body = agent.call('run_module', payload.args)
        assert header['result']['rc'] == code, header
        assert json.loads(body[:header['result']['stdout_len']]) == {'changed': False, 'code': code}
    # Commands still end with their shell, which replaced the task process.
    assert agent.call('exec_command', {'cmd': 'exit 7'})[0]['result']['rc'] == 7
    wait_for(lambda: not children_of(agent.proc.pid, zombies=True) and len(children_of(agent.proc.pid)) == 1)


def test_a_task_process_holds_none_of_the_agent_descriptors(agent):
    check = f"{sys.executable} -c 'import os; print(sorted(os.listdir(\"/proc/self/fd\")))'"
    for _ in range(3):  # forked directly, then from spares
        header, body = agent.call('exec_command', {'cmd': check})
        assert body.split(b'\n')[0] == b"['0', '1', '2', '3']", body


def test_put_file_is_atomic_and_leaves_no_temp_file(agent, tmp_path):
    dest = tmp_path / 'dest'
    dest.write_bytes(b'old')
    header, _ = agent.call('put_file', {'path': str(dest), 'mode': 0o640}, b'new contents')
    assert header['ok']
    assert dest.read_bytes() == b'new contents'
    assert dest.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ['dest']


def test_fetch_of_a_missing_file_is_an_error(agent, tmp_path):
    header, _ = agent.call('fetch_begin', {'path': str(tmp_path / 'missing')})
    assert header['error']['kind'] == 'not_found'
    assert 'No such file' in header['error']['message']


def test_unknown_op_is_a_bad_request(agent):
    header, _ = agent.call('no_such_op', {})
    assert header['error']['kind'] == 'bad_request'


def test_end_of_stdin_removes_the_temp_dir(agent):
    tmpdir = agent.ready['tmpdir']
    assert agent.close() == 0
    assert not os.path.exists(tmpdir)


# -- become ------------------------------------------------------------------------------
# These use the accounts ci/setup.sh creates: ferrotest (sudo with password testpass, doas
# nopass to root), ferrosu (su password supass), ferrotty (passwordless sudo, requiretty).

TARGET_PYTHON = '/usr/bin/python3'


class BecomeAgent(AgentProcess):
    def __init__(self, login_user=None, python=sys.executable):
        self.login_user = login_user
        super().__init__(python=python)

    def send_spawn(self, interp, timeout=10, **become):
        become.setdefault('python', TARGET_PYTHON)
        self.send({'type': 'spawn', 'interp': interp, 'become': become, 'timeout': timeout})

    def spawn(self, interp, timeout=10, **become):
        self.send_spawn(interp, timeout, **become)
        while True:
            header, _ = self.read()
            if header['type'] == 'spawned':
                return header

    def spawn_then_call(self, interp, op, args, timeout=10, **become):
        """Spawn and call without waiting in between, as the mux does: (spawned, reply)."""
        self.send_spawn(interp, timeout, **become)
        self.next_id += 1
        self.send({'type': 'call', 'id': self.next_id, 'interp': interp, 'op': op, 'args': args})
        spawned = reply = None
        while spawned is None or reply is None:
            header, body = self.read()
            if header['type'] == 'spawned':
                spawned = header
            elif header['type'] == 'reply':
                assert spawned is not None, 'the reply came before spawned'
                reply = header, body
        return spawned, reply

    def call_in(self, interp, op, args, body=b''):
        self.next_id += 1
        self.send({'type': 'call', 'id': self.next_id, 'interp': interp, 'op': op, 'args': args}, body)
        while True:
            header, reply_body = self.read()
            if header['type'] == 'reply':
                return header, reply_body


@pytest.fixture
def as_user():
    started = []

    def start(login_user=None):
        original = subprocess.Popen

        def popen(argv, **kwargs):
            if login_user:
                argv = ['runuser', '-u', login_user, '--', TARGET_PYTHON] + argv[1:]
                kwargs['cwd'] = '/'
            return original(argv, **kwargs)

        subprocess.Popen = popen
        try:
            agent = BecomeAgent(login_user)
        finally:
            subprocess.Popen = original
        started.append(agent)
        return agent

    yield start
    for agent in started:
        if agent.proc.poll() is None:
            agent.close()


def whoami(agent, interp):
    header, body = agent.call_in(interp, 'exec_command', {'cmd': 'id -un'})
    assert header['ok'], header
    return body.strip().decode()


@pytest.mark.parametrize('login, become, expected', [
    (None, {'method': 'sudo', 'user': 'ferrotest', 'flags': '-H -S -n'}, 'ferrotest'),
    ('ferrotest', {'method': 'sudo', 'user': 'root', 'password': 'testpass', 'flags': '-H -S -n'}, 'root'),
    ('ferrotest', {'method': 'su', 'user': 'ferrosu', 'password': 'supass'}, 'ferrosu'),
    ('ferrotest', {'method': 'doas', 'user': 'root'}, 'root'),
    ('ferrotty', {'method': 'sudo', 'user': 'root', 'flags': '-H -S -n'}, 'root'),
], ids=['sudo-nopass', 'sudo-password', 'su-password', 'doas', 'sudo-requiretty'])
def test_become_methods(as_user, login, become, expected):
    agent = as_user(login)
    spawned = agent.spawn(1, **become)
    assert spawned['ok'], spawned
    assert spawned['ready']['user'] == expected
    assert whoami(agent, 1) == expected
    assert whoami(agent, 0) == (login or 'root')


@pytest.mark.parametrize('login, become, expected', [
    ('ferrotest', {'method': 'sudo', 'user': 'root', 'password': 'testpass', 'flags': '-H -S -n'}, 'root'),
    ('ferrotty', {'method': 'sudo', 'user': 'root', 'flags': '-H -S -n'}, 'root'),
], ids=['sudo-password', 'sudo-requiretty'])
def test_a_call_sent_right_behind_spawn_runs_once_the_child_is_up(as_user, login, become, expected):
    agent = as_user(login)
    spawned, (header, body) = agent.spawn_then_call(1, 'exec_command', {'cmd': 'id -un'}, **become)
    assert spawned['ok'], spawned
    assert header['ok'], header
    assert body.strip().decode() == expected


def test_a_call_sent_right_behind_a_failing_spawn_gets_the_spawn_error(as_user):
    agent = as_user('ferrotest')
    spawned, (header, _) = agent.spawn_then_call(1, 'exec_command', {'cmd': 'id -un'}, method='sudo', user='root',
                                                 password='wrong', flags='-H -S -n', timeout=20)
    assert not spawned['ok']
    assert header['error'] == spawned['error']


def test_a_become_account_that_cannot_reach_the_login_python_gets_the_platforms(tmp_path):
    """With no python named, the become interpreter is the login one, unless that one sits
    where other accounts cannot go (a pyenv or virtualenv in root's home)."""
    private = tmp_path / 'private'
    private.mkdir(mode=0o700)
    (private / 'python3').symlink_to(TARGET_PYTHON)
    agent = BecomeAgent(python=str(private / 'python3'))
    try:
        spawned = agent.spawn(1, method='sudo', user='ferrotest', flags='-H -S -n', python=None)
        assert spawned['ok'], spawned
        assert spawned['ready']['python'] == TARGET_PYTHON
        assert whoami(agent, 1) == 'ferrotest'
    finally:
        agent.close()


def test_wrong_password_fails_fast_with_a_clear_message(as_user):
    agent = as_user('ferrotest')
    spawned = agent.spawn(1, method='sudo', user='root', password='wrong', flags='-H -S -n', timeout=20)
    assert not spawned['ok']
    assert 'refused' in spawned['error']['message']
    assert 'wrong' not in spawned['error']['message']
    assert whoami(agent, 0) == 'ferrotest'


def test_unknown_user_fails_with_the_tool_message(as_user):
    agent = as_user()
    spawned = agent.spawn(1, method='sudo', user='no-such-user-x', flags='-H -S -n')
    assert not spawned['ok']
    assert 'no-such-user-x' in spawned['error']['message']


# Stands in for python: runs the stub, whose `exec` of the agent's source fails as an agent
# dying while it boots would (after the stub's go-ahead, before `ready`).
DIES_BOOTING = """#!/usr/bin/python3
import sys
def die(source):
    sys.exit('the agent died while booting')
exec(sys.argv[2], {'exec': die})
"""


def test_an_agent_dying_while_it_boots_is_reported_with_what_it_said(as_user):
    with tempfile.TemporaryDirectory() as shared:  # pytest's tmp_path is root's alone
        python = os.path.join(shared, 'python3')
        with open(python, 'w') as handle:
            handle.write(DIES_BOOTING)
        os.chmod(shared, 0o755)
        os.chmod(python, 0o755)
        agent = as_user()
        spawned = agent.spawn(1, method='sudo', user='ferrotest', flags='-H -S -n', python=python)
    assert not spawned['ok']
    message = spawned['error']['message']
    assert 'could not become sudo ferrotest (exit status 1)' in message, message
    assert 'the agent died while booting' in message, message


def test_stop_ends_the_child_and_calls_fail_cleanly(as_user):
    agent = as_user()
    assert agent.spawn(2, method='sudo', user='ferrotest')['ok']
    pid = agent.call_in(2, 'ping', {})[0]['result']['pid']
    agent.send({'type': 'stop', 'interp': 2})
    header, _ = agent.read()
    assert header == {'type': 'stopped', 'interp': 2}
    assert not os.path.exists(f'/proc/{pid}')
    header, _ = agent.call_in(2, 'ping', {})
    assert header['error']['kind'] == 'connection_lost'


def test_a_malformed_blob_is_dropped_and_the_agent_carries_on(agent):
    import hashlib

    garbage = b'not base64 at all!'
    agent.send({'type': 'blob', 'hash': hashlib.sha1(garbage).hexdigest()}, garbage)
    header, _ = agent.call('ping', {})
    assert header['ok']


def test_temp_dirs_of_dead_agents_are_swept_at_start(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    base = os.path.expanduser('~/.ansible/tmp')
    os.makedirs(base, exist_ok=True)
    stale = os.path.join(base, f'ferrogen-{dead.pid}-stale')
    live = os.path.join(base, f'ferrogen-{os.getpid()}-live')
    for path in (stale, live):
        os.makedirs(os.path.join(path, 'inside'), exist_ok=True)
    try:
        process = AgentProcess()
        assert process.ready['tmpdir'].startswith(base)
        assert not os.path.exists(stale)
        assert os.path.exists(live)
        process.close()
    finally:
        shutil.rmtree(live, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)


FORKING_MODULE = """
import os
import sys
import time
from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(argument_spec={})
if os.fork() == 0:
    sys.exit(0)  # the forked copy leaves through the agent's task code, as the module would
time.sleep(0.5)
module.exit_json(changed=False, finished='after the fork ended')
"""


def test_a_process_a_module_forks_does_not_answer_for_it(agent, tmp_path, monkeypatch):
    from module_payloads import ModuleRunner

    module_path = tmp_path / 'ferrogen_forking.py'
    module_path.write_text(FORKING_MODULE)
    result = ModuleRunner(agent, module_path, monkeypatch, tmp_path / 'local-tmp').run({})
    assert result['finished'] == 'after the fork ended', result


def test_heartbeats_are_answered_at_once_while_a_task_runs(agent):
    """Issue 20, item 3: the mux tells a stopped or wedged agent from a busy one by its
    heartbeats; a long task does not delay the answer."""
    agent.send({'type': 'call', 'id': 70, 'op': 'exec_command', 'args': {'cmd': 'sleep 2; echo slept'}})
    agent.send({'type': 'heartbeat', 'seq': 5})
    started = time.monotonic()
    header, _ = agent.read()
    assert header == {'type': 'heartbeat', 'seq': 5, 'pid': agent.proc.pid}
    assert time.monotonic() - started < 1.5, 'the heartbeat waited for the task'
    header, body = agent.read()
    assert header['id'] == 70 and body == b'slept\n'


def test_a_heartbeat_for_a_become_interpreter_is_answered_by_it(as_user):
    agent = as_user()
    assert agent.spawn(3, method='sudo', user='ferrotest')['ok']
    child_pid = agent.call_in(3, 'ping', {})[0]['result']['pid']
    agent.send({'type': 'heartbeat', 'seq': 9, 'interp': 3})
    header, _ = agent.read()
    assert header == {'type': 'heartbeat', 'seq': 9, 'pid': child_pid, 'interp': 3}


def test_a_stopped_child_never_blocks_the_login_agent_and_kill_ends_it(as_user):
    """Issue 20, item 3: frames for a stopped become interpreter wait in the login agent,
    which goes on answering; `kill` ends the child without waiting on it."""
    import base64
    import hashlib

    agent = as_user()
    assert agent.spawn(4, method='sudo', user='ferrotest')['ok']
    child_pid = agent.call_in(4, 'ping', {})[0]['result']['pid']
    os.kill(child_pid, signal.SIGSTOP)
    try:
        # Far more than the child's input pipe holds: a blocking write would wedge here.
        blob = base64.b64encode(os.urandom(3 << 20))
        agent.send({'type': 'blob', 'hash': hashlib.sha1(blob).hexdigest(), 'interp': 4}, blob)
        agent.send({'type': 'heartbeat', 'seq': 1})
        started = time.monotonic()
        header, _ = agent.read()
        assert header['type'] == 'heartbeat' and 'interp' not in header, header
        assert time.monotonic() - started < 2, 'the login agent waited on its stopped child'
        agent.send({'type': 'kill', 'interp': 4})
        header, _ = agent.read()
        while header['type'] == 'log':
            header, _ = agent.read()
        assert header == {'type': 'stopped', 'interp': 4}
        wait_for(lambda: not os.path.exists(f'/proc/{child_pid}'))
        assert whoami(agent, 0) == 'root'
    finally:
        try:
            os.kill(child_pid, signal.SIGKILL)
        except OSError:
            pass


LIMIT_MODULE = """
import os
import resource
from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(argument_spec={})
module.exit_json(nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0], cwd=os.getcwd())
"""


def test_a_module_runs_with_the_wrappers_open_files_limit_and_only_in_its_interpreter(agent, tmp_path, monkeypatch):
    """rlimit_nofile sets the soft limit as AnsiballZ's wrapper does; a module built for
    another interpreter is refused, so that the controller runs it through the shell."""
    from module_payloads import ModuleRunner

    module_path = tmp_path / 'ferrogen_limit.py'
    module_path.write_text(LIMIT_MODULE)
    runner = ModuleRunner(agent, module_path, monkeypatch, tmp_path / 'local-tmp')
    payload = runner.payload({})
    agent.send({'type': 'blob', 'hash': payload.zip_hash}, payload.zip_data)
    header, body = agent.call('run_module', dict(payload.args, rlimit_nofile=777, interpreter=sys.executable))
    assert json.loads(body[:header['result']['stdout_len']])['nofile'] == 777, body
    header, _ = agent.call('run_module', dict(payload.args, interpreter='/bogus/path'))
    assert header['error']['kind'] == 'other_interpreter', header


TREE_MODULE = """
import subprocess
from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(argument_spec={'tree': {'type': 'str'}})
subprocess.run("sh -c 'sleep %s; : grandchild' & sleep %s" % (module.params['tree'], module.params['tree']), shell=True)
module.exit_json(changed=False)
"""


def test_a_module_tasks_processes_die_with_an_agent_killed_outright(agent, tmp_path, monkeypatch):
    """Issue 20, item 4: the agent SIGKILLed (no time to clean up) takes its running tasks'
    process groups with it: the kernel's parent-death signal reaches the task process, which
    kills its group."""
    from module_payloads import ModuleRunner

    assert agent.call('exec_command', {'cmd': 'true'})[0]['ok']  # the first spare is forked armed
    time.sleep(0.5)
    tree = '37.%d' % (time.monotonic_ns() % 10**9)
    module_path = tmp_path / 'ferrogen_tree.py'
    module_path.write_text(TREE_MODULE)
    payload = ModuleRunner(agent, module_path, monkeypatch, tmp_path / 'local-tmp').payload({'tree': tree})
    agent.send({'type': 'blob', 'hash': payload.zip_hash}, payload.zip_data)
    agent.send({'type': 'call', 'id': 90, 'op': 'run_module', 'args': payload.args})

    def tree_processes():
        found = []
        for entry in os.listdir('/proc'):
            try:
                with open(f'/proc/{entry}/cmdline', 'rb') as handle:
                    if tree.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                continue
        return [pid for pid in found if pid != os.getpid()]

    wait_for(lambda: len(tree_processes()) >= 3)
    agent.proc.kill()
    agent.proc.wait()
    try:
        wait_for(lambda: not tree_processes(), timeout=3)
    finally:
        for pid in tree_processes():
            os.kill(pid, signal.SIGKILL)

"""Become children: the become tool's command line, its prompts, and the relay to the child agent."""

import fcntl
import os
import shlex
import signal
import stat
import sys
import termios
import time
import tty

from ansible_ferrogen.frames import encode_frame
from .settings import debug_settings, temp_dir_settings
from .link import write_all
from .fork_server import enter_task_directory
from .process_name import remote_name_setting


# Printed by a become child's stub once the tool has authenticated and Python runs.
GO_MARKER = b'FERROGEN-GO\n'

# What sudo says when sudoers has requiretty and it was started without a terminal.
TTY_REQUIRED = 'must have a tty'

# How long prompt text must stay quiet before it is taken as a complete prompt: su and doas
# print localised prompts, so the agent answers whatever the tool printed, once it stops.
PROMPT_SETTLE = 0.15

# Ansible's default sudo flags include -S (password on stdin, which is our protocol pipe)
# and -n (never prompt), which the agent replaces by answering on a terminal.
SUDO_STDIN_FLAGS = frozenset(('-S', '--stdin'))
SUDO_NONINTERACTIVE_FLAGS = frozenset(('-n', '--non-interactive'))


# Where a system's own Python usually is, for become accounts that cannot run ours.
PLATFORM_PYTHONS = ('/usr/bin/python3', '/usr/local/bin/python3', '/usr/libexec/platform-python')


def python_for_any_account():
    """The interpreter a become account runs when the task names none: this one, if every
    account may run it; else the platform's. A login interpreter found through the login
    account's PATH may live in its home (pyenv, a virtualenv), out of another account's reach."""
    for python in (sys.executable,) + PLATFORM_PYTHONS:
        if runnable_by_anyone(python):
            return python
    return sys.executable


def become_python(spec):
    """The Python a become account's interpreter runs: the task's, unless that is a path
    other accounts cannot run; then one they can (modules built for the task's Python then
    run through the shell, failing or not as they would under vanilla Ansible)."""
    python = spec.get('python')
    if python and (not python.startswith('/') or runnable_by_anyone(python)):
        return python
    return python_for_any_account()


def runnable_by_anyone(path):
    """Whether every directory on the way to `path`, and what it links to, lets others in."""
    try:
        for step in (path, os.path.realpath(path)):
            if not os.stat(step).st_mode & stat.S_IXOTH:
                return False
            directory = os.path.dirname(step)
            while directory not in ('/', ''):
                if not os.stat(directory).st_mode & stat.S_IXOTH:
                    return False
                directory = os.path.dirname(directory)
    except OSError:
        return False
    return True


def become_argv(spec, python, stub):
    """The command that starts an agent as another account."""
    method = spec.get('method') or 'sudo'
    exe = spec.get('exe') or method
    user = spec.get('user') or 'root'
    flags = shlex.split(spec.get('flags') or '')
    has_password = spec.get('password') is not None
    if method == 'sudo':
        flags = [f for f in flags if f not in SUDO_STDIN_FLAGS]
        if has_password:
            flags = [f for f in flags if f not in SUDO_NONINTERACTIVE_FLAGS]
        return [exe] + flags + ['-u', user, '--', python, '-c', stub]
    if method == 'su':
        return [exe] + flags + [user, '-c', '%s -c %s' % (shlex.quote(python), shlex.quote(stub))]
    if method == 'doas':
        return [exe] + flags + ['-u', user, python, '-c', stub]
    raise ValueError('become method %r is not supported (sudo, su, doas are)' % (method,))


class BecomeChild:
    """An agent running as another account, started through sudo/su/doas and relayed by us."""

    def __init__(self, interp, spec, source, timeout, use_tty=False, env_files=(), cwd=None):
        self.interp = interp
        self.spec = spec
        self.cwd = cwd
        self.timeout = timeout
        # A terminal is given only where the tool needs one: to type a password, or when
        # sudoers says requiretty (found out by a first attempt without one).
        self.use_tty = use_tty or spec.get('password') is not None
        self.account = '%s %s' % (spec.get('method') or 'sudo', spec.get('user') or 'root')
        self.password = spec.get('password')
        self.deadline = time.monotonic() + float(timeout or 10)
        self.state = 'authenticating'
        # The interpreter's own pid, from its `ready` (the tool may stand between).
        self.interpreter_pid = None
        self.stopping = False
        self.prompt_text = bytearray()
        self.prompt_seen_at = None
        self.password_sent = False
        self.inbuf = bytearray()
        # Frames for the child that its input did not take yet: written as it reads, so that a
        # stopped or wedged child never blocks this agent (the mux's heartbeat finds it out).
        self.outbox = bytearray()
        self.input_watched = False
        self.source = source
        # Frames the mux sent without waiting for `spawned`, delivered once the agent is up.
        self.held = []
        # The stub says when authentication is over, so that nothing but the password is on
        # the child's stdin while the tool might read it (PAM's su reads stdin, not /dev/tty).
        stub = ('import os,sys,zlib;os.write(1,%r);%s%s%sLOGIN_SERVICE=%r;INHERITED_ENV_FILES=%r;'
                'SOURCE=sys.stdin.buffer.read(%d);exec(zlib.decompress(SOURCE))'
                % (GO_MARKER, debug_settings(), temp_dir_settings(), remote_name_setting(), spec.get('method') or 'sudo',
                   list(env_files), len(source)))
        argv = become_argv(spec, become_python(spec), stub)
        if self.use_tty:
            # The password goes in on a terminal: stdin and stderr are a pty in raw mode, so it
            # carries the protocol unaltered once the agent runs. Echo is off, so the password
            # never comes back to us as text.
            self.tty_r, child_stdin = os.openpty()
            tty.setraw(child_stdin)
            child_stderr = child_stdin
            self.stdin_w = os.dup(self.tty_r)
        else:
            child_stdin, self.stdin_w = os.pipe()
            self.tty_r, child_stderr = os.pipe()
        self.stdout_r, child_stdout = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.setsid()
                if self.use_tty:
                    fcntl.ioctl(child_stdin, termios.TIOCSCTTY, 0)
                os.dup2(child_stdin, 0)
                os.dup2(child_stdout, 1)
                os.dup2(child_stderr, 2)
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                enter_task_directory(cwd)
                os.execvp(argv[0], argv)
            except BaseException as exc:
                os.write(2, ('cannot run %s: %s\n' % (argv[0], exc)).encode())
            os._exit(127)
        for fd in {child_stdin, child_stdout, child_stderr}:
            os.close(fd)
        for fd in (self.stdout_r, self.tty_r, self.stdin_w):
            os.set_blocking(fd, False)

    @property
    def starting(self):
        """Not up yet: the tool is authenticating, or the agent is booting."""
        return self.state in ('authenticating', 'booting')

    def take_go_marker(self):
        """True once the stub has announced itself; the source is then sent."""
        if not self.inbuf.startswith(GO_MARKER):
            return False
        del self.inbuf[:len(GO_MARKER)]
        self.state = 'booting'
        write_all(self.stdin_w, self.source)
        return True

    def read_tty(self):
        """Collect what the tool printed on its terminal or stderr; False at end of stream."""
        try:
            chunk = os.read(self.tty_r, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not chunk:
            return False
        # Kept until the agent is up: what the tool said, or why the agent died while booting.
        if self.starting:
            self.prompt_text += chunk
            self.prompt_seen_at = time.monotonic()
        return chunk

    def prompt_action(self, now):
        """What to do about the text seen so far: None, 'answer', or an error message.

        A prompt is text that has settled without a final newline: the tool is waiting on
        that line. Lines that end (a lecture, 'Last login') are not prompts. A second
        prompt after the password means it was refused."""
        if now > self.deadline:
            return 'timed out after becoming %s: %s' % (self.account, self.prompt_excerpt() or 'no output')
        if self.state != 'authenticating':
            return None
        text = self.prompt_excerpt()
        if (not text or self.prompt_seen_at is None or now - self.prompt_seen_at < PROMPT_SETTLE
                or self.prompt_text.rstrip(b' \t').endswith(b'\n')):
            return None
        if self.password is None:
            return 'a password is required to become %s, and none was given: %s' % (self.account, text)
        if self.password_sent:
            return 'the password for %s was refused: %s' % (self.account, text)
        return 'answer'

    def answer_prompt(self):
        write_all(self.tty_r, self.password.encode('utf-8') + b'\n')
        self.password_sent = True
        del self.prompt_text[:]
        self.prompt_seen_at = None

    def prompt_excerpt(self):
        text = bytes(self.prompt_text).decode('utf-8', 'replace').replace('\xa0', ' ')
        if self.password:
            text = text.replace(self.password, '********')
        return text.strip()[-500:]

    def send(self, header, body=b''):
        """Queue a frame and write what the child's input takes now; True while some waits."""
        if self.stdin_w is None:
            raise BrokenPipeError('its input is closed')
        self.outbox += encode_frame(header, body)
        return self.flush()

    def flush(self):
        """Write what the child's input takes without waiting; True while some is left."""
        while self.outbox and self.stdin_w is not None:
            try:
                written = os.write(self.stdin_w, self.outbox)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            del self.outbox[:written]
        return bool(self.outbox)

    def stop(self):
        self.stopping = True
        try:
            return self.send({'type': 'shutdown'})
        except OSError:
            return False

    def kill(self):
        """End it without waiting on it (it answered no heartbeat): the tool's process group,
        the interpreter itself where this account may signal it, and its input."""
        self.stopping = True
        for kill, pid in ((os.killpg, self.pid), (os.kill, self.interpreter_pid)):
            try:
                if pid:
                    kill(pid, signal.SIGKILL)
            except OSError:
                pass
        del self.outbox[:]
        self.close_input()

    def close_input(self):
        if self.stdin_w is not None:
            os.close(self.stdin_w)
            self.stdin_w = None

    def close_fds(self):
        self.close_input()
        for fd in (self.stdout_r, self.tty_r):
            try:
                os.close(fd)
            except OSError:
                pass

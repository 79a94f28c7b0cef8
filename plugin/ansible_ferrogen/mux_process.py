"""Finding, starting and watching ferrogen-mux for one ansible-playbook run."""

from __future__ import annotations

import importlib.metadata
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time

from ansible.errors import AnsibleError
from ansible.utils.display import Display

from ansible_ferrogen import frames
from ansible_ferrogen.client import SOCKET_ENV

display = Display()

BINARY_ENV = 'FERROGEN_MUX'
# The mux's stderr log filter (tracing EnvFilter syntax); set from Ansible's verbosity if unset.
LOG_ENV = 'FERROGEN_LOG'
# At -vvv and up: connection set-up (what the mux ran, every line ssh wrote, the agent's ready
# frame), forwarded target-side log records and periodic stack dumps.
VERBOSE_LOG_FILTER = 'ferrogen_mux=debug,ferrogen=debug,worker_ipc=debug,warn'
BINARY_NAME = 'ferrogen-mux'
# The distribution (wheel) that installs this package and the binary together.
DISTRIBUTION = 'ferrogen'
READY_TIMEOUT = 30.0
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CHECKOUT_BINARY = os.path.join(os.path.dirname(os.path.dirname(PACKAGE_DIR)), 'target', 'release', BINARY_NAME)


class MuxProcess:
    """The mux this process started. Its stdin is a pipe only we hold the write end of, so the
    mux sees end-of-file and exits however ansible-playbook ends, SIGKILL included."""

    current: MuxProcess | None = None

    def __init__(self, binary: str, env: dict[str, str] | None = None):
        self.binary = binary
        self.socket_dir = tempfile.mkdtemp(prefix='ferrogen-')
        self.socket_path = os.path.join(self.socket_dir, 'mux.sock')
        read_end, self._lifeline = os.pipe()
        try:
            # stderr=2 explicitly: Ansible marks its stdio close-on-exec, and a child left to
            # inherit fd 2 would start with it closed, losing every warning and stack dump.
            self.proc = subprocess.Popen([binary, 'serve', '--socket', self.socket_path],
                                         stdin=read_end, stdout=subprocess.PIPE, stderr=_stderr(), close_fds=True,
                                         env=env)
        except OSError as exc:
            os.close(self._lifeline)
            raise AnsibleError(f'cannot start ferrogen-mux at {binary}: {exc}') from exc
        finally:
            os.close(read_end)
        self._wait_ready()

    def _wait_ready(self) -> None:
        try:
            pid = wait_ready(self.proc.stdout.fileno(), self.binary, lambda: exit_in_words(self.proc.wait()))
        except NotReady:
            self.proc.kill()
            raise
        display.vvv(f'ferrogen: mux {self.binary} pid {pid} ready on {self.socket_path}')

    @classmethod
    def ensure(cls) -> None:
        """Start the run's mux once, in the process that will fork the workers. If it died,
        the mux a worker started in its place serves the rest of the run (run_mux.py)."""
        if cls.current is not None and cls.current.proc.poll() is None:
            return
        if cls.current is not None:
            from ansible_ferrogen import run_mux, run_socket

            replacement = run_socket.socket_path()
            if run_mux.answers(replacement):
                os.environ[SOCKET_ENV] = replacement
                return
        check_settings(os.environ)
        binary = find_binary()
        check_version(binary)
        cls.current = cls(binary, mux_environment(os.environ, display.verbosity))
        os.environ[SOCKET_ENV] = cls.current.socket_path


class NotReady(AnsibleError):
    """The mux printed nothing within READY_TIMEOUT."""


def wait_ready(fd: int, binary: str, how_it_ended) -> int:
    """Read the mux's `READY <pid>` line from fd and return the pid; how_it_ended() says in
    words how a mux that closed fd first ended."""
    deadline = time.monotonic() + READY_TIMEOUT
    line = b''
    while not line.endswith(b'\n'):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not ready:
            raise NotReady(f'ferrogen-mux at {binary} did not become ready within {READY_TIMEOUT:.0f}s')
        chunk = os.read(fd, 256)
        if not chunk:
            raise AnsibleError(f'ferrogen-mux at {binary} {how_it_ended() or "exited"} before it was ready '
                               '(its error is printed above)')
        line += chunk
    words = line.split()
    if words[:1] != [b'READY'] or len(words) < 2 or not words[1].isdigit():
        raise AnsibleError(f'ferrogen-mux at {binary} printed {line!r} instead of READY')
    return int(words[1])


def exit_in_words(returncode: int) -> str:
    """A returncode as subprocess gives it (minus the signal number for a signal) in words."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = 'unknown signal'
        return f'was killed by signal {-returncode} ({name})'
    return f'exited with status {returncode}'


def check_version(binary: str) -> None:
    """Refuse a mux that speaks another worker protocol than this plugin, saying which."""
    try:
        out = subprocess.run([binary, '--version'], capture_output=True, text=True, timeout=READY_TIMEOUT,
                             stdin=subprocess.DEVNULL, check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise AnsibleError(f'cannot run {binary} --version: {exc}') from exc
    found = re.search(r'\(protocol (\d+)\)', out)
    if found is None or int(found.group(1)) != frames.PROTOCOL_VERSION:
        speaks = f'protocol {found.group(1)}' if found else f'no protocol version ({out.strip()!r})'
        raise AnsibleError(f'{binary} speaks {speaks}, but the ferrogen plugin at {PACKAGE_DIR} speaks protocol '
                           f'{frames.PROTOCOL_VERSION}: install the mux and the plugin from the same ferrogen '
                           f'release, or point {BINARY_ENV} at a matching ferrogen-mux')


def _stderr() -> int:
    """Our fd 2 for the mux, or /dev/null if we were started without one."""
    try:
        os.fstat(2)
    except OSError:
        return subprocess.DEVNULL
    return 2


# As the mux parses them (Rust's integer and float syntax: no "_" separators).
def _positive_integer(value: str) -> bool:
    value = value.strip()
    digits = value.removeprefix('+')
    return digits.isascii() and digits.isdigit() and int(digits) > 0


def _positive_seconds(value: str) -> bool:
    try:
        return '_' not in value and 0 < float(value.strip()) < 1e9
    except ValueError:
        return False


# Settings the mux reads at start, with how a valid value looks. The mux checks them too; checking
# here first makes a bad value an Ansible error naming the variable, before anything runs.
SETTINGS = (
    ('MITOGEN_POOL_SIZE', _positive_integer, 'a positive integer'),
    ('MITOGEN_MAX_INTERPRETERS', _positive_integer, 'a positive integer'),
    ('MITOGEN_DUMP_THREAD_STACKS', _positive_seconds, 'a positive number of seconds'),
)


def check_settings(environ) -> None:
    """Refuse to start the run with a setting the mux cannot use."""
    for name, valid, expected in SETTINGS:
        value = environ.get(name)
        if value is not None and not valid(value):
            raise AnsibleError(f'invalid {name}={value!r}: expected {expected}')


def mux_environment(environ, verbosity: int) -> dict[str, str]:
    """The mux's environment: ours, with its log filter raised to debug at -vvv unless the user
    chose one."""
    env = dict(environ)
    if verbosity >= 3 and not env.get(LOG_ENV):
        env[LOG_ENV] = VERBOSE_LOG_FILTER
    return env


def installed_binary() -> str | None:
    """The ferrogen-mux that the distribution installing this very package installed (wherever
    pip put its scripts: a virtualenv's bin/, ~/.local/bin, ...), if it is one."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    own = os.path.join(PACKAGE_DIR, '__init__.py')
    files = dist.files or []
    if not any(os.path.abspath(dist.locate_file(entry)) == own for entry in files if entry.name == '__init__.py'):
        return None  # another copy of the package (a checkout) than the installed one
    for entry in files:
        if entry.name == BINARY_NAME:
            return os.path.abspath(dist.locate_file(entry))
    return None


def find_binary() -> str:
    """FERROGEN_MUX, else the one installed with this package, else next to the package, else
    PATH, else this checkout's release build."""
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        if not os.path.isfile(explicit):
            raise AnsibleError(f'{BINARY_ENV}={explicit}: no such file')
        if not os.access(explicit, os.X_OK):
            raise AnsibleError(f'{BINARY_ENV}={explicit}: not executable')
        return explicit
    tried = []
    for candidate in (installed_binary(), os.path.join(PACKAGE_DIR, 'bin', BINARY_NAME), shutil.which(BINARY_NAME),
                      CHECKOUT_BINARY):
        if candidate:
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
            tried.append(candidate)
    tried.insert(len(tried) - 1, f'{BINARY_NAME} on PATH')
    raise AnsibleError(f'ferrogen-mux not found; tried {", ".join(tried)}. Build it with '
                       f'"cargo build --release" or set {BINARY_ENV}.')

"""Finding, starting and watching ferrogen-mux for one ansible-playbook run."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time

from ansible.errors import AnsibleError
from ansible.utils.display import Display

from ansible_ferrogen.client import SOCKET_ENV

display = Display()

BINARY_ENV = 'FERROGEN_MUX'
# The mux's stderr log filter (tracing EnvFilter syntax); set from Ansible's verbosity if unset.
LOG_ENV = 'FERROGEN_LOG'
# At -vvv and up: connection set-up (what the mux ran, every line ssh wrote, the agent's ready
# frame), forwarded target-side log records and periodic stack dumps.
VERBOSE_LOG_FILTER = 'ferrogen_mux=debug,ferrogen=debug,worker_ipc=debug,warn'
BINARY_NAME = 'ferrogen-mux'
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
        deadline = time.monotonic() + READY_TIMEOUT
        line = b''
        while not line.endswith(b'\n'):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(remaining, 0))
            if not ready:
                self.proc.kill()
                raise AnsibleError(f'ferrogen-mux at {self.binary} did not become ready within {READY_TIMEOUT:.0f}s')
            chunk = os.read(self.proc.stdout.fileno(), 256)
            if not chunk:
                rc = self.proc.wait()
                raise AnsibleError(f'ferrogen-mux at {self.binary} exited with status {rc} before it was ready '
                                   '(its error is printed above)')
            line += chunk
        if not line.startswith(b'READY'):
            raise AnsibleError(f'ferrogen-mux at {self.binary} printed {line!r} instead of READY')
        display.vvv(f'ferrogen: mux pid {self.proc.pid} ready on {self.socket_path}')

    @classmethod
    def ensure(cls) -> MuxProcess:
        """Start the run's mux once, in the process that will fork the workers."""
        if cls.current is None or cls.current.proc.poll() is not None:
            check_settings(os.environ)
            cls.current = cls(find_binary(), mux_environment(os.environ, display.verbosity))
            os.environ[SOCKET_ENV] = cls.current.socket_path
        return cls.current


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


def find_binary() -> str:
    """FERROGEN_MUX, else next to the package, else PATH, else this checkout's release build."""
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        if not os.path.isfile(explicit):
            raise AnsibleError(f'{BINARY_ENV}={explicit}: no such file')
        if not os.access(explicit, os.X_OK):
            raise AnsibleError(f'{BINARY_ENV}={explicit}: not executable')
        return explicit
    tried = []
    for candidate in (os.path.join(PACKAGE_DIR, 'bin', BINARY_NAME), shutil.which(BINARY_NAME), CHECKOUT_BINARY):
        if candidate:
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
            tried.append(candidate)
    tried.insert(1, f'{BINARY_NAME} on PATH')
    raise AnsibleError(f'ferrogen-mux not found; tried {", ".join(tried)}. Build it with '
                       f'"cargo build --release" or set {BINARY_ENV}.')

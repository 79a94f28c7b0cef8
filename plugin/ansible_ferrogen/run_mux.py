"""The run's mux when no strategy started it, or when the one the strategy started has died.

The first worker of an ansible-playbook run that needs a mux starts it, and every other worker
of the same run finds it, through a private directory named after the run's top-level process:

    <tmp>/ferrogen-run-<uid>-<pid>-<start time>/
        lock        flock'd by a worker while it looks for the mux and, if none answers, starts it
        mux.sock    the mux's socket
        exit-<pid>  how the mux of that pid ended, while the run goes on (see below)

The mux is started detached from the worker (double fork, new session), so that it outlives the
worker and no signal sent to the worker's process group reaches it. `serve --watch-pid` makes it
exit as soon as the top-level process does, however that ends. Between the two forks sits a
small shell that waits for the mux and, if the run is still going, writes its exit status to
`exit-<pid>` (workers name it in the error of the calls it took down); once the run is over, it
removes the directory. A run whose last mux died before it ended leaves its directory behind;
the next start of a mux, of any run of the same user, removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import stat
import tempfile
import time

from ansible.errors import AnsibleError
from ansible.utils.display import Display

from ansible_ferrogen.client import SOCKET_ENV
from ansible_ferrogen.run_socket import RUN_DIR_PREFIX, SOCKET_NAME, run_dir, run_pid, start_time

display = Display()

LOCK_NAME = 'lock'
EXIT_PREFIX = 'exit-'
# How long a worker that lost the mux waits to learn how it ended.
EXIT_WAIT = 1.0
# The shell between the two forks hands the binary over in the environment and removes it
# there, so that neither the shell's command line nor the mux's children see it.
BINARY_HANDOVER_ENV = 'FERROGEN_SUPERVISED_BINARY'
SUPERVISOR = """
binary=$FERROGEN_SUPERVISED_BINARY
unset FERROGEN_SUPERVISED_BINARY
"$binary" serve --socket "$1" --watch-pid "$2" &
mux=$!
wait "$mux"
status=$?
# Whether the run goes on: its process is there and no zombie (kill -0 would accept a zombie).
running() {
    { read -r stat <"/proc/$2/stat"; } 2>/dev/null || return 1
    case "${stat##*) }" in Z*) return 1 ;; esac
}
if running "$@"; then
    echo "$status" >"$3/exit-$mux.tmp" && mv -f "$3/exit-$mux.tmp" "$3/exit-$mux"
else
    rm -rf "$3"
fi
"""
# The shell's name in ps: it must not read as a mux.
SUPERVISOR_NAME = 'ferrogen-watch'


def sweep_ended_runs() -> None:
    """Remove this user's run directories whose ansible-playbook process is gone (its pid is
    free or now another process's: the start time tells)."""
    root = tempfile.gettempdir()
    prefix = f'{RUN_DIR_PREFIX}{os.getuid()}-'
    with contextlib.suppress(OSError):
        for name in os.listdir(root):
            pid, _, started = name[len(prefix):].partition('-')
            if not name.startswith(prefix) or not pid.isdigit() or not started.isdigit():
                continue
            if start_time(int(pid)) == started:
                continue  # that run goes on
            path = os.path.join(root, name)
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
                shutil.rmtree(path, ignore_errors=True)


def _private_dir(path: str) -> None:
    """Create path 0700, or accept it only as a directory (not a link) that is ours and private."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise AnsibleError(f'refusing to use {path} for ferrogen-mux: it must be a directory owned by uid '
                           f'{os.getuid()} with mode 0700, not a link')


def answers(path: str) -> bool:
    """Whether a mux listens on path."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def find_or_start() -> str:
    """The socket of this run's mux, started now unless another worker got there first."""
    directory = run_dir()
    _private_dir(directory)
    path = os.path.join(directory, SOCKET_NAME)
    lock_fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if not answers(path):
            _start(path, directory)
    finally:
        os.close(lock_fd)
    return path


def _run_stderr(pid: int) -> int:
    """ansible-playbook's stderr, reopened (workers have /dev/null as theirs), so the mux's
    warnings reach the user as under the strategy; else /dev/null."""
    with contextlib.suppress(OSError):
        return os.open(f'/proc/{pid}/fd/2', os.O_WRONLY | os.O_APPEND | os.O_NOCTTY | os.O_CLOEXEC)
    return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


def _start(path: str, directory: str) -> None:
    # Only the worker that starts the mux, or learns how it ended, imports mux_process.
    from ansible_ferrogen import mux_process

    sweep_ended_runs()
    binary = mux_process.find_binary()
    mux_process.check_version(binary)
    mux_process.check_settings(os.environ)
    env = mux_process.mux_environment(os.environ, display.verbosity)
    env[BINARY_HANDOVER_ENV] = binary
    env.pop(SOCKET_ENV, None)  # the dead strategy mux's, where this one replaces it
    pid = run_pid()
    argv = ['/bin/sh', '-c', SUPERVISOR, SUPERVISOR_NAME, path, str(pid), directory]
    earlier_exits = set(_exit_files(directory))
    read_end, write_end = os.pipe()
    stderr = _run_stderr(pid)
    try:
        _spawn_detached(argv, env, write_end, stderr)
    finally:
        os.close(write_end)
        os.close(stderr)
    try:
        mux_pid = mux_process.wait_ready(read_end, binary, lambda: how_it_ended(None, directory, earlier_exits))
    finally:
        os.close(read_end)
    display.vvv(f'ferrogen: started mux {binary} pid {mux_pid} on {path} for ansible-playbook pid {pid}')


def _spawn_detached(argv: list[str], env: dict[str, str], stdout: int, stderr: int) -> None:
    """Run argv as the grandchild of a child that exits at once, in a session of its own."""
    child = os.fork()
    if child == 0:
        status = 0
        try:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.dup2(stdout, 1)
                os.dup2(stderr, 2)
                os.closerange(3, os.sysconf('SC_OPEN_MAX'))
                os.execve(argv[0], argv, env)
        except BaseException:  # noqa: B036 - nothing may return into the worker's code from here
            status = 127
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    if status != 0:
        raise AnsibleError(f'cannot start ferrogen-mux: the detached start failed ({describe(status)})')


def describe(wait_status: int) -> str:
    """A wait(2) status in words."""
    from ansible_ferrogen import mux_process

    return mux_process.exit_in_words(os.waitstatus_to_exitcode(wait_status))


def _shell_status(text: str) -> str | None:
    """The supervisor shell's $? in words: above 128 means killed by signal $? - 128."""
    try:
        status = int(text)
    except ValueError:
        return None
    from ansible_ferrogen import mux_process

    return mux_process.exit_in_words(128 - status if status > 128 else status)


def _zombie_status(pid: int) -> int | None:
    """The wait status of a mux that has exited but is not reaped yet (a strategy's child)."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as handle:
            fields = handle.read().rsplit(b')', 1)[1].split()
    except OSError:
        return None
    # fields[0] is field 3 (state); field 52 is the exit code, in waitpid(2)'s form.
    if fields[0] != b'Z' or len(fields) < 50:
        return None
    return int(fields[49])


def how_it_ended(mux_pid: int | None, directory: str | None, earlier: frozenset[str] | set[str] = frozenset()
                 ) -> str | None:
    """How a mux that went away ended: from the zombie of a strategy's mux, or from the exit
    file the shell wrote for one started here (mux_pid None: the one exit file not in earlier);
    None if that cannot be told within EXIT_WAIT."""
    deadline = time.monotonic() + EXIT_WAIT
    while True:
        if mux_pid is not None:
            status = _zombie_status(mux_pid)
            if status is not None:
                return describe(status)
        if directory is not None:
            names = [f'{EXIT_PREFIX}{mux_pid}'] if mux_pid is not None else set(_exit_files(directory)) - earlier
            for name in names:
                with contextlib.suppress(OSError):
                    with open(os.path.join(directory, name), encoding='ascii') as handle:
                        found = _shell_status(handle.read().strip())
                    if found:
                        return found
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _exit_files(directory: str) -> list[str]:
    with contextlib.suppress(OSError):
        return [name for name in os.listdir(directory) if name.startswith(EXIT_PREFIX)
                and name[len(EXIT_PREFIX):].isdigit()]
    return []

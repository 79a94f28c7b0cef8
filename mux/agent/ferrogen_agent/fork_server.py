"""Tasks: the forked child that runs each one, and what the child does before the module."""

import gc
import json
import os
import signal
import sys

from ansible_ferrogen.frames import FRAME_PREFIX, MAX_BODY, encode_frame
from .link import write_all
from .transfers import STREAMED_OUTPUT_MIN, OutputSpool, answer_digests_from
from .continuations import OutputTooLarge
from .importer import put_zip_first


class Task:
    """A forked child running one call, and the files that will hold its output.

    `then` is the call's continuation (see Agent.op_run_module), still to choose once this
    task has finished; `before` is the result and output of the task this one continues, and
    which branch of its continuation this is.
    """

    def __init__(self, call_id, process, emulate_tty, then=(), before=None):
        self.call_id = call_id
        self.pid = process.pid
        self.stdout_file = process.stdout_file
        self.stderr_file = None if emulate_tty else process.stderr_file
        self.done_fd = process.done_fd
        self.emulate_tty = emulate_tty
        self.then = then
        self.before = before

    @staticmethod
    def exit_status(status):
        return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)

    def collect(self, rc):
        """(rc, stdout, stderr) once the task has written all its output; OutputTooLarge,
        before any of it is read into memory, if a reply could not carry it. An output over
        STREAMED_OUTPUT_MIN is not read: (rc, None, None), and spool() sends it."""
        files = [f for f in (self.stdout_file, self.stderr_file) if f is not None]
        size = sum(os.fstat(f.fileno()).st_size for f in files)
        if size > MAX_BODY:
            for handle in files:
                handle.close()
            raise OutputTooLarge(size)
        if size > STREAMED_OUTPUT_MIN:
            return rc, None, None
        stdout = self._read(self.stdout_file)
        stderr = self._read(self.stderr_file) if self.stderr_file is not None else b''
        if self.emulate_tty:
            # What a pty's onlcr would have done to the merged output over ssh -tt.
            stdout = stdout.replace(b'\n', b'\r\n')
            if len(stdout) > MAX_BODY:
                raise OutputTooLarge(len(stdout))
        return rc, stdout, stderr

    def spool(self, prefix):
        """The output collect() left unread, behind prefix, as an OutputSpool."""
        files = [f for f in (self.stdout_file, self.stderr_file) if f is not None]
        return OutputSpool(prefix, files, self.emulate_tty)

    @staticmethod
    def _read(handle):
        handle.seek(0)
        data = handle.read()
        handle.close()
        return data


class TaskProcess:
    """A forked task process, blocked on a pipe until the parent sends it its task.

    It shares the parent's state as of its fork, counted by the parent's generation. A spare
    (forked ahead of time) from an older generation, before a module zip arrived or a module was
    compiled, is discarded rather than used.
    """

    def __init__(self, pid, command_fd, done_fd, stdout_file, stderr_file, generation):
        self.pid = pid
        self.command_fd = command_fd
        # The process writes its exit code here once its output is complete, before it exits
        # (a module task only: a command's shell replaces the process, and this closes).
        self.done_fd = done_fd
        self.stdout_file = stdout_file
        self.stderr_file = stderr_file
        self.generation = generation

    def hand_over(self, op, args, stdin, emulate_tty, digests):
        """Send the task, with the ReceivedDigests entries a module may ask for; False (and
        the process discarded) if it is gone."""
        header = {'op': op, 'args': args, 'emulate_tty': emulate_tty, 'digests': digests}
        try:
            write_all(self.command_fd, encode_frame(header, stdin))
        except OSError:
            self.discard()
            return False
        os.close(self.command_fd)
        if emulate_tty:
            # Its stderr goes to its stdout, as over a terminal.
            self.stderr_file.close()
        return True

    def discard(self):
        """End the process: at end of its pipe it exits without running anything."""
        os.close(self.command_fd)
        os.close(self.done_fd)
        self.stdout_file.close()
        self.stderr_file.close()


# prctl(2)'s PR_SET_PDEATHSIG (Linux).
PR_SET_PDEATHSIG = 1


def parent_death_signaller():
    """prctl from the C library, looked up once in the agent so that each task process, forked
    from it, finds it ready; None where there is none (not Linux, no ctypes)."""
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    return prctl


def lead_own_process_group(prctl, agent_pid):
    """Make this task process the leader of a process group of its own: what the task starts,
    grandchildren included, is killed with that group when the task is cancelled or the agent's
    link closes (kill_task_group). Where prctl exists, the kernel sends the process SIGTERM when
    the agent dies outright (SIGKILL, which leaves it no time to clean up), and the process
    then kills its group, itself included; a command's shell, which replaces the process, just
    dies of that SIGTERM."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    if prctl is not None:
        signal.signal(signal.SIGTERM, kill_own_group)
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != agent_pid:
            kill_own_group()  # the agent died before the signal was armed


def kill_own_group(*_):
    os.killpg(0, signal.SIGKILL)


def kill_task_group(pid):
    """SIGKILL to task process pid and everything in its process group."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def receive_task(command_fd):
    """Block until the parent sends the task frame; None if it closed the pipe instead."""
    prefix = read_exactly(command_fd, FRAME_PREFIX.size)
    if prefix is None:
        return None
    header_len, body_len = FRAME_PREFIX.unpack(prefix)
    header = json.loads(read_exactly(command_fd, header_len).decode('utf-8'))
    stdin = read_exactly(command_fd, body_len) if body_len else b''
    return header['op'], header['args'], stdin, header['emulate_tty'], header['digests']


def read_exactly(fd, size):
    data = b''
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def close_descriptors_except(keep):
    """Close every descriptor above 2 that is not in keep."""
    try:
        fds = [int(name) for name in os.listdir('/proc/self/fd')]
    except OSError:
        fds = range(3, 1024)
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def freeze_garbage_collector():
    """Objects that exist now are never freed; keeping the collector off them spares every
    forked child copying their pages."""
    if hasattr(gc, 'freeze'):
        gc.freeze()


def exit_code(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xff
    sys.stderr.write('%s\n' % (code,))
    return 1


def flush_std_streams():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def names_of_this_interpreter():
    """The paths a command may name this interpreter by: its executable, and the name it was
    started as (`python3`, as the bootstrap ran it)."""
    names = {sys.executable}
    try:
        with open('/proc/self/cmdline', 'rb') as handle:
            names.add(handle.read().split(b'\0', 1)[0].decode('utf-8', 'surrogateescape'))
    except OSError:
        pass
    return names


def enter_task_directory(cwd):
    """Start the task in the directory the controller names (the local connection's playbook
    directory), as vanilla's local plugin starts its shell there. An account that may not
    enter it (a become account, the playbook in a 0700 directory) stays where its interpreter
    was started, as that account's process under vanilla stays where the tool left it."""
    if not cwd:
        return
    try:
        os.chdir(cwd)
    except OSError:
        pass


def leave_unreachable_directory():
    """AnsiballZ's wrapper: a module whose working directory cannot even be named goes to
    the account's home, else to /."""
    try:
        os.getcwd()
    except OSError:
        try:
            os.chdir(os.path.expanduser('~'))
        except OSError:
            os.chdir('/')


def apply_rlimit_nofile(limit):
    """AnsiballZ's wrapper: ansible_python_module_rlimit_nofile raises (or lowers) the soft
    limit on open files, within the hard limit, before the module runs."""
    if not limit:
        return
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, limit)
    if wanted != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except ValueError:
            pass


def run_module_in_child(zip_path, args, compiled, digests):
    """Run an AnsiballZ-packaged module the way its own wrapper would, minus the unzip. The
    parent's warm-up imported the zip's module_utils; the packages the module imports here
    must come from its own zip before any other."""
    put_zip_first(zip_path)
    answer_digests_from(digests)
    sys.argv = [zip_path]
    import atexit
    import runpy
    from ansible.module_utils._internal._ansiballz import _loader
    if compiled is not None:
        # runpy would find and compile the module again; hand it the parent's compiled code.
        spec, code = compiled
        find_details = runpy._get_module_details

        def cached_details(mod_name, error=ImportError):
            if mod_name == args['module_fqn']:
                return mod_name, spec, code
            return find_details(mod_name, error)

        runpy._get_module_details = cached_details
    try:
        _loader.run_module(
            json_params=args['params'].encode('utf-8'),
            profile=args['profile'],
            module_fqn=args['module_fqn'],
            modlib_path=zip_path,
            extensions=args.get('extensions') or {},
        )
    finally:
        # os._exit() skips atexit, and modules clean their temp dirs with it.
        atexit._run_exitfuncs()

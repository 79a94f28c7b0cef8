"""The interpreter's private temp dir, and the sweep of those dead agents left."""

import os
import re
import shutil
import stat
import tempfile

from ansible_ferrogen.atomic_files import lock_exclusively, lock_if_free, pid_alive
from .settings import configured_temp_dirs


def scratch_file(directory):
    """An anonymous file for a task's stdin, stdout or stderr: in memory where Linux offers
    memfd (a task's output is held in memory for the reply anyway), else an unlinked file in
    the interpreter's private temp dir."""
    if hasattr(os, 'memfd_create'):
        try:
            return os.fdopen(os.memfd_create('ferrogen-task'), 'w+b')
        except OSError:
            pass
    return tempfile.TemporaryFile(dir=directory)


def choose_temp_dir():
    """Create this interpreter's private temp dir in the first writable location on a
    filesystem that allows exec, in the order of the spec (Temporary Files): remote_tmp,
    system_tmpdirs, TMPDIR, TEMP, TMP, /tmp, /var/tmp, /usr/tmp, the working directory;
    return (path, fd of its owner lock)."""
    candidates = [os.path.expandvars(os.path.expanduser(c)) for c in configured_temp_dirs()]
    for name in ('TMPDIR', 'TEMP', 'TMP'):
        if os.environ.get(name):
            candidates.append(os.environ[name])
    candidates += ['/tmp', '/var/tmp', '/usr/tmp']
    try:
        candidates.append(os.getcwd())
    except OSError:
        pass
    for base in candidates:
        try:
            os.makedirs(base, mode=0o700, exist_ok=True)
            if os.statvfs(base).f_flag & getattr(os, 'ST_NOEXEC', 8):
                continue
            sweep_dead_agents_temp_dirs(base)
            return make_owned_temp_dir(base)
        except OSError:
            continue
    raise OSError('no writable, executable temp directory among %s' % ', '.join(candidates))


# Liveness of whoever writes a temp dir or temp file, for the sweeps below. A pid says nothing
# across PID namespaces (containers), hosts sharing a home, or a reboot; a lock does: the
# writer holds an exclusive flock for as long as it lives, the kernel (or the NFS lock
# manager) drops it when the writer dies, and a sweeper that can take the lock without
# waiting knows nobody holds it.
OWNER_LOCK = '.ferrogen-owner'

# An agent temp dir's name: ferrogen-<pid>-<random>. It is made under a name of its own
# (a dot first, which the pattern does not match) and renamed once its lock is held, so a
# sweeper never sees a live agent's dir without its lock.
AGENT_TEMP_DIR = re.compile(r'ferrogen-(\d+)-[^/]+$')


def claim_temp_dir(path):
    """Create path's owner lock and hold it; the fd, or None if the dir went meanwhile."""
    lock_path = os.path.join(path, OWNER_LOCK)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        return None
    if lock_exclusively(fd, lock_path):
        return fd
    os.close(fd)
    return None


def make_owned_temp_dir(base):
    """A new private dir in base, named ferrogen-<pid>-*, with its owner lock held."""
    while True:
        staging = tempfile.mkdtemp(prefix='.ferrogen-%d-' % os.getpid(), dir=base)
        lock_fd = claim_temp_dir(staging)
        if lock_fd is None:
            continue
        path = os.path.join(base, os.path.basename(staging)[1:])
        try:
            os.rename(staging, path)
        except OSError:
            os.close(lock_fd)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return path, lock_fd


def sweep_dead_agents_temp_dirs(base):
    """Remove temp dirs that agents killed without a chance to clean up left in base: ours
    (same uid), named ferrogen-<pid>-*, whose owner lock nobody holds. A dir without the lock
    (made by an agent older than the lock) falls back on its pid."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        match = AGENT_TEMP_DIR.match(name)
        path = os.path.join(base, name)
        try:
            info = os.lstat(path)
            if match is None or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                continue
            lock_path = os.path.join(path, OWNER_LOCK)
            if os.path.lexists(lock_path):
                lock_fd = lock_if_free(lock_path)
                if lock_fd is not None:
                    shutil.rmtree(path, ignore_errors=True)
                    os.close(lock_fd)
            elif int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue

"""Files received whole or not at all, and the sweep of those whose writer died: for the worker
(fetch) and the agent (put).

The agent runs this module too (mux/agent/parts.txt puts it into the agent's bootstrap blob):
it keeps to the standard library and to the agent's oldest Python (3.6), and imports nothing
of the plugin.
"""

import fcntl
import grp
import hashlib
import os
import pwd
import re
import stat

# Receiving temp files: hidden, in the destination directory, named after the process that
# writes them, for people; its lock tells a live writer's file from one left by a process that
# died (kill -9).
TEMP_NAME = re.compile(r'^\.ferrogen-(\d+)-[0-9a-f]+\.tmp$')

# A received file is written WRITE_PIECE bytes per write(2) at most: on Linux 6.18 (ext4) a
# megabyte per write took the kernel about twice as long to copy into the page cache as the
# same bytes in quarter-megabyte writes, half a second more CPU per 400 MB
# (docs/benchmarks.md, "Where the last 0.8 s of a 400 MB copy went").
WRITE_PIECE = 1 << 18

# Directories already swept by this process (sweep_for): once each is enough, since later
# leftovers can only come from processes that die after this one looked.
SWEPT_DIRS = set()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: alive, another account's
    return True


# Liveness of whoever writes a temp dir or temp file, for the sweeps. A pid says nothing across
# PID namespaces (containers), hosts sharing a home, or a reboot; a lock does: the writer holds
# an exclusive flock for as long as it lives, the kernel (or the NFS lock manager) drops it when
# the writer dies, and a sweeper that can take the lock without waiting knows nobody holds it.
def lock_exclusively(fd, path):
    """Take fd's lock, waiting for a sweeper that holds it a moment; False if path no longer
    names fd's file (that sweeper removed it), the caller then starts again."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        return os.fstat(fd).st_nlink > 0 and os.lstat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def lock_if_free(path):
    """An fd on path holding its lock, if path is a regular file of ours whose lock nobody
    holds (its writer is gone); else None. The caller removes what the lock guarded, then
    closes the fd."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.lstat(path).st_ino == info.st_ino:
                return fd
    except OSError:
        pass  # EWOULDBLOCK: its writer lives
    os.close(fd)
    return None


def sweep_dead_temps(directory):
    """Remove our account's temp files whose writer is gone (a transfer killed mid-way): its
    lock is free. Files of live writers, other accounts and anything else are left alone."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if TEMP_NAME.match(entry.name) is None:
            continue
        lock_fd = lock_if_free(entry.path)
        if lock_fd is not None:
            try:
                os.unlink(entry.path)
            except OSError:
                pass
            os.close(lock_fd)


def sweep_once(directory):
    """sweep_dead_temps, the first time this process looks at directory."""
    directory = os.path.abspath(directory)
    if directory in SWEPT_DIRS:
        return
    SWEPT_DIRS.add(directory)
    sweep_dead_temps(directory)


def sweep_for(path):
    """Sweep path's directory once; for a file in one of Ansible's per-task remote temp dirs
    (ansible-tmp-*), sweep its siblings too: a task killed mid-transfer leaves its temp file
    there, and the next task never writes to that directory again."""
    directory = os.path.dirname(os.path.abspath(path))
    sweep_once(directory)
    if os.path.basename(directory).startswith('ansible-tmp-'):
        base = os.path.dirname(directory)
        if base not in SWEPT_DIRS:
            SWEPT_DIRS.add(base)
            try:
                siblings = [e.path for e in os.scandir(base)
                            if e.name.startswith('ansible-tmp-') and e.is_dir(follow_symlinks=False)]
            except OSError:
                siblings = []
            for sibling in siblings:
                sweep_once(sibling)


def sweep_directory_of(path):
    """Sweep path's directory, however often this process did before."""
    sweep_dead_temps(os.path.dirname(path) or '.')


def open_temp(directory):
    """Create a private, hidden temp file in directory, its lock held while it is written;
    return (fd, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_CLOEXEC', 0) | getattr(os, 'O_NOFOLLOW', 0)
    while True:
        path = os.path.join(directory, '.ferrogen-%d-%s.tmp' % (os.getpid(), os.urandom(6).hex()))
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            continue
        if lock_exclusively(fd, path):
            return fd, path
        os.close(fd)


def fsync_dir(directory):
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def resolve_owner(owner, group):
    """(uid, gid) for fchown; -1 leaves one unchanged. Names or numbers."""
    uid = gid = -1
    if owner not in (None, ''):
        uid = int(owner) if str(owner).isdigit() else pwd.getpwnam(owner).pw_uid
    if group not in (None, ''):
        gid = int(group) if str(group).isdigit() else grp.getgrnam(group).gr_gid
    return uid, gid


class AtomicFile:
    """A file being received: a hidden temp file beside the destination, renamed over it
    once complete, so readers see the old file or the new one, never a mix.

    sweep(path) first removes what dead writers left there: by default each directory once per
    process (sweep_for), as an agent does, which lives for many tasks.
    """

    def __init__(self, path, mode=None, owner=None, group=None, sweep=sweep_for):
        self.path = path
        self.directory = os.path.dirname(path) or '.'
        self.mode = 0o600 if mode is None else int(mode)
        self.owner = resolve_owner(owner, group)
        sweep(path)
        self.fd, self.tmp_path = open_temp(self.directory)
        self.size = 0
        self.digest = hashlib.sha1()

    def write(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view[:WRITE_PIECE]):]
        self.digest.update(data)
        self.size += len(data)

    def commit(self, mode=None):
        """Mode (mode, else the one given at the start) and owner, fsync, rename over the
        destination, fsync the directory."""
        try:
            if self.owner != (-1, -1):
                os.fchown(self.fd, *self.owner)
            os.fchmod(self.fd, self.mode if mode is None else mode)
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            os.rename(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        fsync_dir(self.directory)

    def abort(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        try:
            os.unlink(self.tmp_path)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.fd is not None:
            self.abort()


def write_atomically(path, data, mode=None, owner=None, group=None):
    """Write data so that readers see the old file or the new one, never a mix."""
    handle = AtomicFile(path, mode, owner, group)
    try:
        handle.write(data)
    except BaseException:
        handle.abort()
        raise
    handle.commit()

"""The debug log file (MITOGEN_ROUTER_DEBUG), opened so that nobody can redirect it."""

import errno
import os
import stat
import time

from .settings import ROUTER_DEBUG


class DebugFile:
    """/tmp/mitogen.<pid>.log, written when MITOGEN_ROUTER_DEBUG is on.

    /tmp outlives processes, and pids are reused: that name may be another account's file, left
    by an earlier process with our pid, or a link someone planted. Those are never written; the
    log goes to the first free /tmp/mitogen.<pid>.<n>.log instead and `detour` says why, because a
    debugging aid must not stop the agent it is there to debug."""

    def __init__(self):
        self.handle = None
        self.detour = None
        if ROUTER_DEBUG:
            self.handle = self.open(os.getpid())

    def open(self, pid):
        path = '/tmp/mitogen.%d.log' % pid
        try:
            return os.fdopen(open_own_file(path), 'w', buffering=1)
        except OSError as exc:
            refused = 'not writing the debug log to %s: %s' % (path, why_not_ours(path, exc))
        for number in range(1, DEBUG_LOG_DETOURS + 1):
            detour = '/tmp/mitogen.%d.%d.log' % (pid, number)
            try:
                fd = os.open(detour, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            except OSError as exc:
                self.detour = '%s; nor to %s: %s; no debug log' % (refused, detour, exc.strerror)
                return None
            self.detour = '%s; it is %s' % (refused, detour)
            return os.fdopen(fd, 'w', buffering=1)
        self.detour = '%s; the %d other names are taken too; no debug log' % (refused, DEBUG_LOG_DETOURS)
        return None

    def write(self, level, message):
        if self.handle is not None:
            self.handle.write('%s %d %s %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%S'), os.getpid(), level, message))


def why_not_ours(path, exc):
    """Why open_own_file refused path, in words: what is there rather than the errno."""
    try:
        there = os.lstat(path)
    except OSError:
        return exc.strerror
    if stat.S_ISLNK(there.st_mode):
        return 'it is a symbolic link'
    if not stat.S_ISREG(there.st_mode):
        return 'it is not a regular file'
    if there.st_uid != os.geteuid():
        return 'it belongs to uid %d' % there.st_uid
    return exc.strerror


# How many /tmp/mitogen.<pid>.<n>.log names a debug log tries when its own name is not ours.
DEBUG_LOG_DETOURS = 100


def open_own_file(path):
    """A write fd on path, emptied, when path is a regular file of ours or is free.

    No link is followed and no FIFO blocks the open; another account's file is refused."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or status.st_uid != os.geteuid():
            raise PermissionError(errno.EPERM, 'not ours to write', path)
        os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd

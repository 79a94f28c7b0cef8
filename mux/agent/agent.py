"""ferrogen agent: the persistent interpreter that ferrogen-mux starts on a target.

The mux writes this file's source to the interpreter's stdin at connect time; nothing is
installed on the target. The agent then speaks framed messages (docs/protocol.md) over its
original stdin/stdout for the rest of the run.

Every task (a module run or a shell command) runs in a child forked from this process, so a
task can never leave state behind in the interpreter: environment, cwd, sys.argv, patched
modules and open files all die with the child. The parent stays single-threaded, which keeps
fork() safe, and does only bookkeeping: reading frames, caching module zips, reaping children.

Standard library only; Python 3.6 or newer.
"""

import base64
import collections
import contextlib
import errno
import fcntl
import gc
import grp
import hashlib
import importlib.util
import json
import os
import pwd
import re
import select
import selectors
import shlex
import shutil
import signal
import stat
import struct
import sys
import tempfile
import termios
import time
import traceback
import tty
import zipfile
import zlib

# The compressed agent source, as the bootstrap stub read it from stdin (the stub runs this
# file in its own namespace); become children are started with the same bytes.
SOURCE = globals().get('SOURCE')

# Debug settings the mux puts in the stub before SOURCE (docs/protocol.md): MITOGEN_ROUTER_DEBUG
# makes every interpreter write /tmp/mitogen.<pid>.log; LOG_LEVEL "debug" forwards the agent's
# debug records to the controller (shown at -vvv). Neither ever carries call arguments or
# passwords: only ops, ids, accounts and what a become tool printed, password scrubbed.
ROUTER_DEBUG = bool(globals().get('ROUTER_DEBUG'))
LOG_LEVEL = globals().get('LOG_LEVEL') or 'info'

# The PAM service whose session started this interpreter, set by a become child's stub (the
# become method); a login interpreter finds it out (login_service). A become child that kept
# its caller's environment (su) also gets the files that environment came from, as (path,
# syntax) pairs.
LOGIN_SERVICE = globals().get('LOGIN_SERVICE')
INHERITED_ENV_FILES = globals().get('INHERITED_ENV_FILES') or []

# The name this interpreter shows in ps after `mitogen:`, set by the stub: the controller's
# user@host:pid, or `ansible` where mitogen_mask_remote_name hides it. Become children get it
# too and add their account.
REMOTE_NAME = globals().get('REMOTE_NAME')
# Characters a REMOTE_NAME may have: the mux keeps to these, so it needs no quoting in a stub.
REMOTE_NAME_CHARS = re.compile(r'[A-Za-z0-9._@:+-]+')

# -- Names and limits shared with the mux (docs/protocol.md) ---------------------------------
# worker-ipc's tests/python_names.rs reads this block and fails when it differs from the Rust
# side (ErrorKind, the limits in worker-ipc/src/lib.rs); ops are this file's `op_<name>` methods.
MAX_HEADER = 16 * 1024 * 1024
MAX_BODY = 256 * 1024 * 1024
# Files up to SMALL_FILE_LIMIT ride in one put_file call; larger ones stream in chunks of at
# most TRANSFER_CHUNK bytes, with at most TRANSFER_WINDOW bytes sent and not yet acknowledged.
SMALL_FILE_LIMIT = 126976
TRANSFER_CHUNK = 1 << 20
TRANSFER_WINDOW = 4 << 20
# Error kinds of failed calls.
AGENT_ERROR = 'agent_error'
BAD_REQUEST = 'bad_request'
BECOME_FAILED = 'become_failed'
CANCELLED = 'cancelled'
CONNECTION_LOST = 'connection_lost'
MISSING_BLOB = 'missing_blob'
NOT_FOUND = 'not_found'
OTHER_INTERPRETER = 'other_interpreter'
# -- end of the names and limits shared with the mux -----------------------------------------

FRAME_PREFIX = struct.Struct('>II')

# Compression of the link to the mux (docs/protocol.md, "Compression on the agent link"): the
# mux sets COMPRESS_LINK in the stub when it crosses a network and ssh does not compress it;
# this agent then deflates what it sends where that pays. It always reads compressed segments.
# The numbers are worker-ipc's (src/compression.rs), whose tests check these lines, but for the
# level: CPython's zlib at 1 still builds Huffman tables (zlib-rs at 1 does not: the mux uses 2).
COMPRESS_LINK = bool(globals().get('COMPRESS_LINK'))
SEGMENT_PREFIX = struct.Struct('>H')
SEGMENT_FLAG = 0x8000
SEGMENT_MAX = 0x7fff
PROBE_MIN_BODY = 4096
PROBE_SAMPLE = 4096
PROBE_PERCENT = 90
AGENT_LEVEL = 1
# Z_PARTIAL_FLUSH, as ssh's compression flushes: a few bits per flush where a sync flush costs
# four bytes.
LINK_FLUSH = getattr(zlib, 'Z_PARTIAL_FLUSH', zlib.Z_SYNC_FLUSH)

# Top-level packages of module zips, as prefixes of dotted names: ansible's own and collections'.
ZIP_PACKAGE_ROOTS = ('ansible.', 'ansible_collections.')

# How many streamed uploads' digests the interpreter keeps for modules that hash them again.
RECEIVED_DIGESTS_KEPT = 32

# Where the private temp dir may live when the controller names nowhere: Ansible's default
# remote_tmp and system_tmpdirs.
TEMP_DIR_CANDIDATES = ('~/.ansible/tmp', '/var/tmp', '/tmp')

# Where the controller says the temp dir goes first (remote_tmp, then system_tmpdirs, as the
# task's settings give them; `~` and `$VAR` are expanded here): hex-encoded JSON set by the stub.
TEMP_DIRS = globals().get('TEMP_DIRS')


class Channel:
    """The framed link to the mux: our original stdin and stdout, moved out of the way."""

    def __init__(self):
        # The mux may send frames right behind the bootstrap payload, before our `ready`: the
        # stub read the payload through sys.stdin.buffer, which may hold their first bytes.
        self.inbuf = bytearray(early_input())
        # Keep the protocol on private descriptors, and point fd 0/1 at harmless places so a
        # stray print() or a child reading stdin can never corrupt the stream.
        self.rfd = os.dup(0)
        self.wfd = os.dup(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(2, 1)
        os.close(devnull)
        os.set_blocking(self.rfd, False)
        # Larger pipes mean fewer wake-ups per streamed megabyte (Linux; best effort).
        for fd in (self.rfd, self.wfd):
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, TRANSFER_CHUNK)
            except (OSError, ValueError):
                pass
        self.deflater = zlib.compressobj(AGENT_LEVEL, zlib.DEFLATED, -15) if COMPRESS_LINK else None
        self.inflater = zlib.decompressobj(-15)
        self.inflated = bytearray()

    def send(self, header, body=b''):
        data = encode_frame(header, body)
        if self.deflater is not None and worth_compressing(body):
            data = segments(self.deflater.compress(data) + self.deflater.flush(LINK_FLUSH))
        write_all(self.wfd, data)

    def read_available(self):
        """Read what the pipe holds; return the complete frames, or None at end of stream."""
        if not read_raw(self.rfd, self.inbuf):
            return None
        frames = []
        inbuf = self.inbuf
        while inbuf:
            if not inbuf[0] & 0x80:
                if self.inflated:
                    raise ValueError('a plain frame inside a compressed one')
                frame = take_frame(inbuf)
                if frame is None:
                    break
                frames.append(frame)
                continue
            if len(inbuf) < SEGMENT_PREFIX.size:
                break
            size = SEGMENT_PREFIX.unpack_from(inbuf)[0] & SEGMENT_MAX
            if not size:
                raise ValueError('empty compressed segment')
            end = SEGMENT_PREFIX.size + size
            if len(inbuf) < end:
                break
            # At most 1032 bytes per byte of deflate data; take_frame checks each frame's
            # lengths as soon as its prefix is inflated.
            self.inflated += self.inflater.decompress(bytes(inbuf[SEGMENT_PREFIX.size:end]))
            del inbuf[:end]
            frame = take_frame(self.inflated)
            while frame is not None:
                frames.append(frame)
                frame = take_frame(self.inflated)
        return frames


def segments(deflated):
    """Deflate data cut into segments of at most SEGMENT_MAX bytes, each behind its prefix."""
    pieces = []
    for start in range(0, len(deflated), SEGMENT_MAX):
        piece = deflated[start:start + SEGMENT_MAX]
        pieces += (SEGMENT_PREFIX.pack(SEGMENT_FLAG | len(piece)), piece)
    return b''.join(pieces)


def worth_compressing(body):
    """Whether a frame with this body is sent compressed: always for a small one (its header
    repeats an earlier one's), and for a larger one when level 1 shrinks three samples of it."""
    if len(body) < PROBE_MIN_BODY:
        return True
    size = deflated = 0
    for start in (0, len(body) // 2 - PROBE_SAMPLE // 2, len(body) - PROBE_SAMPLE):
        sample = body[start:start + PROBE_SAMPLE]
        probe = zlib.compressobj(AGENT_LEVEL, zlib.DEFLATED, -15)
        deflated += len(probe.compress(sample)) + len(probe.flush())
        size += len(sample)
    return deflated * 100 < size * PROBE_PERCENT


def early_input():
    """What sys.stdin.buffer read ahead of the bootstrap payload, taken out of it so that no
    task reads it again (fd 0 is then non-blocking, as the channel's copy of it will be)."""
    try:
        os.set_blocking(0, False)
        buffered = sys.stdin.buffer.peek(1) or b''
        return sys.stdin.buffer.read(len(buffered)) if buffered else b''
    except (AttributeError, OSError, ValueError):
        return b''


def debug_settings():
    """This agent's debug settings as stub statements, for the become children it starts."""
    return ('ROUTER_DEBUG=1;' if ROUTER_DEBUG else '') + ('LOG_LEVEL="debug";' if LOG_LEVEL == 'debug' else '')


def remote_name_setting():
    """This agent's REMOTE_NAME as a stub statement, for the become children it starts."""
    return 'REMOTE_NAME="%s";' % REMOTE_NAME if REMOTE_NAME and REMOTE_NAME_CHARS.fullmatch(REMOTE_NAME) else ''


def process_title():
    """What ps shows for this interpreter after its program, as Mitogen names its processes:
    `mitogen:user@controller:pid`, with a become child's account after it (`sudo:postgres`);
    None where the mux sent no name."""
    if not REMOTE_NAME:
        return None
    title = 'mitogen:' + REMOTE_NAME
    if LOGIN_SERVICE:
        try:
            account = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            account = str(os.getuid())
        title += ' %s:%s' % (LOGIN_SERVICE, account)
    return title


def show_process_title(title):
    """Write title over this process's arguments after argv[0], where ps reads them
    (/proc/PID/cmdline shows the memory the kernel laid them out in): the bootstrap stub that
    was there says nothing to a person. argv[0] stays, so the program is still named. Python
    keeps its own copy of the arguments, so nothing in the interpreter changes; where /proc
    is missing or refuses, the process keeps the stub as its arguments."""
    if not title:
        return
    try:
        with open('/proc/self/stat', 'rb') as handle:
            fields = handle.read().rsplit(b')', 1)[1].split()
        # proc(5): arg_start and arg_end are fields 48 and 49; the split starts at field 3.
        arg_start, arg_end = int(fields[45]), int(fields[46])
        with open('/proc/self/cmdline', 'rb') as handle:
            program = handle.read().split(b'\0', 1)[0]
        start = arg_start + len(program) + 1
        room = arg_end - start
        if room < 2:
            return
        data = title.encode('utf-8', 'replace')[:room - 1]
        with open('/proc/self/mem', 'r+b', buffering=0) as mem:
            mem.seek(start)
            mem.write(data + b'\0' * (room - len(data)))
    except (OSError, ValueError, IndexError):
        pass


def temp_dir_settings():
    """The controller's temp dir settings as a stub statement, for the become children this
    agent starts: each expands `~` to its own account's home, as vanilla's remote_tmp does."""
    return 'TEMP_DIRS="%s";' % TEMP_DIRS if TEMP_DIRS and re.fullmatch('[0-9a-f]+', TEMP_DIRS) else ''


def configured_temp_dirs():
    """The temp dir settings the controller sent, or the defaults where it sent none."""
    if TEMP_DIRS:
        try:
            return [str(path) for path in json.loads(bytes.fromhex(TEMP_DIRS).decode('utf-8'))]
        except (ValueError, TypeError):
            pass
    return list(TEMP_DIR_CANDIDATES)


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


def read_raw(fd, inbuf):
    """Drain a non-blocking fd into inbuf; False at end of stream."""
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return True
        except InterruptedError:
            continue
        if not chunk:
            return False
        inbuf += chunk
        if len(chunk) < (1 << 20):
            return True


def read_frames(fd, inbuf):
    """Drain a non-blocking fd into inbuf; return its complete frames, or None at end of stream."""
    if not read_raw(fd, inbuf):
        return None
    frames = []
    frame = take_frame(inbuf)
    while frame is not None:
        frames.append(frame)
        frame = take_frame(inbuf)
    return frames


def take_frame(inbuf):
    """Take the first frame out of inbuf as (header, body), or None if it is not complete."""
    if len(inbuf) < FRAME_PREFIX.size:
        return None
    header_len, body_len = FRAME_PREFIX.unpack_from(inbuf)
    if header_len > MAX_HEADER or body_len > MAX_BODY:
        raise ValueError('frame too large: header %d body %d' % (header_len, body_len))
    end = FRAME_PREFIX.size + header_len + body_len
    if len(inbuf) < end:
        return None
    start = FRAME_PREFIX.size
    # One copy of the body (a slice of the bytearray would make two); the view must be
    # released before the bytearray shrinks.
    with memoryview(inbuf) as view:
        header = json.loads(bytes(view[start:start + header_len]).decode('utf-8'))
        body = bytes(view[start + header_len:end])
    del inbuf[:end]
    return header, body


def encode_frame(header, body=b''):
    encoded = json.dumps(header, separators=(',', ':')).encode('utf-8')
    return FRAME_PREFIX.pack(len(encoded), len(body)) + encoded + body


def write_all(fd, data):
    """Write everything, waiting when fd is non-blocking (a pty master shares its flags)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])
        except InterruptedError:
            continue


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


# File transfer (docs/protocol.md, "File transfer"); its limits are in the shared block above.
F_SETPIPE_SZ = getattr(fcntl, 'F_SETPIPE_SZ', 1031)

# Receiving temp files: hidden, in the destination directory, named after the process that
# writes them, so that one left by a process that died (kill -9) can be told from one in use.
TEMP_NAME = re.compile(r'^\.ferrogen-(\d+)-[0-9a-f]+\.tmp$')

# Directories already swept by this process: once each is enough, since later leftovers
# can only come from processes that die after this one looked.
SWEPT_DIRS = set()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: alive, another account's
    return True


def sweep_dead_temps(directory):
    """Remove our account's temp files whose writer is gone (a transfer killed mid-way): its
    lock is free (see OWNER_LOCK). Files of live writers, other accounts and anything else
    are left alone."""
    directory = os.path.abspath(directory)
    if directory in SWEPT_DIRS:
        return
    SWEPT_DIRS.add(directory)
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


def sweep_for(path):
    """Sweep path's directory; for a file in one of Ansible's per-task remote temp dirs
    (ansible-tmp-*), sweep its siblings too: a task killed mid-transfer leaves its temp file
    there, and the next task never writes to that directory again."""
    directory = os.path.dirname(os.path.abspath(path))
    sweep_dead_temps(directory)
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
                sweep_dead_temps(sibling)


def open_temp(directory):
    """Create a private, hidden temp file in directory, its lock held while it is written (see
    OWNER_LOCK); return (fd, path)."""
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
    once complete, so readers see the old file or the new one, never a mix."""

    def __init__(self, path, mode=None, owner=None, group=None):
        self.path = path
        self.directory = os.path.dirname(path) or '.'
        self.mode = 0o600 if mode is None else int(mode)
        self.owner = resolve_owner(owner, group)
        sweep_for(path)
        self.fd, self.tmp_path = open_temp(self.directory)
        self.size = 0
        self.digest = hashlib.sha1()

    def write(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        self.digest.update(data)
        self.size += len(data)

    def commit(self):
        """Mode and owner, fsync, rename over the destination, fsync the directory."""
        try:
            if self.owner != (-1, -1):
                os.fchown(self.fd, *self.owner)
            os.fchmod(self.fd, self.mode)
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


def write_atomically(path, data, mode=None, owner=None, group=None):
    """Write data so that readers see the old file or the new one, never a mix."""
    handle = AtomicFile(path, mode, owner, group)
    try:
        handle.write(data)
    except BaseException:
        handle.abort()
        raise
    handle.commit()


class PutTransfer:
    """A streamed put (put_begin ... chunk ... put_end) being received."""

    def __init__(self, args):
        self.file = AtomicFile(args['path'], args.get('mode'), args.get('owner'), args.get('group'))
        self.expected = args.get('size')

    def write(self, offset, data):
        if offset != self.file.size:
            raise ValueError('chunk at offset %s, expected %d' % (offset, self.file.size))
        self.file.write(data)

    def finish(self, size, digest):
        """Commit the file if it holds what the sender sent."""
        if size != self.file.size or digest != self.file.digest.hexdigest():
            raise ValueError('received %d bytes with SHA-1 %s, the sender sent %s bytes with SHA-1 %s'
                             % (self.file.size, self.file.digest.hexdigest(), size, digest))
        self.file.commit()
        return {'size': self.file.size, 'sha1': digest}

    def abort(self):
        self.file.abort()


def verified_claims(claims):
    """The digests a sender computed over the bytes whose SHA-1 this agent has just checked,
    kept where each names an algorithm this Python has and has that algorithm's length."""
    kept = {}
    for name, value in (claims or {}).items():
        try:
            length = hashlib.new(name).digest_size * 2
        except (TypeError, ValueError):
            continue
        if isinstance(value, str) and len(value) == length and re.fullmatch('[0-9a-f]+', value):
            kept[name] = value
    return kept


def file_identity(info):
    """What stays the same while a file holds the content it was written with (a chmod
    changes none of it)."""
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns]


class ReceivedDigests:
    """Digests of the files streamed into this interpreter's task temp dirs, by real path.

    The copy module hashes its upload twice (SHA-1, then MD5) after it arrived; a task process
    is handed these entries and answers such a module from them. An entry answers only while
    its path holds the file written (file_identity), and goes with its task temp dir.
    """

    def __init__(self):
        self.entries = collections.OrderedDict()

    def record(self, path, digests):
        real = os.path.realpath(path)
        self.entries.pop(real, None)
        self.entries[real] = file_identity(os.stat(real)) + [digests]
        while len(self.entries) > RECEIVED_DIGESTS_KEPT:
            self.entries.popitem(last=False)

    def forget_under(self, directory):
        prefix = os.path.realpath(directory).rstrip('/') + '/'
        for path in [path for path in self.entries if path.startswith(prefix)]:
            del self.entries[path]


def answer_digests_from(entries):
    """In a task process: AnsibleModule.digest_from_file answers from entries (a
    ReceivedDigests table) for a file that is still the one received, by an algorithm the
    module could use itself; anything else it hashes as before."""
    basic = sys.modules.get('ansible.module_utils.basic')
    if not entries or basic is None:
        return
    module_class = basic.AnsibleModule
    hash_file = module_class.digest_from_file

    def digest_from_file(module, filename, algorithm):
        if isinstance(algorithm, str) and algorithm in basic.AVAILABLE_HASH_ALGORITHMS:
            path = os.path.realpath(os.fsdecode(filename))
            entry = entries.get(path)
            if entry is not None and algorithm in entry[-1]:
                try:
                    if file_identity(os.stat(path)) == entry[:-1]:
                        return entry[-1][algorithm]
                except OSError:
                    pass
        return hash_file(module, filename, algorithm)

    module_class.digest_from_file = digest_from_file


class FetchTransfer:
    """A streamed fetch (fetch_begin ... chunk/ack ...) being sent."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0))
        info = os.fstat(self.fd)
        if stat.S_ISDIR(info.st_mode):
            os.close(self.fd)
            raise IsADirectoryError('%s is a directory' % path)
        self.size = info.st_size
        self.mode = stat.S_IMODE(info.st_mode)
        self.sent = 0
        self.acked = 0
        self.digest = hashlib.sha1()

    def abort(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


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
        self.stopping = False
        self.prompt_text = bytearray()
        self.prompt_seen_at = None
        self.password_sent = False
        self.inbuf = bytearray()
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
        for fd in (self.stdout_r, self.tty_r):
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
        write_all(self.stdin_w, encode_frame(header, body))

    def stop(self):
        self.stopping = True
        try:
            self.send({'type': 'shutdown'})
        except OSError:
            pass

    def close_fds(self):
        for fd in (self.stdin_w, self.stdout_r, self.tty_r):
            try:
                os.close(fd)
            except OSError:
                pass


def stat_result(stdout):
    """The `stat` of a stat module's output; None for a failure or anything unexpected."""
    try:
        result = json.loads(stdout.decode('utf-8'))
    except ValueError:
        return None
    status = result.get('stat') if isinstance(result, dict) and not result.get('failed') else None
    if not isinstance(status, dict) or not isinstance(status.get('exists'), bool):
        return None
    if status['exists'] and not (status.get('isdir') is False and isinstance(status.get('checksum', ''), str)):
        return None
    return status


def stat_shows_other_content(stdout, condition):
    """Whether the stat module's output says the path is absent or a non-directory without the
    content whose sha1 is condition['sha1']: when Ansible's copy action runs the copy module."""
    status = stat_result(stdout)
    return status is not None and (not status['exists'] or status.get('checksum', '') != condition['sha1'])


def stat_shows_same_content(stdout, condition):
    """Whether the stat module's output says the path is a non-directory with that content:
    when the copy action runs the file module instead."""
    status = stat_result(stdout)
    return status is not None and status['exists'] and status.get('checksum') == condition['sha1']


# The conditions a run_module continuation may have, by name.
CONTINUATION_CONDITIONS = {
    'stat_shows_other_content': stat_shows_other_content,
    'stat_shows_same_content': stat_shows_same_content,
}


class OutputTooLarge(Exception):
    """A task wrote more than one reply can carry (MAX_BODY)."""

    def __init__(self, size):
        super().__init__('the task wrote %d bytes of output, more than the %d bytes (%d MiB) a reply can '
                         'carry; redirect it to a file on the target instead' % (size, MAX_BODY, MAX_BODY >> 20))


# -- what a fresh login would see ---------------------------------------------------------------
#
# Vanilla Ansible starts a new session for every task (a fresh ssh login, a fresh sudo or su),
# so a task sees what earlier tasks changed in the files PAM's pam_env reads at session start,
# and a resolver configured from the current resolv.conf. A persistent interpreter read them
# once; LoginState brings it up to date before each task (the spec's "Process Environment
# Emulation").

PAM_CONFIG_DIR = '/etc/pam.d'
# pam_env(8)'s defaults for the files it reads.
PAM_ENV_CONFFILE = '/etc/security/pam_env.conf'
PAM_ENV_ENVFILE = '/etc/environment'
PAM_ENV_USER_ENVFILE = '.pam_environment'
RESOLV_CONF = '/etc/resolv.conf'
GROUP_FILE = '/etc/group'
# The process name of an sshd session: the parent of a login interpreter started over ssh.
SSHD_PROCESS_NAMES = ('sshd', 'sshd-session')
ENV_KEY = re.compile(r'[A-Za-z0-9_]+$')
CONF_VALUE = re.compile(r'(DEFAULT|OVERRIDE)=("(?:[^"\\]|\\.)*"|\S*)')
CONF_EXPANSION = re.compile(r'\$\{([^}]*)\}|@\{([^}]*)\}')


def login_service():
    """The PAM service of the session this interpreter runs in: the become tool's for a become
    child, `sshd` for a login over ssh, None otherwise (a local connection has no login)."""
    if LOGIN_SERVICE:
        return LOGIN_SERVICE
    try:
        with open('/proc/%d/comm' % os.getppid()) as comm:
            parent = comm.read().strip()
    except OSError:
        return None
    return 'sshd' if parent in SSHD_PROCESS_NAMES else None


def pam_env_sources(service, home, depth=0):
    """The files pam_env reads in a session of `service`, in its order, as (path, syntax):
    'env' for KEY=VAL files (/etc/environment), 'conf' for pam_env.conf's syntax. Found in
    /etc/pam.d/<service> and the files it includes."""
    try:
        with open(os.path.join(PAM_CONFIG_DIR, service)) as config:
            lines = config.read().splitlines()
    except OSError:
        return []
    sources = []
    for line in lines:
        words = line.split('#', 1)[0].split()
        if len(words) == 2 and words[0] == '@include' and depth < 8:
            sources.extend(pam_env_sources(words[1], home, depth + 1))
            continue
        if len(words) < 3 or words[0].lstrip('-') not in ('auth', 'session'):
            continue
        rest = words[1:]
        # The control field: a word, or a bracketed list that may hold spaces.
        while rest and rest[0].startswith('[') and not rest[0].endswith(']'):
            rest = [rest[0] + ' ' + rest[1]] + rest[2:] if len(rest) > 1 else []
        if len(rest) < 2:
            continue
        control, module, args = rest[0], rest[1], rest[2:]
        if control in ('include', 'substack') and depth < 8:
            sources.extend(pam_env_sources(module, home, depth + 1))
        elif os.path.basename(module) == 'pam_env.so':
            sources.extend(pam_env_files(args, home))
    unique = []
    for source in sources:
        if source not in unique:
            unique.append(source)
    return unique


def pam_env_files(args, home):
    """The files one pam_env line reads, in pam_env's order, from its arguments."""
    options = dict(arg.split('=', 1) if '=' in arg else (arg, '') for arg in args)
    files = [(options.get('conffile', PAM_ENV_CONFFILE), 'conf')]
    if options.get('readenv', '1') != '0':
        files.append((options.get('envfile', PAM_ENV_ENVFILE), 'env'))
    if options.get('user_readenv', '0') != '0' and home:
        files.append((os.path.join(home, options.get('user_envfile', PAM_ENV_USER_ENVFILE)), 'conf'))
    return files


def parse_environment_file(text):
    """A KEY=VAL file as pam_env reads it: [(key, value)], value None to unset. An optional
    `export `; `#` ends the line; one pair of quotes around the value goes."""
    entries = []
    for line in text.splitlines():
        line = line.lstrip()
        if line.startswith('export '):
            line = line[len('export '):]
        line = line.split('#', 1)[0]
        key, has_value, value = line.partition('=')
        if not key or not ENV_KEY.match(key):
            continue
        if has_value and value[:1] in ('"', "'"):
            value = value[1:-1] if len(value) > 1 and value[-1] in ('"', "'") else value[1:]
        entries.append((key, value if has_value else None))
    return entries


def parse_pam_env_conf(text, known, home, shell):
    """pam_env.conf's syntax, `KEY [DEFAULT=value] [OVERRIDE=value]` with `${VAR}`, `@{HOME}`
    and `@{SHELL}` expanded (`known` gives variables already set), or `KEY=VAL`: [(key, value)],
    value None to unset."""
    entries = []
    for line in text.replace('\\\n', ' ').splitlines():
        line = line.split('#', 1)[0].strip()
        key, _, rest = line.partition(' ')
        if '=' in key:
            entries.extend(parse_environment_file(line))
            continue
        if not key or not ENV_KEY.match(key):
            continue
        values = {}
        for name, value in CONF_VALUE.findall(rest):
            if value.startswith('"'):
                value = value[1:-1]

            def expand(match):
                if match.group(1) is not None:
                    return dict(entries).get(match.group(1)) or known.get(match.group(1)) or ''
                return {'HOME': home, 'SHELL': shell}.get(match.group(2), '')

            values[name] = CONF_EXPANSION.sub(expand, value)
        entries.append((key, values.get('OVERRIDE') or values.get('DEFAULT') or None))
    return entries


def file_stamp(path):
    """What tells a changed file from an unchanged one (None: no such file)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns


def reload_resolver():
    """res_init(3): the resolver rereads resolv.conf (glibc rereads it by itself only since
    2.26; other C libraries never do)."""
    import ctypes
    import ctypes.util
    for library in (None, ctypes.util.find_library('resolv')):
        try:
            libc = ctypes.CDLL(library)
        except OSError:
            continue
        for name in ('__res_init', 'res_init'):
            function = getattr(libc, name, None)
            if function is not None:
                return function() == 0
    return False


class LoginState:
    """The state a new session would set up that this interpreter set up once: pam_env's
    variables, the resolver, (for root) the supplementary groups. refresh() applies what
    changed since, before a task."""

    def __init__(self, service):
        entry = pwd.getpwuid(os.geteuid())
        self.account, self.home, self.shell = entry.pw_name, entry.pw_dir, entry.pw_shell
        self.sources = []
        for source in INHERITED_ENV_FILES + (pam_env_sources(service, self.home) if service else []):
            if tuple(source) not in self.sources:
                self.sources.append(tuple(source))
        self.env_stamps = [file_stamp(path) for path, _ in self.sources]
        self.env_values = self.read_env_files()
        self.resolv_stamp = file_stamp(RESOLV_CONF)
        self.group_stamp = file_stamp(GROUP_FILE) if os.geteuid() == 0 else None

    def inherited_by(self, spec):
        """The files a become child's environment comes from through this one: all of them
        where the tool keeps the caller's environment (su without a login shell); none where it
        starts a clean one (sudo, doas, su -l)."""
        flags = set(shlex.split(spec.get('flags') or ''))
        if spec.get('method') == 'su' and not flags & {'-', '-l', '--login'}:
            return self.sources
        return []

    def read_env_files(self):
        """key -> value (None: unset) as the session's pam_env would set them now."""
        values = {}
        for path, syntax in self.sources:
            try:
                with open(path, encoding='utf-8', errors='surrogateescape') as handle:
                    text = handle.read()
            except OSError:
                continue
            if syntax == 'env':
                entries = parse_environment_file(text)
            else:
                entries = parse_pam_env_conf(text, dict(os.environ, **{k: v for k, v in values.items() if v}),
                                             self.home, self.shell)
            values.update(entries)
        return values

    def refresh(self):
        """Apply what changed since the last call; a description of each change made."""
        changes = []
        stamps = [file_stamp(path) for path, _ in self.sources]
        if stamps != self.env_stamps:
            self.env_stamps = stamps
            values = self.read_env_files()
            changes.extend(apply_env_changes(self.env_values, values, os.environ))
            self.env_values = values
        stamp = file_stamp(RESOLV_CONF)
        if stamp != self.resolv_stamp:
            self.resolv_stamp = stamp
            changes.append('%s changed: resolver reloaded (%s)'
                           % (RESOLV_CONF, 'ok' if reload_resolver() else 'res_init unavailable'))
        if self.group_stamp is not None:
            stamp = file_stamp(GROUP_FILE)
            if stamp != self.group_stamp:
                self.group_stamp = stamp
                try:
                    os.initgroups(self.account, os.getgid())
                    changes.append('%s changed: groups now %s' % (GROUP_FILE, os.getgroups()))
                except (OSError, KeyError) as exc:
                    changes.append('%s changed: groups not reloaded: %s' % (GROUP_FILE, exc))
        return changes


def apply_env_changes(old, new, environ):
    """Bring `environ` from pam_env's old values to its new ones where that is safe (the spec,
    "/etc/environment"): a key is set where the environment lacks it or still holds the file's
    old value, and removed where it still holds the file's old value; a key that something
    else changed after pam_env ran (a profile, the task's environment) keeps its value."""
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        current = environ.get(key)
        if current is not None and current != before:
            continue
        if after is None:
            if current is not None:
                del environ[key]
                changes.append('environment: %s removed' % (key,))
        else:
            environ[key] = after
            changes.append('environment: %s set' % (key,))
    return changes


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
        before any of it is read into memory, if a reply could not carry it."""
        files = [f for f in (self.stdout_file, self.stderr_file) if f is not None]
        size = sum(os.fstat(f.fileno()).st_size for f in files)
        if size > MAX_BODY:
            for handle in files:
                handle.close()
            raise OutputTooLarge(size)
        stdout = self._read(self.stdout_file)
        stderr = self._read(self.stderr_file) if self.stderr_file is not None else b''
        if self.emulate_tty:
            # What a pty's onlcr would have done to the merged output over ssh -tt.
            stdout = stdout.replace(b'\n', b'\r\n')
            if len(stdout) > MAX_BODY:
                raise OutputTooLarge(len(stdout))
        return rc, stdout, stderr

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


class Agent:
    def __init__(self):
        self.channel = Channel()
        self.debug_file = DebugFile()
        self.tmpdir, self.tmpdir_lock = choose_temp_dir()
        self.interpreter_names = names_of_this_interpreter()
        self.blobs = {}
        # A read fd on each blob's file, to put it back if the temp dir vanishes.
        self.blob_fds = {}
        self.tasks = {}
        # Become interpreters started through this one, by interp id and by pid.
        self.children = {}
        self.child_pids = {}
        self.warm = False
        # Module zips whose module_utils this interpreter has imported, and modules compiled.
        self.warm_zips = set()
        self.zip_modules = ZipModules()
        sys.meta_path.insert(0, self.zip_modules)
        self.compiled_modules = {}
        # Counts changes to what tasks inherit (blobs, warm zips, compiled modules), so an
        # older spare is not used; and the spare itself, forked once tasks have run.
        self.generation = 0
        self.spare = None
        self.spare_wanted = False
        # Task processes answered for (on_task_done) and not reaped yet.
        self.answered_pids = set()
        # Streamed transfers in progress, by call id (PutTransfer or FetchTransfer).
        self.transfers = {}
        self.received_digests = ReceivedDigests()
        # Task temp dirs made by make_dir and not removed yet.
        self.task_dirs = set()
        self.login_state = LoginState(login_service())
        # Next hops' transports started for the mux (connection delegation), by route number
        # and by pid.
        self.routes = {}
        self.route_pids = {}
        self.selector = selectors.DefaultSelector()
        self.wakeup_r, wakeup_w = os.pipe()
        os.set_blocking(self.wakeup_r, False)
        os.set_blocking(wakeup_w, False)
        signal.set_wakeup_fd(wakeup_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, lambda signum, frame: self.shutdown(0))
        self.selector.register(self.channel.rfd, selectors.EVENT_READ, 'channel')
        self.selector.register(self.wakeup_r, selectors.EVENT_READ, 'wakeup')

    # -- lifecycle -------------------------------------------------------------------------

    def announce(self):
        entry = pwd.getpwuid(os.geteuid())
        self.channel.send({
            'type': 'ready',
            'pid': os.getpid(),
            'python': sys.executable,
            'version': '%d.%d.%d' % sys.version_info[:3],
            'uid': os.geteuid(),
            'user': entry.pw_name,
            'home': entry.pw_dir,
            'tmpdir': self.tmpdir,
        })
        self.log('debug', 'agent ready: pid %d, %s %s, user %s, temp dir %s'
                 % (os.getpid(), sys.executable, sys.version.split()[0], entry.pw_name, self.tmpdir))
        if self.debug_file.detour:
            self.log('warning', self.debug_file.detour)

    def run(self):
        self.announce()
        # Calls the mux sent before our `ready` may be complete already, and no wake-up
        # would come for them.
        self.on_channel_readable()
        while True:
            authenticating = any(c.starting for c in self.children.values())
            for key, _ in self.selector.select(PROMPT_SETTLE / 3 if authenticating else None):
                if key.data == 'channel':
                    self.on_channel_readable()
                elif key.data == 'wakeup':
                    try:
                        while os.read(self.wakeup_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                elif isinstance(key.data, Task):
                    self.on_task_done(key.data)
                elif isinstance(key.data, RouteStream):
                    key.data.route.on_output(self, key.data)
                else:
                    stream, child = key.data
                    self.on_child_output(stream, child)
            if authenticating:
                self.check_prompts()
            if self.spare is None and self.spare_wanted:
                self.spare_wanted = False
                try:
                    self.spare = self.fork_task_process()
                except OSError as exc:
                    self.log('debug', 'no spare task process: %s' % (exc,))

    def on_channel_readable(self):
        frames = self.channel.read_available()
        if frames is None:
            self.shutdown(0)
        for header, body in frames:
            self.dispatch(header, body)

    def shutdown(self, code):
        for transfer in self.transfers.values():
            transfer.abort()
        for child in self.children.values():
            child.stop()
            child.close_fds()
        stop_routes(self)
        pids = [task.pid for task in self.tasks.values()]
        if self.spare is not None:
            pids.append(self.spare.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for path in [self.tmpdir, *self.task_dirs]:
            shutil.rmtree(path, ignore_errors=True)
        os._exit(code)

    def log(self, level, message):
        self.debug_file.write(level, message)
        if level != 'debug' or LOG_LEVEL == 'debug':
            self.channel.send({'type': 'log', 'level': level, 'message': message})

    # -- dispatch ----------------------------------------------------------------------------

    def dispatch(self, header, body):
        kind = header.get('type')
        interp = header.get('interp') or 0
        if interp and kind in ('call', 'blob', 'cancel', 'chunk', 'put_end', 'ack', 'heartbeat', *ROUTE_FRAMES):
            self.relay(interp, header, body)
        elif kind in ROUTE_FRAMES:
            on_route_frame(self, kind, header, body)
        elif kind == 'heartbeat':
            # Answered at once, whatever tasks run (they run in their own processes): a hop
            # that stays silent is stopped or wedged, not busy (docs/protocol.md).
            self.channel.send({'type': 'heartbeat', 'seq': header.get('seq'), 'pid': os.getpid()})
        elif kind == 'blob':
            # A cached blob names one this agent already kept while relaying it.
            if not header.get('cached'):
                self.store_blob(header['hash'], body)
        elif kind == 'call':
            call_id = header.get('id')
            op = header.get('op')
            self.log('debug', 'call %s: %s' % (call_id, op))
            handler = getattr(self, 'op_' + str(op), None)
            if handler is None:
                self.reply_error(call_id, BAD_REQUEST, 'unknown op %r' % (op,))
                return
            try:
                handler(call_id, header.get('args') or {}, body)
            except Exception as exc:
                self.reply_error(call_id, AGENT_ERROR, '%s: %s' % (type(exc).__name__, exc),
                                 traceback.format_exc())
        elif kind in ('chunk', 'put_end', 'ack'):
            self.on_transfer_frame(kind, header, body)
        elif kind == 'cancel':
            transfer = self.transfers.pop(header.get('id'), None)
            if transfer is not None:
                transfer.abort()
                self.reply_error(header.get('id'), CANCELLED, 'transfer cancelled')
            for task in self.tasks.values():
                if task.call_id == header.get('id'):
                    os.kill(task.pid, signal.SIGKILL)
        elif kind == 'spawn':
            self.spawn(header)
        elif kind == 'stop':
            child = self.children.get(header.get('interp'))
            if child is None:
                self.channel.send({'type': 'stopped', 'interp': header.get('interp')})
            else:
                child.stop()
        elif kind == 'shutdown':
            self.shutdown(0)
        else:
            self.log('warning', 'ignored frame of unknown type %r' % (kind,))

    # -- become interpreters ---------------------------------------------------------------

    def spawn(self, header):
        self.start_child(header['interp'], header.get('become') or {}, header.get('timeout'),
                         cwd=header.get('cwd'))

    def start_child(self, interp, spec, timeout, use_tty=False, held=(), cwd=None):
        """Start become interpreter `interp` (its tool started in `cwd`, if given); `held` are
        frames already sent for it."""
        try:
            if SOURCE is None:
                raise RuntimeError('this agent was not started by the bootstrap stub')
            # The child inherits this interpreter's environment: bring it up to date first.
            self.refresh_login_state()
            child = BecomeChild(interp, spec, SOURCE, timeout, use_tty, self.login_state.inherited_by(spec), cwd)
        except Exception as exc:
            self.channel.send({'type': 'spawned', 'interp': interp, 'ok': False,
                               'error': {'kind': BECOME_FAILED, 'message': str(exc)}})
            self.refuse_held(held, str(exc))
            return
        child.held = list(held)
        self.log('debug', 'become %s: starting interpreter %d through %s (pid %d, %s)'
                 % (child.account, interp, spec.get('exe') or spec.get('method'), child.pid,
                    'with a terminal' if child.use_tty else 'without a terminal'))
        self.children[interp] = child
        self.child_pids[child.pid] = child
        self.selector.register(child.stdout_r, selectors.EVENT_READ, ('stdout', child))
        self.selector.register(child.tty_r, selectors.EVENT_READ, ('tty', child))

    def relay(self, interp, header, body):
        child = self.children.get(interp)
        if child is None or not (child.starting or child.state == 'ready'):
            if header.get('type') == 'call':
                self.reply_error(header.get('id'), CONNECTION_LOST,
                                 'become interpreter %s is not running' % (interp,))
            return
        # To the child, the frame is addressed to itself.
        header = dict(header)
        del header['interp']
        if header.get('type') == 'blob':
            body = self.blob_for_child(header, body)
            if body is None:
                return
        if child.state == 'ready':
            self.deliver(child, header, body)
        else:
            child.held.append((header, body))

    def deliver(self, child, header, body):
        try:
            child.send(header, body)
        except OSError as exc:
            if header.get('type') == 'call':
                self.reply_error(header.get('id'), CONNECTION_LOST,
                                 'become interpreter for %s is gone: %s' % (child.account, exc))

    def on_child_output(self, stream, child):
        fd = child.tty_r if stream == 'tty' else child.stdout_r
        registered = self.selector.get_map().get(fd)
        if registered is None or registered.data != (stream, child):
            # An event of the same select() batch as the child's exit (its fds are closed,
            # and their numbers may already belong to a newer child).
            return
        if stream == 'tty':
            chunk = child.read_tty()
            if chunk is False:
                self.selector.unregister(child.tty_r)
            elif chunk is not True and child.state == 'ready':
                self.log('warning', '[%s] %s' % (child.account, chunk.decode('utf-8', 'replace').rstrip()))
            return
        try:
            if child.state == 'authenticating':
                if not read_raw(child.stdout_r, child.inbuf) or not child.take_go_marker():
                    if len(child.inbuf) >= len(GO_MARKER) and not child.inbuf.startswith(GO_MARKER):
                        raise ValueError('unexpected output before the agent started: %r' % bytes(child.inbuf[:80]))
                    return
            frames = read_frames(child.stdout_r, child.inbuf)
        except ValueError as exc:
            # Its stream is out of step for good: end it, so that its calls fail (interp_lost)
            # rather than wait forever.
            self.log('error', 'become interpreter for %s sent garbage: %s' % (child.account, exc))
            try:
                os.kill(child.pid, signal.SIGKILL)
            except OSError:
                pass
            frames = None
        if frames is None:
            self.selector.unregister(child.stdout_r)
            return
        for header, body in frames:
            if child.state == 'booting' and header.get('type') == 'ready':
                self.log('debug', 'become %s: interpreter %d ready, pid %s' % (child.account, child.interp, header.get('pid')))
                child.state = 'ready'
                self.channel.send({'type': 'spawned', 'interp': child.interp, 'ok': True, 'ready': header})
                held, child.held = child.held, []
                for held_header, held_body in held:
                    self.deliver(child, held_header, held_body)
            else:
                self.channel.send(header, body)

    def check_prompts(self):
        now = time.monotonic()
        for child in list(self.children.values()):
            if not child.starting:
                continue
            action = child.prompt_action(now)
            if action == 'answer':
                self.log('debug', 'become %s: answering the prompt %r' % (child.account, child.prompt_excerpt()))
                child.answer_prompt()
            elif action is not None:
                self.fail_spawn(child, action)
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except OSError:
                    pass

    def fail_spawn(self, child, message):
        child.state = 'failed'
        self.channel.send({'type': 'spawned', 'interp': child.interp, 'ok': False,
                           'error': {'kind': BECOME_FAILED, 'message': message}})
        held, child.held = child.held, []
        self.refuse_held(held, message)

    def refuse_held(self, held, message):
        """Every call gets its one reply; the mux has failed these already and drops them."""
        for header, _ in held:
            if header.get('type') == 'call':
                self.reply_error(header.get('id'), BECOME_FAILED, message)

    def child_exited(self, child, status):
        for fd in (child.stdout_r, child.tty_r):
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError):
                pass
        if child.starting:
            child.read_tty()
            if not child.use_tty and TTY_REQUIRED in child.prompt_excerpt():
                child.close_fds()
                self.start_child(child.interp, child.spec, child.timeout, use_tty=True, held=child.held,
                                 cwd=child.cwd)
                return
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
            self.fail_spawn(child, 'could not become %s (exit status %d): %s'
                            % (child.account, code, child.prompt_excerpt() or 'no output'))
        elif child.stopping:
            self.channel.send({'type': 'stopped', 'interp': child.interp})
        elif child.state == 'ready':
            self.channel.send({'type': 'interp_lost', 'interp': child.interp,
                               'message': 'become interpreter for %s exited' % (child.account,)})
        child.close_fds()
        if self.children.get(child.interp) is child:
            del self.children[child.interp]

    def reply(self, call_id, result, body=b''):
        self.channel.send({'type': 'reply', 'id': call_id, 'ok': True, 'result': result}, body)

    def reply_error(self, call_id, kind, message, detail=None):
        error = {'kind': kind, 'message': message}
        if detail:
            error['detail'] = detail
        self.channel.send({'type': 'reply', 'id': call_id, 'ok': False, 'error': error})

    def blob_for_child(self, header, body):
        """Keep a copy of every blob relayed to a child; a `cached` blob is only a reference
        to such a copy, so it crosses the network once per target, not once per account."""
        digest = header['hash']
        if not header.pop('cached', False):
            self.store_blob(digest, body)
            return body
        fd = self.blob_fds.get(digest)
        if fd is None:
            self.log('error', 'blob %s was sent as cached but this agent does not hold it' % digest)
            return None
        # From the descriptor kept on it: the temp dir may have been removed meanwhile.
        return base64.b64encode(os.pread(fd, os.fstat(fd).st_size, 0))

    def store_blob(self, digest, data):
        """Keep a module zip. It arrives as the base64 text Ansible embeds in its payload, so
        the worker can name it without decoding it on every task."""
        if hashlib.sha1(data).hexdigest() != digest:
            self.log('error', 'blob %s arrived corrupted; dropped' % digest)
            return
        try:
            content = base64.b64decode(data, validate=True)
        except ValueError as exc:
            self.log('error', 'blob %s is not base64 (%s); dropped' % (digest, exc))
            return
        path = os.path.join(self.tmpdir, digest + '.zip')
        try:
            self.ensure_temp_dir()
            write_atomically(path, content)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.log('error', 'blob %s cannot be kept in %s (%s); dropped' % (digest, self.tmpdir, exc))
            return
        old_fd = self.blob_fds.pop(digest, None)
        if old_fd is not None:
            os.close(old_fd)
        self.blob_fds[digest] = fd
        self.blobs[digest] = path
        self.generation += 1

    def ensure_temp_dir(self):
        """Put the temp dir back if something removed it (its owner lock is gone with it):
        a sweeper that took us for dead, a cleaner of old files. Blobs return to the same paths,
        which compiled modules and task processes name. Raises OSError, failing the one call,
        if it cannot be done."""
        if os.fstat(self.tmpdir_lock).st_nlink:
            return
        self.log('warning', 'the temp dir %s was removed by someone else; recreating it' % self.tmpdir)
        os.makedirs(self.tmpdir, mode=0o700, exist_ok=True)
        lock_fd = claim_temp_dir(self.tmpdir)
        if lock_fd is None:
            raise OSError(errno.ENOENT, 'the temp dir vanished again while it was recreated', self.tmpdir)
        os.close(self.tmpdir_lock)
        self.tmpdir_lock = lock_fd
        for digest, fd in self.blob_fds.items():
            size = os.fstat(fd).st_size
            write_atomically(self.blobs[digest], os.pread(fd, size, 0))

    # -- ops -------------------------------------------------------------------------------

    def op_ping(self, call_id, args, body):
        self.reply(call_id, {'pid': os.getpid()})

    def op_exec_command(self, call_id, args, body):
        if not isinstance(args.get('cmd'), str):
            raise ValueError('exec_command needs a "cmd" string')
        self.start_task(call_id, 'exec_command', args, stdin=body, emulate_tty=bool(args.get('emulate_tty')))

    def op_run_module(self, call_id, args, body):
        """Run a module. With `then`, a list of {"if": condition, "args": module call}, the
        first of those modules whose condition the first module's result meets runs right after
        it, in the same call: the controller needs one round trip where it would have waited
        twice (docs/protocol.md, "Continuations")."""
        interpreter = args.get('interpreter')
        if interpreter and interpreter not in self.interpreter_names:
            # Another Python (one the login account could not start, or a discovered one
            # this is not): the controller runs the module through the shell, as vanilla would.
            self.reply_error(call_id, OTHER_INTERPRETER, 'the module runs under %s; this interpreter is %s'
                             % (interpreter, sys.executable))
            return
        then = args.get('then') or []
        if then:
            args = dict(args)
            del args['then']
        for branch in then:
            if set(branch) != {'if', 'args'} or branch['if'].get('kind') not in CONTINUATION_CONDITIONS:
                raise ValueError('run_module: each "then" needs "if" (a known condition) and "args"')
        self.ensure_temp_dir()
        for zip_hash in [args['zip']] + [branch['args']['zip'] for branch in then]:
            if zip_hash not in self.blobs:
                self.reply_error(call_id, MISSING_BLOB, 'module zip %s is not cached' % zip_hash)
                return
        self.prepare_module(args)
        self.start_task(call_id, 'run_module', args, stdin=b'', emulate_tty=False, then=then)

    def prepare_module(self, args):
        zip_path = self.blobs[args['zip']]
        if (zip_path, args['module_fqn']) in self.compiled_modules:
            return
        with self.zip_modules.preparing(zip_path):
            self.warm_up(zip_path)
            self.zip_modules.compile_rest(zip_path)
            self.compile_module(zip_path, args['module_fqn'])

    def task_main(self, op, args, digests):
        """What the process of an exec_command or run_module task runs. Built in that process
        (a spare forked earlier has the same state; see TaskProcess)."""
        cwd = args.get('cwd')
        if op == 'exec_command':
            shell = pwd.getpwuid(os.geteuid()).pw_shell or '/bin/sh'
            if not os.access(shell, os.X_OK) or shell.endswith(('nologin', 'false')):
                shell = '/bin/sh'

            def exec_command():
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                enter_task_directory(cwd)
                os.execv(shell, [shell, '-c', args['cmd']])

            return exec_command
        zip_path = self.blobs[args['zip']]
        compiled = self.compiled_modules.get((zip_path, args['module_fqn']))

        def run_module():
            os.environ.update(args.get('env') or {})
            enter_task_directory(cwd)
            leave_unreachable_directory()
            apply_rlimit_nofile(args.get('rlimit_nofile'))
            run_module_in_child(zip_path, args, compiled, digests)

        return run_module

    def op_make_dir(self, call_id, args, body):
        """A task's temp dir (usually a detached call: the controller did not wait), private
        to this account like its parents, as `umask 77 && mkdir -p` makes them. Removed at
        exit if the controller has not removed it by then."""
        old_umask = os.umask(0o077)
        try:
            os.makedirs(args['path'], mode=args.get('mode', 0o700), exist_ok=True)
        finally:
            os.umask(old_umask)
        self.task_dirs.add(args['path'])
        self.reply(call_id, {})

    def in_task_dir(self, path):
        """Whether path is in one of the task temp dirs this interpreter made."""
        return any(path.startswith(directory.rstrip('/') + '/') for directory in self.task_dirs)

    def op_remove_tree(self, call_id, args, body):
        self.task_dirs.discard(args['path'])
        self.received_digests.forget_under(args['path'])
        try:
            shutil.rmtree(args['path'])
        except FileNotFoundError:
            pass
        self.reply(call_id, {})

    def op_add_mode(self, call_id, args, body):
        """chmod u+rwx and the like: add args['bits'] to each path's mode."""
        for path in args['paths']:
            os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) | args['bits'])
        self.reply(call_id, {})

    def op_put_file(self, call_id, args, body):
        """A small file in one call: the body is the content."""
        write_atomically(args['path'], body, args.get('mode'), args.get('owner'), args.get('group'))
        self.reply(call_id, {'size': len(body), 'sha1': hashlib.sha1(body).hexdigest()})

    def op_fetch_file(self, call_id, args, body):
        with open(args['path'], 'rb') as handle:
            data = handle.read()
        self.reply(call_id, {'size': len(data)}, data)

    def op_put_begin(self, call_id, args, body):
        """Open the receiving temp file; chunks follow, the reply comes after put_end."""
        try:
            transfer = PutTransfer(args)
        except FileNotFoundError as exc:
            self.reply_error(call_id, NOT_FOUND, 'cannot write %s: %s' % (args.get('path'), exc))
            return
        self.transfers[call_id] = transfer
        if body:
            self.on_transfer_frame('chunk', {'id': call_id, 'offset': 0}, body)

    def op_fetch_begin(self, call_id, args, body):
        """Send the file in chunks, at most a window ahead of the receiver's acks."""
        try:
            transfer = FetchTransfer(args['path'])
        except FileNotFoundError as exc:
            self.reply_error(call_id, NOT_FOUND, 'cannot read %s: %s' % (args['path'], exc))
            return
        self.transfers[call_id] = transfer
        try:
            self.pump(call_id, transfer)
        except BaseException:
            self.transfers.pop(call_id, None)
            transfer.abort()
            raise

    def on_transfer_frame(self, kind, header, body):
        call_id = header.get('id')
        transfer = self.transfers.get(call_id)
        if transfer is None:
            return  # failed or cancelled already; the sender learns from the reply
        try:
            if kind == 'chunk' and isinstance(transfer, PutTransfer):
                transfer.write(header.get('offset', transfer.file.size), body)
                self.channel.send({'type': 'ack', 'id': call_id, 'bytes': transfer.file.size})
            elif kind == 'put_end' and isinstance(transfer, PutTransfer):
                del self.transfers[call_id]
                result = transfer.finish(header.get('size'), header.get('sha1'))
                if self.in_task_dir(transfer.file.path):
                    digests = dict(verified_claims(header.get('digests')), sha1=result['sha1'])
                    self.received_digests.record(transfer.file.path, digests)
                    self.log('debug', 'kept the %s of %s for the task\'s modules'
                             % (' and '.join(sorted(digests)), transfer.file.path))
                self.reply(call_id, result)
            elif kind == 'ack' and isinstance(transfer, FetchTransfer):
                transfer.acked = max(transfer.acked, int(header.get('bytes') or 0))
                self.pump(call_id, transfer)
            else:
                raise ValueError('unexpected %r frame' % (kind,))
        except Exception as exc:
            self.transfers.pop(call_id, None)
            transfer.abort()
            self.reply_error(call_id, AGENT_ERROR, '%s: %s' % (type(exc).__name__, exc))

    def pump(self, call_id, transfer):
        while transfer.sent - transfer.acked < TRANSFER_WINDOW:
            data = os.read(transfer.fd, TRANSFER_CHUNK)
            if not data:
                del self.transfers[call_id]
                transfer.abort()
                self.reply(call_id, {'size': transfer.sent, 'sha1': transfer.digest.hexdigest(),
                                     'mode': transfer.mode})
                return
            transfer.digest.update(data)
            self.channel.send({'type': 'chunk', 'id': call_id, 'offset': transfer.sent,
                               'size': transfer.size}, data)
            transfer.sent += len(data)

    # -- tasks -----------------------------------------------------------------------------

    def warm_up(self, zip_path):
        """Import what this zip's modules need once, here, so each forked child starts warm:
        the module_utils Ansible packed for the module (exactly its dependencies). Called
        while zip_modules prepares the zip."""
        if zip_path in self.warm_zips:
            return
        self.warm_zips.add(zip_path)
        self.generation += 1
        put_zip_first(zip_path)
        for name in module_utils_in_zip(self.zip_modules.members[zip_path]):
            try:
                __import__(name)
            except Exception:
                self.log('debug', 'warm-up import of %s failed; tasks import it themselves:\n%s'
                         % (name, traceback.format_exc()))
        if not self.warm:
            self.warm = True
            try:
                __import__('ansible.module_utils._internal._ansiballz._loader')
                from ansible.module_utils.common import json as module_json
                for profile_direction in ((module_json.get_module_decoder, 'CONTROLLER_TO_MODULE'),
                                          (module_json.get_module_encoder, 'MODULE_TO_CONTROLLER')):
                    factory, direction = profile_direction
                    factory('legacy', getattr(module_json.Direction, direction))
            except Exception:
                self.log('debug', 'warm-up import failed; tasks will import cold:\n'
                         + traceback.format_exc())
        freeze_garbage_collector()

    def import_standard_library_of(self, source):
        """Import here the standard modules the module imports at its top level (glob, shlex,
        ...), so that each task's child finds them imported."""
        import ast
        standard = getattr(sys, 'stdlib_module_names', ())
        names = set()
        for node in ast.parse(source).body:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module)
        for name in sorted(names):
            if name.partition('.')[0] in standard and name not in sys.modules:
                try:
                    __import__(name)
                except Exception:
                    self.log('debug', 'warm-up import of %s failed:\n%s' % (name, traceback.format_exc()))

    def compile_module(self, zip_path, module_fqn):
        """(spec, code) of the module, compiled once per interpreter rather than per task."""
        key = (zip_path, module_fqn)
        if key not in self.compiled_modules:
            try:
                spec = importlib.util.find_spec(module_fqn)
                self.compiled_modules[key] = (spec, spec.loader.get_code(module_fqn))
                self.import_standard_library_of(spec.loader.get_source(module_fqn))
            except Exception:
                self.log('debug', 'cannot precompile %s:\n%s' % (module_fqn, traceback.format_exc()))
                self.compiled_modules[key] = None
            freeze_garbage_collector()
            self.generation += 1
        return self.compiled_modules[key]

    def refresh_login_state(self):
        """What a fresh login would see, before a task or a become child (LoginState); a spare
        forked with the old state is not used."""
        for change in self.login_state.refresh():
            self.log('debug', change)
            self.generation += 1

    def start_task(self, call_id, op, args, stdin, emulate_tty, then=(), before=None):
        self.ensure_temp_dir()
        self.refresh_login_state()
        self.spare_wanted = True
        process = self.take_spare()
        digests = self.received_digests.entries if op == 'run_module' else {}
        if process is None or not process.hand_over(op, args, stdin, emulate_tty, digests):
            process = self.fork_task_process()
            if not process.hand_over(op, args, stdin, emulate_tty, digests):
                raise OSError('the task process ended before it was given its task')
        task = self.tasks[process.pid] = Task(call_id, process, emulate_tty, then, before)
        self.selector.register(task.done_fd, selectors.EVENT_READ, task)

    def run_task_process(self, command_fd, done_fd, stdout_file, stderr_file):
        """The body of a freshly forked task process: leave the agent's descriptors and signal
        handlers behind, wait for the task on command_fd, run it, say so on done_fd, exit."""
        code = 1
        task_pid = os.getpid()
        # A task lives milliseconds: collecting would only copy the parent's pages.
        gc.disable()
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            # The agent's other descriptors (its channel, become children's pipes, other
            # tasks' output) must not outlive it in a task, nor keep a pipe from closing.
            close_descriptors_except({command_fd, done_fd, stdout_file.fileno(), stderr_file.fileno()})
            task = receive_task(command_fd)
            if task is None:
                code = 0
                return
            op, args, stdin, emulate_tty, digests = task
            if stdin:
                stdin_file = scratch_file(self.tmpdir)
                stdin_file.write(stdin)
                stdin_file.flush()
                os.lseek(stdin_file.fileno(), 0, os.SEEK_SET)
                os.dup2(stdin_file.fileno(), 0)
            os.dup2(stdout_file.fileno(), 1)
            os.dup2((stdout_file if emulate_tty else stderr_file).fileno(), 2)
            self.task_main(op, args, digests)()
            code = 0
        except SystemExit as exc:
            code = exit_code(exc.code)
        except BaseException:
            traceback.print_exc()
        finally:
            flush_std_streams()
            # The agent answers the call now, rather than once this large process has been
            # torn down and reaped; not for a process the module forked that ends here too.
            if os.getpid() == task_pid:
                try:
                    os.write(done_fd, bytes([code]))
                except OSError:
                    pass
            os._exit(code)

    def take_spare(self):
        """The spare process, if it was forked from the state a task needs now."""
        spare, self.spare = self.spare, None
        if spare is not None and spare.generation != self.generation:
            spare.discard()
            spare = None
        return spare

    def fork_task_process(self):
        """A task process, waiting for its task. Forked while idle (the spare), a task does not
        wait for the fork."""
        stdout_file = scratch_file(self.tmpdir)
        stderr_file = scratch_file(self.tmpdir)
        command_r, command_w = os.pipe()
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(command_w)
            os.close(done_r)
            self.run_task_process(command_r, done_w, stdout_file, stderr_file)
        os.close(command_r)
        os.close(done_w)
        os.set_blocking(done_r, False)
        return TaskProcess(pid, command_w, done_r, stdout_file, stderr_file, self.generation)

    def on_task_done(self, task):
        """A task process wrote its exit code: its output is complete, answer now. At end of
        file instead (a command's shell replaced the process), the answer waits for reap."""
        if task.done_fd is None:
            return  # reaped in the same round of events, and answered then
        try:
            code = os.read(task.done_fd, 1)
        except BlockingIOError:
            return
        self.stop_watching_done(task)
        if code and self.tasks.pop(task.pid, None) is task:
            self.answered_pids.add(task.pid)
            self.task_ended(task, code[0])

    def stop_watching_done(self, task):
        if task.done_fd is not None:
            self.selector.unregister(task.done_fd)
            os.close(task.done_fd)
            task.done_fd = None

    def task_ended(self, task, rc):
        try:
            rc, stdout, stderr = task.collect(rc)
        except OutputTooLarge as exc:
            self.log('warning', 'call %s: %s' % (task.call_id, exc))
            self.reply_error(task.call_id, 'output_too_large', str(exc))
            return
        self.log('debug', 'call %s finished: rc %d, %d bytes out, %d bytes err'
                 % (task.call_id, rc, len(stdout), len(stderr)))
        self.finish_task(task, rc, stdout, stderr)

    def reap(self):
        while self.tasks or self.child_pids or self.spare is not None or self.answered_pids or self.route_pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            child = self.child_pids.pop(pid, None)
            if child is not None:
                self.child_exited(child, status)
                continue
            route = self.route_pids.pop(pid, None)
            if route is not None:
                route.exited(self, status)
                continue
            if self.spare is not None and pid == self.spare.pid:
                self.log('debug', 'spare task process %d ended unused (status %d)' % (pid, status))
                self.spare.discard()
                self.spare = None
                continue
            if pid in self.answered_pids:
                self.answered_pids.discard(pid)
                continue
            task = self.tasks.pop(pid, None)
            if task is None:
                continue
            self.stop_watching_done(task)
            self.task_ended(task, Task.exit_status(status))

    def finish_task(self, task, rc, stdout, stderr):
        """Reply to the task's call, or first start its continuation if its condition holds."""
        result, body = {'rc': rc, 'stdout_len': len(stdout)}, stdout + stderr
        if task.before is not None:
            first, first_body, index = task.before
            result = dict(first, then=dict(result, ran=index, body_len=len(body)))
            body = first_body + body
        elif task.then:
            result['then'] = {'ran': None}
            for index, branch in enumerate(task.then):
                condition = branch['if']
                if not (rc == 0 and CONTINUATION_CONDITIONS[condition['kind']](stdout, condition)):
                    continue
                try:
                    self.prepare_module(branch['args'])
                    self.start_task(task.call_id, 'run_module', branch['args'], stdin=b'', emulate_tty=False,
                                    before=(dict(result, body_len=len(body)), body, index))
                    return
                except Exception as exc:
                    self.log('warning', 'call %s: its second module did not start: %s' % (task.call_id, exc))
                break
        if len(body) > MAX_BODY:
            self.reply_error(task.call_id, 'output_too_large', str(OutputTooLarge(len(body))))
            return
        self.reply(task.call_id, result, body)


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


# The zip put_zip_first last put first in this process. A task process forked after the
# parent put the same zip first has nothing to do: every package imported since was found
# through that zip's paths first.
zip_put_first = None


def put_zip_first(zip_path):
    """Put a module zip first on sys.path and on the path of every ansible and
    ansible_collections package already imported (from earlier zips). A zip holds everything
    its module needs, so the module's own imports must find this zip's copy first: another
    module's zip may hold a package of the same name (`ansible_collections`, a collection's
    `plugins.module_utils`) with other contents."""
    global zip_put_first
    if zip_put_first == zip_path and sys.path[0] == zip_path:
        return
    zip_put_first = zip_path
    if sys.path[0] != zip_path:
        if zip_path in sys.path:
            sys.path.remove(zip_path)
        sys.path.insert(0, zip_path)
    for name, module in list(sys.modules.items()):
        if not (name + '.').startswith(ZIP_PACKAGE_ROOTS):
            continue
        path = getattr(module, '__path__', None)
        if path is None:
            continue
        subdir = os.path.join(zip_path, *name.split('.'))
        if not path or path[0] != subdir:
            module.__path__ = [subdir] + [entry for entry in path if entry != subdir]


class ZipModules:
    """The agent's importer for module zips, ahead of zipimport on sys.meta_path. zipimport
    compiles a module's source on every import, and twice at that (once to name its file, once
    to run it): for the fifty-odd module_utils of a module zip, about 50 ms of CPU.

    While the agent prepares a zip (`preparing`), its own imports (the module_utils warm-up, the
    module's packages) read that zip here and compile each file once, and `compile_rest` then
    compiles every other source file of the zip: a collection's module_utils, which the module
    imports anew in each task process, take no compile there. Whatever was not compiled that
    way is left to zipimport, which finds the same file: the search follows the same paths."""

    def __init__(self):
        # Zip path -> the names of its members.
        self.members = {}
        # (zip path, member) -> code compiled while preparing, inherited by task processes.
        self.compiled = {}
        # (zip path, ZipFile) while the agent prepares that zip; never open across a fork.
        self.open_archive = None

    @contextlib.contextmanager
    def preparing(self, zip_path):
        archive = zipfile.ZipFile(zip_path)
        self.members[zip_path] = frozenset(archive.namelist())
        self.open_archive = (zip_path, archive)
        try:
            yield
        finally:
            self.open_archive = None
            archive.close()

    def compile_rest(self, zip_path):
        """Compile the zip's source files that are not imported yet (while preparing it)."""
        archive = self.open_archive[1]
        for member in sorted(self.members[zip_path]):
            if not member.endswith('.py') or (zip_path, member) in self.compiled:
                continue
            if module_name_of(member) in sys.modules:
                continue
            try:
                self.compiled[(zip_path, member)] = compile(
                    archive.read(member), os.path.join(zip_path, member), 'exec', dont_inherit=True)
            except (SyntaxError, ValueError):
                pass  # zipimport reports it where the module is imported

    def find_spec(self, fullname, path=None, target=None):
        relative = fullname.replace('.', '/')
        package_dir = os.path.dirname(relative)
        # The entries a path-based import would try, in its order, while they are our zips.
        for entry in sys.path if path is None else path:
            zip_path = self.zip_at(entry, package_dir)
            if zip_path is None:
                return None
            for member, is_package in ((relative + '/__init__.py', True), (relative + '.py', False)):
                if member in self.members[zip_path]:
                    return self.spec(fullname, zip_path, member, is_package)
        return None

    def zip_at(self, entry, package_dir):
        """The known zip whose `package_dir` directory `entry` is, or None. Every import of
        the interpreter and its tasks asks, the standard library's too: no scan of the zips."""
        if package_dir:
            suffix = '/' + package_dir
            if not entry.endswith(suffix):
                return None
            entry = entry[:-len(suffix)]
        return entry if entry in self.members else None

    def spec(self, fullname, zip_path, member, is_package):
        code = self.compiled.get((zip_path, member))
        if code is not None:
            loader = ZipSourceLoader(zip_path, member, code=code)
        elif self.open_archive is not None and self.open_archive[0] == zip_path:
            loader = ZipSourceLoader(zip_path, member, source=self.open_archive[1].read(member))
        else:
            return None
        spec = importlib.util.spec_from_loader(fullname, loader, origin=loader.path, is_package=is_package)
        spec.has_location = True
        if is_package:
            spec.submodule_search_locations.append(os.path.dirname(loader.path))
        return spec


class ZipSourceLoader:
    """One module of a module zip, with the file name and source zipimport would give it."""

    def __init__(self, zip_path, member, source=None, code=None):
        self.zip_path = zip_path
        self.member = member
        self.path = os.path.join(zip_path, member)
        # Dropped once the module has run: the loader lives as long as its module.
        self.source = source
        # Compiled ahead of the import, when the agent prepared the zip.
        self.code = code

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        code = self.get_code(module.__name__)
        self.source = None
        exec(code, module.__dict__)

    def get_code(self, fullname):
        if self.code is not None:
            return self.code
        return compile(self.source_bytes(), self.path, 'exec', dont_inherit=True)

    def get_source(self, fullname):
        """For tracebacks (linecache) and the agent's scan of a module's imports."""
        return importlib.util.decode_source(self.source_bytes())

    def source_bytes(self):
        if self.source is not None:
            return self.source
        # A fresh handle each time: a task process forked from the agent must not share a
        # file offset with it.
        with zipfile.ZipFile(self.zip_path) as archive:
            return archive.read(self.member)


def module_name_of(member):
    """The dotted name of the module in zip member `a/b/__init__.py` or `a/b/c.py`."""
    path = member[:-len('/__init__.py')] if member.endswith('/__init__.py') else member[:-len('.py')]
    return path.replace('/', '.')


def module_utils_in_zip(members):
    """Dotted names of the ansible.module_utils modules among a module zip's members, packages
    first."""
    names = [module_name_of(member) for member in members
             if member.startswith('ansible/module_utils/') and member.endswith('.py')]
    return sorted(names, key=lambda name: (name.count('.'), name))


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


# -- connection delegation (mitogen_via) -------------------------------------------------------
# The mux reaches a target behind this host by asking this agent to start that target's
# transport here (argv built by the mux) and relay its stdio as route frames.

ROUTE_FRAMES = ('route_open', 'route_data', 'route_close')
ROUTE_READ = 1 << 16
ROUTE_STDERR_TAIL = 4096


class RouteStream:
    """The selector's tag of one of a route's output pipes."""

    def __init__(self, route, fd, name):
        self.route = route
        self.fd = fd
        self.name = name


class Route:
    """A next hop's transport, started in a session of its own with piped stdio."""

    def __init__(self, number, argv):
        self.number = number
        self.stderr = bytearray()
        self.status = None
        self.open_streams = 2
        stdin_r, self.stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.setsid()
                for fd, target in ((stdin_r, 0), (stdout_w, 1), (stderr_w, 2)):
                    os.dup2(fd, target)
                os.execvp(argv[0], argv)
            except Exception as exc:
                os.write(2, ('cannot run %r: %s\n' % (argv[0], exc)).encode())
            os._exit(127)
        for fd in (stdin_r, stdout_w, stderr_w):
            os.close(fd)
        # Writes to the next hop block this agent while its pipe is full: make that rare.
        for fd in (self.stdin_w, stdout_r):
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, TRANSFER_WINDOW)
            except (OSError, ValueError):
                pass
        self.streams = [RouteStream(self, stdout_r, 'stdout'), RouteStream(self, stderr_r, 'stderr')]
        for stream in self.streams:
            os.set_blocking(stream.fd, False)

    def write(self, data):
        if self.stdin_w is not None:
            try:
                write_all(self.stdin_w, data)
            except OSError:
                self.close_input()

    def close_input(self):
        if self.stdin_w is not None:
            os.close(self.stdin_w)
            self.stdin_w = None

    def on_output(self, agent, stream):
        try:
            data = os.read(stream.fd, ROUTE_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b''
        if not data:
            agent.selector.unregister(stream.fd)
            os.close(stream.fd)
            self.open_streams -= 1
            self.maybe_closed(agent)
        elif stream.name == 'stdout':
            agent.channel.send({'type': 'route_data', 'route': self.number}, data)
        else:
            self.stderr += data
            del self.stderr[:-ROUTE_STDERR_TAIL]

    def exited(self, agent, status):
        self.status = status
        self.close_input()
        self.maybe_closed(agent)

    def maybe_closed(self, agent):
        if self.status is None or self.open_streams:
            return
        frame = {'type': 'route_closed', 'route': self.number,
                 'stderr': self.stderr.decode('utf-8', 'replace')}
        if os.WIFEXITED(self.status):
            frame['status'] = os.WEXITSTATUS(self.status)
        elif os.WIFSIGNALED(self.status):
            frame['signal'] = os.WTERMSIG(self.status)
        agent.routes.pop(self.number, None)
        agent.channel.send(frame)

    def stop(self):
        self.close_input()
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except OSError:
            pass


def on_route_frame(agent, kind, header, body):
    number = header.get('route')
    if kind == 'route_open':
        try:
            route = Route(number, [str(arg) for arg in header.get('argv') or ()])
        except Exception as exc:
            agent.channel.send({'type': 'route_closed', 'route': number, 'error': str(exc), 'stderr': ''})
            return
        agent.log('debug', 'route %s: started %s (pid %d)' % (number, header['argv'][0], route.pid))
        agent.routes[number] = route
        agent.route_pids[route.pid] = route
        for stream in route.streams:
            agent.selector.register(stream.fd, selectors.EVENT_READ, stream)
        route.write(body)
        return
    route = agent.routes.get(number)
    if route is None:
        return
    if kind == 'route_data':
        route.write(body)
    else:
        route.close_input()


def stop_routes(agent):
    for route in agent.routes.values():
        route.stop()


def main():
    show_process_title(process_title())
    try:
        agent = Agent()
    except Exception as exc:
        sys.stderr.write('ferrogen agent failed to start: %s\n' % (exc,))
        raise SystemExit(1) from None
    try:
        agent.run()
    except Exception:
        traceback.print_exc()
        agent.shutdown(1)


if __name__ == '__main__':
    main()

"""Streamed puts and fetches, and the digests of received files."""

import collections
import fcntl
import hashlib
import os
import re
import stat
import sys

from ansible_ferrogen.atomic_files import AtomicFile
from ansible_ferrogen.frames import TRANSFER_CHUNK


# How many streamed uploads' digests the interpreter keeps for modules that hash them again.
RECEIVED_DIGESTS_KEPT = 32

# A task output larger than this goes out as a stream (OutputSpool), not in its reply's body.
STREAMED_OUTPUT_MIN = 1 << 20

# How many streamed task outputs wait for their worker to fetch them; beyond, the oldest goes.
SPOOLS_KEPT = 4


# File transfer (docs/protocol.md, "File transfer"); its limits are in the shared block above.
F_SETPIPE_SZ = getattr(fcntl, 'F_SETPIPE_SZ', 1031)


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
        # Every chunk is read into this one buffer: a fresh megabyte per chunk costs more in
        # page faults than its copy to the link.
        self.buffer = bytearray(TRANSFER_CHUNK)

    def read_chunk(self):
        """The next chunk, hashed, as a view of the buffer (valid until the next call); empty
        at the end of the file."""
        view = memoryview(self.buffer)
        size = os.readv(self.fd, [view])
        self.digest.update(view[:size])
        return view[:size]

    def abort(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class OutputSpool(FetchTransfer):
    """A task's output too large for one frame, sent like a fetched file (fetch_begin with
    `output`) from the files it was written to, a chunk at a time: `prefix` (the output of
    the task a continuation follows), then each file from its start. With `crlf` the first
    file is a terminal's merged output, each newline sent as CRLF, as over ssh -tt."""

    def __init__(self, prefix, files, crlf):
        self.prefix = prefix
        self.files = list(files)
        self.crlf = crlf
        for handle in self.files:
            handle.seek(0)
        sizes = [os.fstat(handle.fileno()).st_size for handle in self.files]
        if crlf and self.files:
            sizes[0] += self._count_newlines(self.files[0])
        self.stdout_len = sizes[0] if sizes else 0
        self.size = len(prefix) + sum(sizes)
        self.mode = None
        self.sent = 0
        self.acked = 0
        self.digest = hashlib.sha1()

    @staticmethod
    def _count_newlines(handle):
        count = 0
        while True:
            block = handle.read(STREAMED_OUTPUT_MIN)
            if not block:
                handle.seek(0)
                return count
            count += block.count(b'\n')

    def read_chunk(self):
        data = self._next(TRANSFER_CHUNK)
        self.digest.update(data)
        return data

    def _next(self, size):
        if self.prefix:
            data, self.prefix = self.prefix[:size], self.prefix[size:]
            return data
        while self.files:
            handle = self.files[0]
            if self.crlf:
                data = handle.read(size // 2).replace(b'\n', b'\r\n')
            else:
                data = handle.read(size)
            if data:
                return data
            handle.close()
            self.files.pop(0)
            self.crlf = False
        return b''

    def abort(self):
        for handle in self.files:
            handle.close()
        self.files = []

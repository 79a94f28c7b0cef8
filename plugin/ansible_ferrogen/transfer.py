"""File transfer on the worker side (docs/protocol.md, "File transfer").

Small files (up to frames.SMALL_FILE_LIMIT) ride in one `put_file` call. Larger ones stream: a
`put_begin` call naming the file, which the mux reads and sends in chunks itself, then
`put_end` with its size and SHA-1 from this process. A fetch streams the other way: `chunk`
frames, each acknowledged by this process. Whatever this process receives goes to a hidden
temp file in the destination directory that is fsync'd and renamed over the destination
(AtomicFile).
"""

from __future__ import annotations

import hashlib
import os
import select
import stat
import threading
import time
from collections.abc import Callable

from ansible_ferrogen import atomic_files, frames
from ansible_ferrogen.client import StreamError

# How much of a file this process hashes between looks at the mux's acks.
CHUNK = 1 << 20

# How often a long transfer reports progress (display.vvv).
PROGRESS_INTERVAL = 1.0

# Reads of a file hashed ahead: large, because a hashing thread waits for the GIL after each
# read and each update while the worker's main thread builds modules.
HASH_READ = 16 << 20

# The digests the copy module reports of its upload, besides SHA-1 (its `md5sum`).
EXTRA_DIGESTS = ('md5',)


class AtomicFile(atomic_files.AtomicFile):
    """A local file being received (atomic_files.AtomicFile), its directory swept of dead
    writers' temp files every time: a worker is short-lived, and one loop may fetch into the
    same directory again after a writer died. Besides its SHA-1 it hashes what it receives with
    EXTRA_DIGESTS, for the fetch action (FETCHED)."""

    def __init__(self, path: str):
        super().__init__(path, sweep=atomic_files.sweep_directory_of)
        self.extra_digests = {}
        for name in EXTRA_DIGESTS:
            try:
                self.extra_digests[name] = hashlib.new(name)
            except ValueError:
                pass  # a FIPS build has no MD5; the fetch action then reports none either

    def write(self, data) -> None:
        super().write(data)
        for digest in self.extra_digests.values():
            digest.update(data)

    def digests(self) -> dict[str, str]:
        found = {name: digest.hexdigest() for name, digest in self.extra_digests.items()}
        return dict(found, sha1=self.digest.hexdigest())


# Files this worker fetched, by real path: (file_identity, digests of what was received). The
# fetch action hashes the file it fetched again, twice (SHA-1, then MD5); an entry answers it
# while the path holds the file written.
FETCHED: dict[str, tuple[tuple[int, int, int, int], dict[str, str]]] = {}


def record_fetched(path: str, digests: dict[str, str]) -> None:
    real = os.path.realpath(path)
    FETCHED[real] = (file_identity(os.stat(real)), digests)


def fetched_digest(filename, name: str) -> str | None:
    """The digest name of filename as it was fetched, if it still holds what was received."""
    real = os.path.realpath(os.fsdecode(filename))
    entry = FETCHED.get(real)
    if entry is None or name not in entry[1]:
        return None
    try:
        unchanged = file_identity(os.stat(real)) == entry[0]
    except OSError:
        unchanged = False
    if not unchanged:
        del FETCHED[real]
        return None
    return entry[1][name]


def fetched_digests_or(secure_hash, md5):
    """Wrap the fetch action's secure_hash(filename, hash_func) and md5(filename): a file this
    worker fetched is answered from its stream's digests."""

    def fetched_secure_hash(filename, hash_func=hashlib.sha1):
        try:
            name = hash_func().name
        except Exception:  # noqa: BLE001 - not a hashlib constructor: Ansible's own code decides
            name = None
        found = fetched_digest(filename, name) if name else None
        return found if found is not None else secure_hash(filename, hash_func)

    def fetched_md5(filename):
        found = fetched_digest(filename, 'md5')
        return found if found is not None else md5(filename)

    fetched_secure_hash.ferrogen_fetched = fetched_md5.ferrogen_fetched = True
    return fetched_secure_hash, fetched_md5


def install_fetched_digests(action_module) -> None:
    """Patch the fetch action's module (ansible_internals: fetch_digests_from_stream)."""
    if not getattr(action_module.secure_hash, 'ferrogen_fetched', False):
        action_module.secure_hash, action_module.md5 = fetched_digests_or(action_module.secure_hash,
                                                                          action_module.md5)


class OutputSink:
    """A task output being fetched (fetch_stream), held in memory: Ansible takes it as bytes."""

    def __init__(self):
        self.data = bytearray()
        self.digest = hashlib.sha1()

    @property
    def size(self) -> int:
        return len(self.data)

    def write(self, data: bytes) -> None:
        self.data += data
        self.digest.update(data)


def fetched_mode(path: str, new_mode: int) -> int:
    """The mode vanilla's fetch would leave at path: an existing file keeps its mode (sftp's
    `get` and shutil.copyfile both write into it), a new one gets new_mode less the umask
    (the remote file's mode for sftp, 0o666 for copyfile)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        pass
    umask = os.umask(0)
    os.umask(umask)
    return new_mode & 0o777 & ~umask


class Progress:
    """Calls report(done, total, rate) at most once per PROGRESS_INTERVAL, and at the end."""

    def __init__(self, total: int | None, report: Callable[[int, int | None, float], None] | None):
        self.total = total
        self.report = report
        self.started = time.monotonic()
        self.last = self.started

    def update(self, done: int, final: bool = False) -> None:
        if self.report is None:
            return
        now = time.monotonic()
        if final or now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self.report(done, self.total, done / max(now - self.started, 1e-6))


def file_identity(info: os.stat_result) -> tuple[int, int, int, int]:
    """What stays the same while a file holds the same content."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


class DigestsAhead:
    """A controller file's SHA-1, hashed in a thread while the worker does other work, and the
    copy module's other digests, each hashed in a thread of its own once the upload starts
    (the mux then reads the file, and this worker has nothing else to do); see speculation.py.
    """

    def __init__(self, path: str):
        self.path = path
        self.identity = file_identity(os.stat(path))
        self.cancelled = False
        self.digests: dict[str, str] = {}
        self.threads: dict[str, threading.Thread] = {}
        self._start('sha1')

    def _start(self, name: str) -> None:
        try:
            digest = hashlib.new(name)
        except ValueError:
            return  # a FIPS build has no MD5; the module then reports none either
        thread = threading.Thread(target=self._hash, args=(name, digest), daemon=True, name=f'ferrogen-{name}-ahead')
        thread.start()
        self.threads[name] = thread

    def _hash(self, name: str, digest) -> None:
        buffer = bytearray(HASH_READ)
        try:
            with open(self.path, 'rb', buffering=0) as handle, memoryview(buffer) as view:
                while not self.cancelled:
                    size = handle.readinto(view)
                    if not size:
                        self.digests[name] = digest.hexdigest()
                        return
                    digest.update(view[:size])
        except OSError:
            pass

    def result(self, only_sha1: bool = False) -> dict[str, str] | None:
        """The SHA-1 once hashed, and unless only_sha1 the other digests (hashed from this first
        call without only_sha1 on); None if the file changed meanwhile or could not be read (the
        caller then hashes it itself)."""
        if not only_sha1:
            for name in EXTRA_DIGESTS:
                if name not in self.threads:
                    self._start(name)
        for name in ['sha1'] if only_sha1 else list(self.threads):
            self.threads[name].join()
        try:
            unchanged = file_identity(os.stat(self.path)) == self.identity
        except OSError:
            return None
        return dict(self.digests) if unchanged and 'sha1' in self.digests else None

    def cancel(self) -> None:
        self.cancelled = True


# The files being hashed ahead in this worker, by real path.
DIGESTS_AHEAD: dict[str, DigestsAhead] = {}


def digests_ahead_of(path: str, only_sha1: bool = False) -> dict[str, str] | None:
    """The digests hashed ahead of path, if it is being hashed and has not changed."""
    ahead = DIGESTS_AHEAD.get(os.path.realpath(path))
    return None if ahead is None else ahead.result(only_sha1)


def sha1_ahead_or(hash_file):
    """Wrap ansible.utils.hashing.checksum: a file hashed ahead is answered from that."""

    def checksum(filename, *args, **kwargs):
        if not args and not kwargs:
            digests = digests_ahead_of(os.fsdecode(filename), only_sha1=True)
            if digests is not None:
                return digests['sha1']
        return hash_file(filename, *args, **kwargs)

    checksum.ferrogen_hashed_ahead = True
    return checksum


def _pending(sock) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def _follow(client, call_id: int, progress: Progress, wait: bool) -> dict | None:
    """Take the mux's frames for call_id, its acks as progress, and return the reply's header.
    wait: block until the reply comes, else take only what is pending (None if no reply)."""
    while wait or _pending(client.sock):
        header, _ = client.read()
        if header.get('id') != call_id:
            continue
        if header.get('type') == 'ack':
            progress.update(int(header.get('bytes') or 0))
        elif header.get('type') == 'reply':
            return header
    return None


def put_stream(client, request: dict, source, size: int, report=None) -> dict:
    """Stream an open file to the target; return the reply's result (raises MuxError).

    The mux reads the file itself (put_begin names it, with the device and inode this worker
    opened); this worker sends put_end with the size and SHA-1, which it hashes meanwhile
    unless the file is being hashed ahead (DigestsAhead: the agent checks the SHA-1 against
    what it received and keeps the other digests for a module that asks).
    """
    info = os.fstat(source.fileno())
    path = os.path.abspath(os.fsdecode(source.name))
    call_id = client.next_id()
    args = dict(request['args'], source={'path': path, 'dev': info.st_dev, 'ino': info.st_ino})
    client.send(frames.encode(dict(request, args=args, id=call_id, op='put_begin', blobs=[])))
    progress = Progress(size, report)
    reply = None
    digests = digests_ahead_of(path)
    if digests is None:
        digest = hashlib.sha1()
        while reply is None and (data := source.read(CHUNK)):
            digest.update(data)
            reply = _follow(client, call_id, progress, wait=False)
        digests = {'sha1': digest.hexdigest()}
    if reply is None:
        end = {'type': 'put_end', 'id': call_id, 'size': size, 'sha1': digests['sha1']}
        if len(digests) > 1:
            end['digests'] = {name: value for name, value in digests.items() if name != 'sha1'}
        client.send(frames.encode(end))
        reply = _follow(client, call_id, progress, wait=True)
    elif reply.get('ok'):
        raise StreamError('put finished before put_end')
    result = client.result(reply)
    progress.update(size, final=True)
    return result


def fetch_stream(client, request: dict, sink: AtomicFile, report=None) -> dict:
    """Receive a streamed fetch into sink (not committed); return the reply's result."""
    call_id = client.next_id()
    request = dict(request, id=call_id, op='fetch_begin', blobs=[])
    client.send(frames.encode(request))
    progress: Progress | None = None
    while True:
        header, body = client.read()
        if header.get('id') != call_id:
            continue
        if header.get('type') == 'chunk':
            if header.get('offset') != sink.size:
                raise StreamError(f'chunk at offset {header.get("offset")}, expected {sink.size}')
            if progress is None:
                progress = Progress(header.get('size'), report)
            sink.write(body)
            client.send(frames.encode({'type': 'ack', 'id': call_id, 'bytes': sink.size}))
            progress.update(sink.size)
        elif header.get('type') == 'reply':
            result = client.result(header)
            if result.get('size') != sink.size or result.get('sha1') != sink.digest.hexdigest():
                raise StreamError(f'received {sink.size} bytes with SHA-1 {sink.digest.hexdigest()}, the target '
                                  f'sent {result.get("size")} bytes with SHA-1 {result.get("sha1")}')
            if progress is not None:
                progress.update(sink.size, final=True)
            return result

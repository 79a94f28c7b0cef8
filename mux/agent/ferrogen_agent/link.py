"""The framed link to the mux: the channel on the original stdin/stdout, and its compression."""

import fcntl
import os
import select
import struct
import sys
import zlib

from ansible_ferrogen.frames import FRAME_PREFIX, TRANSFER_CHUNK, encode_frame, frame_head, parse_header, take_frame
from .settings import COMPRESS_LINK
from .transfers import F_SETPIPE_SZ


SEGMENT_PREFIX = struct.Struct('>H')
SEGMENT_FLAG = 0x8000
SEGMENT_MAX = 0x7fff
# A segment of up to SHORT_SEGMENT_MAX bytes behind one byte: a loop item's reply.
SHORT_SEGMENT_FLAG = 0x40
SHORT_SEGMENT_MAX = 0x3f
# Frames with a body of PROBE_MIN_BODY bytes or more deflate on a stream of their own at the
# fastest level, in pieces of at most BULK_PIECE_MAX bytes behind BULK_TAG and their length.
BULK_TAG = 0x4
BULK_PREFIX = struct.Struct('>BH')
BULK_PIECE_MAX = 0xffff
PROBE_MIN_BODY = 4096
PROBE_SAMPLE = 4096
PROBE_PERCENT = 90
# A patch of the last frame (worker-ipc/src/compression.rs): tag, start, bytes removed, bytes
# inserted, then those bytes; it patches a frame of at most PATCH_BASE_MAX bytes.
PATCH_TAG = 0x2
PATCH_PREFIX = struct.Struct('>BHHB')
PATCH_BASE_MAX = 16384
# The last frame read with the number whose digits start `back` bytes before the end of its
# header one more (worker-ipc/src/compression.rs): the next call of a loop.
INCREMENT_TAG = 0x3
INCREMENT_PREFIX = struct.Struct('>BB')
# The channel reads the pipe READ_PIECE bytes at a time, and the rest of a chunk frame with a
# body of DIRECT_BODY_MIN bytes or more straight into the body's own buffer (DirectBody).
READ_PIECE = 1 << 16
DIRECT_BODY_MIN = 1 << 16
# Small frames take the best level: a reply's few fresh digits then fit ssh's next smaller
# packet, at a cost of microseconds. Bulk data takes the fastest.
SMALL_FRAME_LEVEL = 9
BULK_LEVEL = 1
# Z_PARTIAL_FLUSH, as ssh's compression flushes: a few bits per flush where a sync flush costs
# four bytes.
LINK_FLUSH = getattr(zlib, 'Z_PARTIAL_FLUSH', zlib.Z_SYNC_FLUSH)


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
        self.deflater = small_frame_stream() if COMPRESS_LINK else None
        self.bulk_deflater = zlib.compressobj(BULK_LEVEL, zlib.DEFLATED, -15) if COMPRESS_LINK else None
        # Kept for every probe: a compressor's set-up costs as much as deflating the samples.
        self.probe = zlib.compressobj(BULK_LEVEL, zlib.DEFLATED, -15)
        self.inflater = zlib.decompressobj(-15)
        self.inflated = bytearray()
        # The large chunk frame whose body is being read into a buffer of its own.
        self.direct = None
        # The encoding of the last frame read, which a patch from the mux applies to (None after
        # one larger than PATCH_BASE_MAX).
        self.last_frame = None

    def send(self, header, body=b''):
        """Send one frame; body may be any bytes-like object (a memoryview of a buffer the caller
        reuses: it is written, or deflated, before this returns)."""
        if self.deflater is not None and len(body) < PROBE_MIN_BODY:
            data = self.deflater.compress(encode_frame(header, body)) + self.deflater.flush(LINK_FLUSH)
            write_all(self.wfd, segments(data))
        elif self.deflater is not None and worth_compressing(body, self.probe):
            bulk = self.bulk_deflater
            write_all(self.wfd, bulk_pieces(bulk.compress(encode_frame(header, body)) + bulk.flush(LINK_FLUSH)))
        elif len(body) < PROBE_MIN_BODY:
            write_all(self.wfd, encode_frame(header, body))
        else:
            # Head and body in one write, without joining them: a chunk's body is a megabyte.
            write_all_of(self.wfd, [frame_head(header, len(body)), body])

    def read_available(self):
        """Read what the pipe holds; return the complete frames, or None at end of stream."""
        frames = []
        while True:
            if self.direct is not None:
                whole = self.direct.fill(self.rfd)
                if whole is None:
                    return None
                if not whole:
                    return frames
                frames.append(self.direct.frame())
                self.direct = None
                self.last_frame = None
            read = read_piece(self.rfd, self.inbuf)
            if read is None:
                return None
            self.take_frames(frames)
            if self.direct is None and read < READ_PIECE:
                return frames

    def take_frames(self, frames):
        """Append the complete frames at the start of inbuf to frames; start a DirectBody where
        inbuf ends inside a large chunk frame."""
        inbuf = self.inbuf
        while inbuf:
            if inbuf[0] == PATCH_TAG:
                if not self.take_patch(inbuf, frames):
                    break
                continue
            if inbuf[0] == INCREMENT_TAG:
                if not self.take_increment(inbuf, frames):
                    break
                continue
            prefix, size = segment_size(inbuf)
            if prefix is None:
                if self.inflated:
                    raise ValueError('a plain frame inside a compressed one')
                frame = self.take_frame(inbuf)
                if frame is None:
                    self.direct = DirectBody.start(inbuf)
                    break
                frames.append(frame)
                continue
            if not prefix:
                break
            end = prefix + size
            if len(inbuf) < end:
                break
            # At most 1032 bytes per byte of deflate data; take_frame checks each frame's
            # lengths as soon as its prefix is inflated.
            self.inflated += self.inflater.decompress(bytes(inbuf[prefix:end]))
            del inbuf[:end]
            frame = self.take_frame(self.inflated)
            while frame is not None:
                frames.append(frame)
                frame = self.take_frame(self.inflated)

    def take_frame(self, buffer):
        """take_frame(buffer), keeping the frame's encoding as the one a patch applies to."""
        encoding = None
        if len(buffer) >= FRAME_PREFIX.size:
            end = FRAME_PREFIX.size + sum(FRAME_PREFIX.unpack_from(buffer))
            encoding = bytes(buffer[:end]) if end <= min(len(buffer), PATCH_BASE_MAX) else None
        frame = take_frame(buffer)
        if frame is not None:
            self.last_frame = encoding
        return frame

    def take_increment(self, inbuf, frames):
        """Take the increment at the start of inbuf, and the frame it makes."""
        if len(inbuf) < INCREMENT_PREFIX.size:
            return False
        if self.inflated:
            raise ValueError('an increment inside a compressed frame')
        back = INCREMENT_PREFIX.unpack_from(inbuf)[1]
        made = incremented(self.last_frame, back) if self.last_frame is not None else None
        if made is None:
            raise ValueError('an increment of no frame, or of no number in its header')
        del inbuf[:INCREMENT_PREFIX.size]
        frames.append(self.take_frame(made))
        return True

    def take_patch(self, inbuf, frames):
        """Take the patch at the start of inbuf, and the frame it makes, if it is complete."""
        if len(inbuf) < PATCH_PREFIX.size:
            return False
        _, start, removed, size = PATCH_PREFIX.unpack_from(inbuf)
        end = PATCH_PREFIX.size + size
        if len(inbuf) < end:
            return False
        if self.inflated:
            raise ValueError('a patch inside a compressed frame')
        last = self.last_frame
        if last is None or start + removed > len(last):
            raise ValueError('a patch of no frame, or past its end')
        patched = bytearray(last[:start] + inbuf[PATCH_PREFIX.size:end] + last[start + removed:])
        del inbuf[:end]
        frame = self.take_frame(patched)
        if frame is None or patched:
            raise ValueError('a patch that makes no whole frame')
        frames.append(frame)
        return True


class DirectBody:
    """A put chunk's body read straight into a buffer of its own, which goes to the transfer as
    it is: through inbuf, each of its megabytes would be copied twice more on the way."""

    def __init__(self, header, buffer, filled):
        self.header = header
        self.buffer = buffer
        self.view = memoryview(buffer)
        self.filled = filled

    @classmethod
    def start(cls, inbuf):
        """A DirectBody for the incomplete frame that is all inbuf holds, moved out of inbuf, if
        it is a chunk frame with a body of at least DIRECT_BODY_MIN bytes; else None."""
        if len(inbuf) < FRAME_PREFIX.size:
            return None
        header_len, body_len = FRAME_PREFIX.unpack_from(inbuf)
        body_start = FRAME_PREFIX.size + header_len
        if body_len < DIRECT_BODY_MIN or len(inbuf) < body_start:
            return None
        header = parse_header(inbuf[FRAME_PREFIX.size:body_start])
        if header.get('type') != 'chunk':
            return None
        buffer = bytearray(body_len)
        filled = len(inbuf) - body_start
        buffer[:filled] = memoryview(inbuf)[body_start:]
        del inbuf[:]
        return cls(header, buffer, filled)

    def fill(self, fd):
        """Read the rest of the body from the non-blocking fd: True once whole, False when fd
        has nothing more for now, None at end of stream."""
        while self.filled < len(self.buffer):
            try:
                read = os.readv(fd, [self.view[self.filled:]])
            except BlockingIOError:
                return False
            except InterruptedError:
                continue
            if not read:
                return None
            self.filled += read
        return True

    def frame(self):
        self.view.release()
        return self.header, self.buffer


def small_frame_stream():
    """The deflate stream of the frames with a small body, kept for the life of the link."""
    return zlib.compressobj(SMALL_FRAME_LEVEL, zlib.DEFLATED, -15)


def segment_size(inbuf):
    """(prefix size, deflate bytes) of the segment at the start of inbuf: (0, 0) until its
    prefix is whole, (None, 0) for a plain frame."""
    first = inbuf[0]
    if first & 0x80:
        if len(inbuf) < SEGMENT_PREFIX.size:
            return 0, 0
        prefix, size = SEGMENT_PREFIX.size, SEGMENT_PREFIX.unpack_from(inbuf)[0] & SEGMENT_MAX
    elif first & SHORT_SEGMENT_FLAG:
        prefix, size = 1, first & SHORT_SEGMENT_MAX
    else:
        return None, 0
    if not size:
        raise ValueError('empty compressed segment')
    return prefix, size


def segments(deflated):
    """Deflate data cut into segments of at most SEGMENT_MAX bytes, each behind its prefix."""
    pieces = []
    for start in range(0, len(deflated), SEGMENT_MAX):
        piece = deflated[start:start + SEGMENT_MAX]
        if len(piece) <= SHORT_SEGMENT_MAX:
            pieces += (bytes((SHORT_SEGMENT_FLAG | len(piece),)), piece)
        else:
            pieces += (SEGMENT_PREFIX.pack(SEGMENT_FLAG | len(piece)), piece)
    return b''.join(pieces)


def bulk_pieces(deflated):
    """Bulk stream data cut into pieces of at most BULK_PIECE_MAX bytes, each behind its prefix."""
    pieces = []
    for start in range(0, len(deflated), BULK_PIECE_MAX):
        piece = deflated[start:start + BULK_PIECE_MAX]
        pieces += (BULK_PREFIX.pack(BULK_TAG, len(piece)), piece)
    return b''.join(pieces)


def incremented(frame, back):
    """frame (an encoding) with the decimal number whose digits start `back` bytes before the end
    of its header one more, and its header length one more if the number gains a digit; None
    where no number of the header starts there (worker-ipc/src/compression.rs, `incremented`)."""
    header_len = FRAME_PREFIX.unpack_from(frame)[0]
    header_end = FRAME_PREFIX.size + header_len
    start = header_end - back
    if start < FRAME_PREFIX.size or back == 0 or header_end > len(frame) or frame[start - 1:start].isdigit():
        return None
    end = start
    while end < header_end and frame[end:end + 1].isdigit():
        end += 1
    if end == start:
        return None
    number = str(int(frame[start:end]) + 1).encode()
    grown = len(number) - (end - start)
    return bytearray(FRAME_PREFIX.pack(header_len + grown, FRAME_PREFIX.unpack_from(frame)[1])
                     + frame[FRAME_PREFIX.size:start] + number + frame[end:])


def worth_compressing(body, probe):
    """Whether a frame with this body is sent compressed: always for a small one (its header
    repeats an earlier one's), and for a larger one when BULK_LEVEL shrinks three samples of it.
    probe is a compressor at BULK_LEVEL; a full flush after each sample leaves it as new."""
    if len(body) < PROBE_MIN_BODY:
        return True
    size = deflated = 0
    for start in (0, len(body) // 2 - PROBE_SAMPLE // 2, len(body) - PROBE_SAMPLE):
        sample = body[start:start + PROBE_SAMPLE]
        deflated += len(probe.compress(sample)) + len(probe.flush(zlib.Z_FULL_FLUSH))
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


def read_piece(fd, inbuf, size=READ_PIECE):
    """Append at most size bytes from the non-blocking fd to inbuf: how many (0 when fd has
    nothing for now), or None at end of stream."""
    while True:
        try:
            chunk = os.read(fd, size)
        except BlockingIOError:
            return 0
        except InterruptedError:
            continue
        if not chunk:
            return None
        inbuf += chunk
        return len(chunk)


def read_raw(fd, inbuf):
    """Drain a non-blocking fd into inbuf; False at end of stream."""
    while True:
        read = read_piece(fd, inbuf, 1 << 20)
        if read is None:
            return False
        if read < (1 << 20):
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


def write_all(fd, data):
    """Write everything, waiting when fd is non-blocking (a pty master shares its flags)."""
    write_all_of(fd, [data])


def write_all_of(fd, pieces):
    """Write the pieces (bytes-like), in order and in as few writes as the fd takes, waiting
    when fd is non-blocking."""
    views = [memoryview(piece).cast('B') for piece in pieces if len(piece)]
    while views:
        try:
            written = os.writev(fd, views)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except InterruptedError:
            continue
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]

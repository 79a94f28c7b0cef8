"""The framed link to the mux: the channel on the original stdin/stdout, and its compression."""

import fcntl
import os
import select
import struct
import sys
import zlib

from ansible_ferrogen.frames import TRANSFER_CHUNK, encode_frame, take_frame
from .settings import COMPRESS_LINK
from .transfers import F_SETPIPE_SZ


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

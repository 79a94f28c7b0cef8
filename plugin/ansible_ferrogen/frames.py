"""The frame format shared with ferrogen-mux (docs/protocol.md), for the worker and the agent.

The agent runs this module too (mux/agent/parts.txt puts it into the agent's bootstrap blob):
it keeps to the standard library and to the agent's oldest Python (3.6), and imports nothing
of the plugin.
"""

import json
import struct

# -- Names and limits shared with the mux (docs/protocol.md) ---------------------------------
# worker-ipc's tests/python_names.rs reads this block and fails when it differs from the Rust
# side (PROTOCOL_VERSION and the limits in worker-ipc/src/lib.rs, ErrorKind); the agent's ops
# are its `op_<name>` methods (mux/agent/ferrogen_agent/ops.py).
PROTOCOL_VERSION = 1
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
NO_INTERPRETER = 'no_interpreter'
NOT_FOUND = 'not_found'
OTHER_INTERPRETER = 'other_interpreter'
UNREACHABLE = 'unreachable'
# -- end of the names and limits shared with the mux -----------------------------------------

FRAME_PREFIX = struct.Struct('>II')


class FrameError(ValueError):
    """The peer sent something that is not a valid frame."""


def encode_frame(header, body=b''):
    """One frame: lengths, JSON header, body (the agent's replies, whose sizes its ops bound)."""
    return frame_head(header, len(body)) + body


def frame_head(header, body_len):
    """What comes before a frame's body of body_len bytes: lengths and JSON header."""
    encoded = json.dumps(header, separators=(',', ':')).encode('utf-8')
    return FRAME_PREFIX.pack(len(encoded), body_len) + encoded


def encode(header, body=b''):
    """One frame, refused (FrameError) if the mux would refuse it."""
    frame = encode_frame(header, body)
    header_len = len(frame) - FRAME_PREFIX.size - len(body)
    if header_len > MAX_HEADER or len(body) > MAX_BODY:
        raise FrameError('frame too large: header %d bytes, body %d bytes' % (header_len, len(body)))
    return frame


def take_frame(inbuf):
    """Take the first frame out of the bytearray inbuf as (header, body), or None if it is not
    complete."""
    if len(inbuf) < FRAME_PREFIX.size:
        return None
    header_len, body_len = FRAME_PREFIX.unpack_from(inbuf)
    if header_len > MAX_HEADER or body_len > MAX_BODY:
        raise FrameError('frame too large: header %d body %d' % (header_len, body_len))
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


def decode(data):
    """Decode the frame at the start of data, checked; return (header, body, bytes consumed)."""
    if len(data) < FRAME_PREFIX.size:
        raise FrameError('truncated frame prefix')
    header_len, body_len = FRAME_PREFIX.unpack_from(data)
    _check_lengths(header_len, body_len)
    end = FRAME_PREFIX.size + header_len + body_len
    if len(data) < end:
        raise FrameError('truncated frame')
    header = parse_header(data[FRAME_PREFIX.size:FRAME_PREFIX.size + header_len])
    return header, data[FRAME_PREFIX.size + header_len:end], end


def read_frame(recv):
    """Read one checked frame through recv(n), which returns at most n bytes and b'' at the end
    (a blocking socket's recv, a pipe's read); EOFError at the end."""
    header_len, body_len = FRAME_PREFIX.unpack(_read_exactly(recv, FRAME_PREFIX.size))
    _check_lengths(header_len, body_len)
    header = parse_header(_read_exactly(recv, header_len))
    return header, _read_exactly(recv, body_len)


def _check_lengths(header_len, body_len):
    if not 0 < header_len <= MAX_HEADER or body_len > MAX_BODY:
        raise FrameError('bad frame lengths: header %d, body %d' % (header_len, body_len))


def parse_header(raw):
    try:
        header = json.loads(raw.decode('utf-8'))
    except ValueError as exc:
        raise FrameError('frame header is not JSON: %s' % exc) from exc
    if not isinstance(header, dict) or not isinstance(header.get('type'), str):
        raise FrameError('frame header is not an object with a "type"')
    return header


def _read_exactly(recv, size):
    # Joined once at the end, and not at all when one read brought everything: a fetch's chunk
    # is a megabyte.
    pieces = []
    missing = size
    while missing:
        piece = recv(min(missing, 1 << 20))
        if not piece:
            raise EOFError('ferrogen-mux closed the connection')
        pieces.append(piece)
        missing -= len(piece)
    return pieces[0] if len(pieces) == 1 else b''.join(pieces)

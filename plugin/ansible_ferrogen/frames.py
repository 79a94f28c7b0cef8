"""The frame format shared with ferrogen-mux (docs/protocol.md), for the worker side."""

from __future__ import annotations

import json
import socket
import struct

# -- Names and limits shared with the mux (docs/protocol.md) ---------------------------------
# worker-ipc's tests/python_names.rs reads this block and fails when it differs from the Rust
# side (PROTOCOL_VERSION and the limits in worker-ipc/src/lib.rs, ErrorKind).
PROTOCOL_VERSION = 1
MAX_HEADER = 16 * 1024 * 1024
MAX_BODY = 256 * 1024 * 1024
# Error kinds of failed calls the worker acts on.
BECOME_FAILED = 'become_failed'
CONNECTION_LOST = 'connection_lost'
MISSING_BLOB = 'missing_blob'
NO_INTERPRETER = 'no_interpreter'
NOT_FOUND = 'not_found'
OTHER_INTERPRETER = 'other_interpreter'
UNREACHABLE = 'unreachable'
# -- end of the names and limits shared with the mux -----------------------------------------

PREFIX = struct.Struct('>II')


class FrameError(Exception):
    """The peer sent something that is not a valid frame."""


def encode(header: dict, body: bytes = b'') -> bytes:
    """Return one frame: lengths, JSON header, body."""
    encoded = json.dumps(header, separators=(',', ':')).encode('utf-8')
    if len(encoded) > MAX_HEADER or len(body) > MAX_BODY:
        raise FrameError(f'frame too large: header {len(encoded)} bytes, body {len(body)} bytes')
    return PREFIX.pack(len(encoded), len(body)) + encoded + body


def decode(data: bytes) -> tuple[dict, bytes, int]:
    """Decode the frame at the start of data; return (header, body, bytes consumed)."""
    if len(data) < PREFIX.size:
        raise FrameError('truncated frame prefix')
    header_len, body_len = PREFIX.unpack_from(data)
    _check_lengths(header_len, body_len)
    end = PREFIX.size + header_len + body_len
    if len(data) < end:
        raise FrameError('truncated frame')
    header = _parse_header(data[PREFIX.size:PREFIX.size + header_len])
    return header, data[PREFIX.size + header_len:end], end


def read_frame(sock: socket.socket) -> tuple[dict, bytes]:
    """Read one frame from a blocking socket."""
    header_len, body_len = PREFIX.unpack(_recv_exactly(sock, PREFIX.size))
    _check_lengths(header_len, body_len)
    header = _parse_header(_recv_exactly(sock, header_len))
    return header, _recv_exactly(sock, body_len)


def _check_lengths(header_len: int, body_len: int) -> None:
    if not 0 < header_len <= MAX_HEADER or body_len > MAX_BODY:
        raise FrameError(f'bad frame lengths: header {header_len}, body {body_len}')


def _parse_header(raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode('utf-8'))
    except ValueError as exc:
        raise FrameError(f'frame header is not JSON: {exc}') from exc
    if not isinstance(header, dict) or not isinstance(header.get('type'), str):
        raise FrameError('frame header is not an object with a "type"')
    return header


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise EOFError('ferrogen-mux closed the connection')
        chunks += chunk
    return bytes(chunks)

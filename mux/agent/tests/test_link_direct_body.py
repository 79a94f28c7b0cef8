"""A large put chunk's body is read straight into a buffer of its own (link.DirectBody)."""

from __future__ import annotations

import fcntl
import os

from ansible_ferrogen import frames
from ferrogen_agent.link import DIRECT_BODY_MIN, DirectBody
from ferrogen_agent.transfers import F_SETPIPE_SZ


def pipe_holding(data):
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, F_SETPIPE_SZ, 1 << 20)  # room for the whole frame: no reader thread
    os.set_blocking(read_fd, False)
    os.write(write_fd, data)
    return read_fd, write_fd


def test_a_chunk_body_is_read_into_its_own_buffer_from_what_inbuf_held_on():
    body = os.urandom(DIRECT_BODY_MIN * 2)
    frame = frames.encode_frame({'type': 'chunk', 'id': 3, 'offset': 0}, body)
    inbuf = bytearray(frame[:100])
    direct = DirectBody.start(inbuf)
    assert direct is not None and inbuf == bytearray()
    read_fd, write_fd = pipe_holding(frame[100:30000])
    try:
        assert direct.fill(read_fd) is False  # the rest has not come yet
        os.write(write_fd, frame[30000:])
        assert direct.fill(read_fd) is True
        header, received = direct.frame()
        assert header == {'type': 'chunk', 'id': 3, 'offset': 0}
        assert isinstance(received, bytearray) and received == body
        os.close(write_fd)
        write_fd = None
        assert DirectBody.start(bytearray(frame[:100])).fill(read_fd) is None  # end of stream
    finally:
        os.close(read_fd)
        if write_fd is not None:
            os.close(write_fd)


def test_small_chunks_other_frames_and_incomplete_headers_stay_in_inbuf():
    small = frames.encode_frame({'type': 'chunk', 'id': 3, 'offset': 0}, b'x' * (DIRECT_BODY_MIN - 1))
    blob = frames.encode_frame({'type': 'blob', 'hash': 'ab'}, b'x' * DIRECT_BODY_MIN)
    big = frames.encode_frame({'type': 'chunk', 'id': 3, 'offset': 0}, b'x' * DIRECT_BODY_MIN)
    partial = (big[:3], big[:frames.FRAME_PREFIX.size + 5])  # a read may end anywhere in a frame's head
    for inbuf in (bytearray(small[:100]), bytearray(blob[:100]), *map(bytearray, partial)):
        held = bytes(inbuf)
        assert DirectBody.start(inbuf) is None
        assert inbuf == held

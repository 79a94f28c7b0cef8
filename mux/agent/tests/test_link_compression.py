"""The agent's side of the agent link's compression (docs/protocol.md, "Compression on the agent
link"): started with COMPRESS_LINK, it deflates what shrinks and sends the rest as it is, and it
reads the mux's compressed segments."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import random
import struct
import zlib

import ferrogen_agent
import pytest
from ansible_ferrogen import frames
from test_agent import AgentProcess
from test_transfer_ops import CHUNK, fetch_all, put_stream

SEGMENT = struct.Struct('>H')


class CompressingLink(AgentProcess):
    """The mux's end of a compressed link: deflates what it sends, and records for each frame it
    reads how it came: 'plain', 'compressed' (the link's stream) or 'bulk' (the bulk stream)."""

    def __init__(self, **kwargs):
        self.deflater = zlib.compressobj(2, zlib.DEFLATED, -15)
        self.inflaters = {'compressed': zlib.decompressobj(-15), 'bulk': zlib.decompressobj(-15)}
        self.inflated = bytearray()
        self.stream = None
        self.arrived = []
        super().__init__(settings='COMPRESS_LINK=1;', **kwargs)

    def read(self):
        while True:
            frame = self.take_inflated()
            if frame:
                self.arrived.append((frame[0]['type'], self.stream))
                return frame
            first = self.proc.stdout.peek(1)[0]
            if first == 0x04:
                stream, size = 'bulk', struct.unpack('>BH', self.proc.stdout.read(3))[1]
            elif first & 0x80:
                stream, size = 'compressed', SEGMENT.unpack(self.proc.stdout.read(SEGMENT.size))[0] & 0x7fff
            elif first & 0x40:
                stream, size = 'compressed', self.proc.stdout.read(1)[0] & 0x3f
            else:
                frame = frames.read_frame(self.proc.stdout.read)
                self.arrived.append((frame[0]['type'], 'plain'))
                return frame
            assert not self.inflated or stream == self.stream, 'a frame split between the streams'
            self.stream = stream
            self.inflated += self.inflaters[stream].decompress(self.proc.stdout.read(size))

    def take_inflated(self):
        return frames.take_frame(self.inflated)

    def send(self, header, body=b''):
        data = self.deflater.compress(frames.encode_frame(header, body))
        data += self.deflater.flush(zlib.Z_PARTIAL_FLUSH)
        for start in range(0, len(data), 0x7fff):
            piece = data[start:start + 0x7fff]
            self.proc.stdin.write(SEGMENT.pack(0x8000 | len(piece)) + piece)
        self.proc.stdin.flush()


@pytest.fixture
def link():
    process = CompressingLink()
    yield process
    if process.proc.poll() is None:
        process.close()


def text(size):
    lines = (b'%08d the agent link deflates what shrinks %d\n' % (n, n * 7919) for n in range(size // 20))
    return b''.join(lines)[:size]


def test_fetched_text_comes_compressed_and_random_bytes_as_they_are(link, tmp_path):
    for name, data in (('random', os.urandom(3 * CHUNK)), ('text', text(3 * CHUNK))):
        source = tmp_path / name
        source.write_bytes(data)
        link.arrived.clear()
        header, got = fetch_all(link, source)
        assert got == data and header['result']['sha1'] == hashlib.sha1(data).hexdigest()
        chunks = {how for kind, how in link.arrived if kind == 'chunk'}
        assert chunks == {'plain' if name == 'random' else 'bulk'}, link.arrived
        # Small frames (the reply) are always compressed.
        assert ('reply', 'compressed') in link.arrived, link.arrived


def test_compressed_puts_arrive_whole(link, tmp_path):
    assert link.ready['type'] == 'ready'
    for name, data in (('random', os.urandom(2 * CHUNK + 7)), ('text', text(2 * CHUNK + 7))):
        header = put_stream(link, tmp_path / name, data)
        assert header['ok'], header
        assert (tmp_path / name).read_bytes() == data
    header, _ = link.call('put_file', {'path': str(tmp_path / 'small')}, b'small file\n' * 1000)
    assert header['result']['size'] == 11000


def test_an_agent_without_the_setting_sends_plain_frames_but_reads_segments(tmp_path):
    class PlainAgentLink(CompressingLink):
        def __init__(self):
            self.deflater = zlib.compressobj(2, zlib.DEFLATED, -15)
            self.inflaters = {}
            self.inflated = bytearray()
            self.arrived = []
            AgentProcess.__init__(self)

    link = PlainAgentLink()
    try:
        source = tmp_path / 'text'
        source.write_bytes(text(2 * CHUNK))
        _, got = fetch_all(link, source)
        assert got == source.read_bytes()
        assert {how for _, how in link.arrived} == {'plain'}, link.arrived
    finally:
        link.close()


def test_a_patch_of_the_last_call_is_that_call_with_its_bytes_replaced(link):
    call = {'type': 'call', 'id': 5, 'op': 'ping', 'args': {}}
    link.send(call)
    assert link.read()[0]['id'] == 5
    encoded = frames.encode_frame(call)
    start = encoded.index(b'"id":5') + len(b'"id":')
    for new_id in (b'6', b'7'):
        # worker-ipc/src/compression.rs: tag, start, bytes removed, bytes inserted, the bytes.
        link.proc.stdin.write(struct.pack('>BHHB', 2, start, 1, 1) + new_id)
        link.proc.stdin.flush()
        header, _ = link.read()
        assert header['type'] == 'reply' and header['id'] == int(new_id) and header['ok'], header


def test_a_patch_past_the_end_of_the_last_frame_ends_the_agent(link):
    link.send({'type': 'call', 'id': 5, 'op': 'ping', 'args': {}})
    link.read()
    link.proc.stdin.write(struct.pack('>BHHB', 2, 5000, 1, 1) + b'x')
    link.proc.stdin.flush()
    assert link.proc.wait(timeout=30) != 0


def test_an_increment_of_the_last_call_is_that_call_with_its_id_one_more(link):
    call = {'type': 'call', 'id': 8, 'op': 'ping', 'args': {}}
    link.send(call)
    assert link.read()[0]['id'] == 8
    for new_id in (9, 10, 11):
        # worker-ipc/src/compression.rs: tag, then where the number starts, counted back from the
        # end of the last call's header (which gains a byte at 10).
        encoded = frames.encode_frame(dict(call, id=new_id - 1))
        header_end = len(encoded)
        back = header_end - encoded.index(b'"id":%d' % (new_id - 1)) - len(b'"id":')
        link.proc.stdin.write(struct.pack('>BB', 3, back))
        link.proc.stdin.flush()
        header, _ = link.read()
        assert header['type'] == 'reply' and header['id'] == new_id and header['ok'], header


def test_an_increment_of_no_number_ends_the_agent(link):
    link.send({'type': 'call', 'id': 5, 'op': 'ping', 'args': {}})
    link.read()
    link.proc.stdin.write(struct.pack('>BB', 3, 2))
    link.proc.stdin.flush()
    assert link.proc.wait(timeout=30) != 0


def test_a_reply_deflates_into_a_short_segment(link):
    """A loop item's reply, like the last but for its id and a few digits, is a short segment:
    one byte of prefix and the best level, so ssh sends it in a smaller packet."""
    for new_id in range(1, 5):
        link.send({'type': 'call', 'id': new_id, 'op': 'ping', 'args': {}})
        before = link.proc.stdout.peek(1)[0]
        assert link.read()[0]['id'] == new_id
    assert before & 0xc0 == 0x40, hex(before)


def loop_replies(count):
    """Replies as a `command: hostname` loop's items bring them: the same but for the call's id
    and the start, end and delta of each run."""
    rng = random.Random(22)
    start = datetime.datetime(2026, 12, 2, 10, 20, 31, 123456)
    replies = []
    for item in range(count):
        took = datetime.timedelta(microseconds=rng.randint(3000, 6000))
        end = start + took
        result = {'changed': True, 'stdout': 'target', 'stderr': '', 'rc': 0, 'cmd': ['hostname'],
                  'start': str(start), 'end': str(end), 'delta': str(took), 'msg': '',
                  'invocation': {'module_args': {'_raw_params': 'hostname', '_uses_shell': False,
                                                 'chdir': None, 'creates': None, 'removes': None}}}
        body = json.dumps(result).encode() + b'\n'
        header = {'type': 'reply', 'id': 1000 + item, 'ok': True, 'result': {'rc': 0, 'stdout_len': len(body)}}
        replies.append(frames.encode_frame(header, body))
        start = end + datetime.timedelta(microseconds=rng.randint(12000, 16000))
    return replies


def test_a_loop_items_reply_fits_the_packet_below_a_fast_levels():
    """At level 9 a loop item's reply is some 30 bytes with its prefix, at most 34, which ssh
    sends in a 68-byte packet; at the bulk stream's level 1 a third of them take more, and a
    76-byte packet."""
    agent = ferrogen_agent.load()
    stream = agent.small_frame_stream()
    sizes = [len(agent.segments(stream.compress(reply) + stream.flush(agent.LINK_FLUSH)))
             for reply in loop_replies(120)]
    assert max(sizes[20:]) <= 34, sizes

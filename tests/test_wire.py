"""The agent link compresses what pays, in both directions (issue 22): text crosses the network
deflated by the mux and the agent, random bytes cross as they are, and ssh's own -C is off."""

from __future__ import annotations

import random
import re
import socket
import threading
from pathlib import Path

import helpers
import pytest
from helpers import describe

SIZE = 8 * 1024 * 1024

# What a copy and a fetch move besides the file: the agent, the module zips, calls and replies.
OVERHEAD = 1024 * 1024


class CountingProxy:
    """Forwards 127.0.0.1:port to the test sshd and counts the bytes each way."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = self.down = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", helpers.SSH_PORT))
            threading.Thread(target=self.pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self.pump, args=(server, client, "down"), daemon=True).start()

    def pump(self, source, sink, direction):
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
                with self.lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def text_file(path: Path) -> bytes:
    """SIZE bytes of source code: Ansible's own, as text that compresses about fourfold."""
    import ansible

    parts, size = [], 0
    for source in sorted(Path(ansible.__file__).parent.rglob("*.py")):
        parts.append(source.read_bytes())
        size += len(parts[-1])
        if size >= SIZE:
            break
    data = b"".join(parts)[:SIZE]
    path.write_bytes(data)
    return data


def round_trip(tmp_path: Path, source: Path, data: bytes) -> CountingProxy:
    proxy = CountingProxy()
    inventory = helpers.write_inventory(tmp_path / "inventory.ini", [helpers.ssh_host_line("sshroot", port=proxy.port)])
    try:
        run = helpers.run_playbook("wire_roundtrip.yml", ferrogen=True, tmp_path=tmp_path, inventory=inventory,
                                   extra_env={"FERROGEN_LOG": "debug"},
                                   extra_args=["-e", f"src={source}", "-e", f"dest={tmp_path / 'dest'}",
                                               "-e", f"back={tmp_path / 'back'}"])  # fmt: skip
    finally:
        proxy.close()
    assert run.returncode == 0, describe(run)
    assert (tmp_path / "dest").read_bytes() == data
    assert (tmp_path / "back").read_bytes() == data
    argv = re.findall(r"connecting target=\S+ argv=(\[.*\])", run.stderr)
    assert argv and all('"-C"' not in line for line in argv), describe(run)
    return proxy


@pytest.mark.mux_only
def test_random_bytes_cross_the_link_as_they_are(tmp_path):
    source = tmp_path / "random.bin"
    data = random.Random(22).randbytes(SIZE)
    source.write_bytes(data)
    proxy = round_trip(tmp_path, source, data)
    assert SIZE <= proxy.up < SIZE + OVERHEAD, proxy.up
    assert SIZE <= proxy.down < SIZE + OVERHEAD, proxy.down


@pytest.mark.mux_only
def test_text_crosses_the_link_compressed_both_ways(tmp_path):
    source = tmp_path / "text.txt"
    data = text_file(source)
    proxy = round_trip(tmp_path, source, data)
    # ssh does not compress (no -C), so what shrinks is the mux's and the agent's doing.
    assert proxy.up < SIZE // 2, proxy.up
    assert proxy.down < SIZE // 2, proxy.down


def loop_wire_bytes(tmp_path: Path, count: int) -> int:
    """Bytes both ways on the wire for a `count`-item `command: hostname` loop through the mux."""
    proxy = CountingProxy()
    inventory = helpers.write_inventory(tmp_path / f"inventory-{count}.ini",
                                        [helpers.ssh_host_line("sshroot", port=proxy.port)])  # fmt: skip
    try:
        run = helpers.run_playbook("loop100.yml", ferrogen=True, tmp_path=tmp_path, inventory=inventory,
                                   extra_args=["-e", f"loop_count={count}"])  # fmt: skip
    finally:
        proxy.close()
    assert run.returncode == 0, describe(run)
    return proxy.up + proxy.down


@pytest.mark.mux_only
def test_a_loop_item_costs_one_small_ssh_packet_each_way(tmp_path):
    """The next item's call crosses as a 2-byte increment and its reply as a short segment at
    the agent's best level: ssh's 36-byte packet one way and its 68-byte one the other for most
    items (chacha20-poly1305: 4 bytes of length, 16 of MAC, padding to 8 of the 1-byte padding
    length, 9 of channel-data header and the data): 104 bytes an item here. With each call a
    7-byte patch (a 44-byte packet), 112. That the reply is at its smallest is
    mux/agent/tests/test_link_compression.py's to show: the level alone is worth 2.5 bytes an
    item, too little to tell from the wire in a test."""
    per_item = (loop_wire_bytes(tmp_path, 80) - loop_wire_bytes(tmp_path, 20)) / 60
    assert per_item < 110, per_item

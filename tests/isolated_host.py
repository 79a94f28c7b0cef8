"""A test host of its own: an sshd in a private mount namespace, with its own copies of /etc and
/root (so a play may rewrite /etc/environment, ~/.pam_environment or /etc/resolv.conf without
touching this machine's), and optionally no Python at all (python3 hidden in /usr/bin by an
overlay: `umount -l /usr/bin` in a task "installs" it again)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import helpers

# The Python executables a host without Python must not have (the mux and Ansible look for them).
PYTHON_NAMES = ("python3", "python3.11", "python")
# The command that gives a host without Python its Python back, from a task.
INSTALL_PYTHON = "umount -l /usr/bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class IsolatedHost:
    """Start with start(); files of its /etc and /root are under .etc and .root; stop() ends it."""

    def __init__(self, base: Path, *, python: bool = True):
        self.base = base
        self.python = python
        self.port = free_port()
        self.etc = base / "etc"
        self.root = base / "root"
        self.process: subprocess.Popen | None = None

    def start(self) -> IsolatedHost:
        shutil.copytree("/etc", self.etc, symlinks=True)
        (self.root / ".ssh").mkdir(parents=True)
        shutil.copy("/root/.ssh/authorized_keys", self.root / ".ssh" / "authorized_keys")
        own = [f"Port {self.port}", f"PidFile {self.base}/sshd.pid"]
        (self.base / "sshd_config").write_text(helpers.sshd_config_of_own(own))
        steps = [f"mount --bind {self.etc} /etc", f"mount --bind {self.root} /root"]
        if not self.python:
            upper, work = self.base / "bin-upper", self.base / "bin-work"
            upper.mkdir()
            work.mkdir()
            # Overlay whiteouts: the names vanish from /usr/bin (and so from /bin).
            steps += [f"mknod {upper}/{name} c 0 0" for name in PYTHON_NAMES]
            steps.append(f"mount -t overlay overlay -o lowerdir=/usr/bin,upperdir={upper},workdir={work} /usr/bin")
        steps.append(f"exec /usr/sbin/sshd -D -f {self.base}/sshd_config -E {self.base}/sshd.log")
        self.process = subprocess.Popen(  # noqa: S603 - our own command line
            ["unshare", "--mount", "--propagation", "private", "sh", "-ec", " && ".join(steps)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"isolated sshd exited: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"isolated sshd did not listen on {self.port}: {self.log()}")

    def log(self) -> str:
        path = self.base / "sshd.log"
        return path.read_text() if path.exists() else ""

    def inventory(self, path: Path, names: list[str], *, extra: str = "") -> Path:
        """An inventory whose hosts (root logins) all are this host."""
        return helpers.write_inventory(
            path, [helpers.ssh_host_line(name, port=self.port, extra=extra) for name in names]
        )

    def stop(self) -> None:
        """End the sshd and every session it started (their processes are in its session)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        self.process = None


class TinyDns:
    """A name server on a loopback address that answers one name's A query with one address
    (and any other query with no answer), for resolv.conf files of isolated hosts."""

    def __init__(self, listen: str, name: str, address: str):
        self.name = name.rstrip(".").lower()
        self.answer = socket.inet_aton(address)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((listen, 53))
        self.sock.settimeout(0.2)
        self.closing = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.closing:
            try:
                query, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            reply = self.reply(query)
            if reply:
                self.sock.sendto(reply, peer)

    def reply(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        labels, offset = [], 12
        while offset < len(query) and query[offset]:
            length = query[offset]
            labels.append(query[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
            offset += 1 + length
        if len(query) < offset + 5:
            return None
        qtype, _qclass = struct.unpack(">HH", query[offset + 1 : offset + 5])
        question = query[12 : offset + 5]
        matches = ".".join(labels).lower() == self.name
        answers = b""
        if matches and qtype == 1:
            answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 0, 4) + self.answer
        # Response, recursion desired and available; NXDOMAIN for any other name.
        flags = 0x8180 if matches else 0x8183
        header = query[:2] + struct.pack(">HHHHH", flags, 1, 1 if answers else 0, 0, 0)
        return header + question + answers

    def close(self) -> None:
        self.closing = True
        self.thread.join()
        self.sock.close()

"""Test hosts with addresses of their own: a chain of network namespaces, each running its own
sshd on port 22, where host 1 is linked to this machine's namespace and host N only to host N-1
(no forwarding anywhere), so host N is reachable only from host N-1.

Every namespace shares this machine's files (keys, users, Python): only the network differs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import helpers


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)  # noqa: S603, S607


class NetnsChain:
    """`hosts[i]` is the address of host i+1; `start()` builds, `stop()` removes everything."""

    def __init__(self, base: Path, depth: int):
        self.base = base
        self.depth = depth
        tag = os.getpid() % 200 + 20
        self.prefix = f"fgv{os.getpid()}"
        self.namespaces = [f"{self.prefix}-h{i}" for i in range(1, depth + 1)]
        # Link i joins host i-1 (or this machine) at 10.tag.i.1 to host i at 10.tag.i.2.
        self.hosts = [f"10.{tag}.{i}.2" for i in range(1, depth + 1)]
        self.gateways = [f"10.{tag}.{i}.1" for i in range(1, depth + 1)]
        self.sshd: list[subprocess.Popen] = []
        # This machine's default route may lead to something that answers any address; the
        # chain's other links must be unreachable from here for real.
        self.blackhole = f"10.{tag}.0.0/16"

    def start(self) -> NetnsChain:
        ip("route", "add", "unreachable", self.blackhole)
        for index, ns in enumerate(self.namespaces):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            outer, inner = f"{self.prefix}o{index + 1}"[-15:], f"{self.prefix}i{index + 1}"[-15:]
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", ns)
            if index == 0:
                ip("addr", "add", f"{self.gateways[0]}/24", "dev", outer)
                ip("link", "set", outer, "up")
            else:
                previous = self.namespaces[index - 1]
                ip("link", "set", outer, "netns", previous)
                ip("-n", previous, "addr", "add", f"{self.gateways[index]}/24", "dev", outer)
                ip("-n", previous, "link", "set", outer, "up")
            ip("-n", ns, "addr", "add", f"{self.hosts[index]}/24", "dev", inner)
            ip("-n", ns, "link", "set", inner, "up")
            self.sshd.append(self.start_sshd(index))
        for index in range(self.depth):
            self.wait_listening(index)
        return self

    def start_sshd(self, index: int) -> subprocess.Popen:
        own = ["Port 22", f"ListenAddress {self.hosts[index]}", f"PidFile {self.base}/sshd{index + 1}.pid"]
        path = self.base / f"sshd{index + 1}_config"
        path.write_text(helpers.sshd_config_of_own(own, drop=("Port ", "PidFile ", "ListenAddress ")))
        return subprocess.Popen(  # noqa: S603 - our own command line
            ["ip", "netns", "exec", self.namespaces[index], "/usr/sbin/sshd", "-D", "-f", str(path),
             "-E", str(self.log_path(index))],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_listening(self, index: int) -> None:
        deadline = time.monotonic() + 20
        probe = ["ip", "netns", "exec", self.namespaces[index], "python3", "-c",
                 f"import socket; socket.create_connection(('{self.hosts[index]}', 22), 1).close()"]
        while time.monotonic() < deadline:
            if subprocess.run(probe, capture_output=True, check=False).returncode == 0:  # noqa: S603
                return
            time.sleep(0.1)
        raise AssertionError(f"sshd of host {index + 1} did not listen: {self.log(index)}")

    def log_path(self, index: int) -> Path:
        return self.base / f"sshd{index + 1}.log"

    def log(self, index: int) -> str:
        path = self.log_path(index)
        return path.read_text() if path.exists() else ""

    def logins(self, index: int) -> int:
        """How many ssh logins host index+1 accepted."""
        return self.log(index).count("Accepted publickey")

    def kill_sessions(self, index: int) -> list[int]:
        """End every ssh session host index+1 serves (its listener stays): a dead intermediary."""
        listener = self.sshd[index].pid
        pids = subprocess.run(["ip", "netns", "pids", self.namespaces[index]],  # noqa: S603, S607
                              capture_output=True, text=True, check=True).stdout.split()
        killed = [int(pid) for pid in pids if int(pid) != listener]
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return killed

    def stop(self) -> None:
        for process in self.sshd:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)  # noqa: S603, S607
        outer = f"{self.prefix}o1"[-15:]
        subprocess.run(["ip", "link", "del", outer], capture_output=True, check=False)  # noqa: S603, S607
        subprocess.run(["ip", "route", "del", "unreachable", self.blackhole],  # noqa: S603, S607
                       capture_output=True, check=False)

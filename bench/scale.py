"""Scale run (issue 20): many targets x a few tasks at high forks, ferrogen against Mitogen.

Every target is a distinct ssh login to the test sshd (its own inventory name and its own ssh
option, so neither engine shares one connection between two of them). Each engine runs the same
playbook (``bench/playbooks/scale.yml``: ten tasks of command, shell, copy, stat, file and
ping), the engines taking turns. While a run lasts, the driver samples the processes that hold
the ssh connections (ferrogen's mux; Mitogen's multiplexer processes), every 0.5 s: their
summed RSS, threads and open descriptors, at their peak, also per target. It reports wall time,
controller CPU (user+sys of everything the run started on this machine, the driver being a
child subreaper) and the load average before and after, with every result ok or not.

Run with the bench venv (bench/run.sh makes it) and the test sshd up::

    FERROGEN_SSH_PORT=2222 .state/bench-venv/bin/python bench/scale.py --targets 200 --forks 50

It is not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402 - bench.py is the sibling script, not a package

PLAYBOOK = bench.BENCH_PLAYBOOKS / "scale.yml"
# The playbook's tasks per target.
TASKS = 10
SAMPLE_EVERY = 0.5


def recap_of(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP's counts by host: {"s001": {"ok": 10, "failed": 0, ...}}."""
    recap = {}
    lines = output.split("PLAY RECAP", 1)[-1].splitlines()[1:]
    for line in lines:
        host, sep, counts = line.partition(" : ")
        if not sep:
            continue
        recap[host.strip()] = {key: int(value) for key, value in (pair.split("=") for pair in counts.split())}
    return recap


def scale_inventory(path: Path, targets: int) -> None:
    key = bench.STATE / "id_ed25519"
    lines = [
        f"s{n:03d} ansible_host=127.0.0.1 ansible_port={bench.SSH_PORT} ansible_user=root "
        f"ansible_ssh_private_key_file={key} ansible_python_interpreter=/usr/bin/python3 "
        f"ansible_ssh_extra_args='-o SetEnv=FERROGEN_SCALE={n}'"
        for n in range(1, targets + 1)
    ]
    lines += ["", "[all:vars]", "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'"]
    path.write_text("\n".join(lines) + "\n")


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def status_field(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Holders:
    """Samples the processes that hold the run's ssh connections (the parents of its ssh
    clients): their summed RSS, threads and descriptors at the peak, and the peak number of
    ssh clients."""

    def __init__(self):
        self.peak = {"rss_kib": 0, "threads": 0, "fds": 0, "ssh": 0, "holders": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            ssh = [pid for pid, comm in bench.every_process("comm") if comm == "ssh\n" and bench.descends_from_me(pid)]
            holders = {parent_of(pid) for pid in ssh} - {None}
            now = {
                "rss_kib": sum(status_field(pid, "VmRSS") for pid in holders),
                "threads": sum(status_field(pid, "Threads") for pid in holders),
                "fds": sum(open_fds(pid) for pid in holders),
                "ssh": len(ssh),
                "holders": len(holders),
            }
            for key, value in now.items():
                self.peak[key] = max(self.peak[key], value)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def run(engine: str, targets: int, forks: int, playbook_bin: Path) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"scale-{engine}-"))
    try:
        inventory = tmp / "inventory.ini"
        scale_inventory(inventory, targets)
        env = bench.engine_env(engine, tmp) | {"ANSIBLE_FORKS": str(forks), "ANSIBLE_TIMEOUT": "60"}
        results = tmp / "output"
        cmd = [str(playbook_bin), "-i", str(inventory), str(PLAYBOOK)]
        load_before = os.getloadavg()[0]
        cpu0 = bench.children_cpu()
        holders = Holders()
        started = time.monotonic()
        with open(results, "w") as out:
            proc = subprocess.run(cmd, env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=1800, check=False)  # fmt: skip
        wall = time.monotonic() - started
        peak = holders.stop()
        bench.reap_leftovers()
        cpu = bench.children_cpu() - cpu0
        recap = recap_of(results.read_text(errors="replace"))
        if len(recap) != targets:
            bench.LOG_DIR.mkdir(parents=True, exist_ok=True)
            log = bench.LOG_DIR / f"scale-{engine}.log"
            shutil.copy(results, log)
            return {"engine": engine, "rc": proc.returncode, "error": f"{len(recap)} hosts in the recap; output in {log}"}
        ok = sum(1 for host in recap.values() if host["ok"] == TASKS and not host["failed"] and not host["unreachable"])
        return {
            "engine": engine, "rc": proc.returncode, "hosts_ok": ok, "hosts": len(recap),
            "tasks_ok": sum(host["ok"] for host in recap.values()),
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "load_before": round(load_before, 1), "load_after": round(os.getloadavg()[0], 1),
            **{f"peak_{key}": value for key, value in peak.items()},
            "rss_kib_per_target": round(peak["rss_kib"] / targets, 1),
            "threads_per_target": round(peak["threads"] / targets, 2),
            "fds_per_target": round(peak["fds"] / targets, 2),
        }  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--forks", type=int, default=50)
    parser.add_argument("--engines", default="ferrogen,mitogen")
    parser.add_argument("--runs", type=int, default=1, help="rounds; the engines take turns in each")
    args = parser.parse_args()
    bench.set_child_subreaper(1)
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    failed = False
    for _ in range(args.runs):
        for engine in args.engines.split(","):
            result = run(engine, args.targets, args.forks, playbook_bin)
            print(json.dumps(result), flush=True)
            failed |= result.get("hosts_ok") != args.targets or result["rc"] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

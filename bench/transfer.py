"""File-transfer benchmark (issue 4): vanilla Ansible vs Mitogen vs ferrogen, one run, same sshd.

Scenarios:

- ``small-100``: 100 small files (2 KiB each) copied with one ``copy`` loop over a link with a
  26 ms round trip (``../shared/tools/latency-proxy PORT 2222 13``). The same playbook with one
  file is the baseline: ``(wall(100) - wall(1)) / 99`` is the cost of one more file, shown in
  round trips (``/ 0.026 s``). Bytes on the wire come from the proxy's stats file.
- ``copy-200M``: one 200 MB file (incompressible) copied over the direct connection; the copy
  task's own duration (``callback_plugins/task_times.py``) gives the throughput. In the same run
  ``ssh host 'cat > file'`` moves the same file, with and without ``-C`` (best of 3). Each engine runs twice:
  with its default ssh options (Ansible's default ``ssh_args`` carry ``-C``, Mitogen compresses
  by default) and without compression; with ``-C``, ssh's zlib, not the engine, sets the pace on
  a fast link. As ``ssh cat`` is timed less ssh's own start-up, each engine's copy is also shown
  less its fixed cost: the same copy task moving a 128 KiB file (a streamed one for ferrogen) in
  its own run, which pays the connection, the module builds, the stat and the copy module.
  A floor row times ssh doing only the work a copy cannot skip, with no engine: the target
  checks the SHA-1 of what it receives and fsyncs it while the controller computes the SHA-1
  and MD5 that Ansible's copy action and module report (``floor_ssh``).

Run through bench/run.sh's environment, e.g.::

    .state/bench-venv/bin/python bench/transfer.py [--engines vanilla,mitogen,ferrogen] [--runs 1]

The benchmark is not run by the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402 - bench.py is the sibling script, not a package

REPO = bench.REPO
STATE = REPO / ".state"
PROXY = REPO.parent / "shared" / "tools" / "latency-proxy"
PLAYBOOKS = REPO / "bench" / "playbooks"
CALLBACKS = REPO / "bench" / "callback_plugins"
SSH_KEY = STATE / "id_ed25519"
SSH_PORT = int(os.environ.get("FERROGEN_SSH_PORT", "2222"))
ONE_WAY_DELAY_MS = 13
ROUND_TRIP = 2 * ONE_WAY_DELAY_MS / 1000
BIG_SIZE = 200 * 1000 * 1000
FIXED_COST_SIZE = 128 * 1024
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-i", str(SSH_KEY), "-p", str(SSH_PORT), "-l", "root"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def inventory(path: Path, port: int) -> Path:
    path.write_text(
        "[targets]\n"
        f"sshroot ansible_host=127.0.0.1 ansible_port={port} ansible_user=root "
        f"ansible_ssh_private_key_file={SSH_KEY} ansible_python_interpreter=/usr/bin/python3\n\n"
        "[all:vars]\n"
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n"
    )
    return path


class Proxy:
    """latency-proxy for one run; bytes() sums its stats file once it has stopped."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.stats = tmp / "proxy-stats"
        self.proc = subprocess.Popen([str(PROXY), str(self.port), str(SSH_PORT), str(ONE_WAY_DELAY_MS), str(self.stats)])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)

    def stop(self) -> tuple[int, int]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        sent = received = 0
        if self.stats.exists():
            for line in self.stats.read_text().splitlines():
                fields = dict(part.split("=") for part in line.split())
                sent += int(fields.get("sent", 0))
                received += int(fields.get("received", 0))
        return sent, received


def run_playbook(engine: str, playbook: str, inv: Path, extra: list[str], log: Path, tmp: Path,
                 compress: bool = True, env_extra: dict[str, str] | None = None) -> dict:
    env = bench.engine_env(engine, tmp) | (env_extra or {})
    if not compress:
        # Ansible's default ssh_args carry -C; Mitogen compresses unless told not to.
        env["ANSIBLE_SSH_ARGS"] = env.get("ANSIBLE_SSH_ARGS", "-C -o ControlMaster=auto -o ControlPersist=60s")
        env["ANSIBLE_SSH_ARGS"] = env["ANSIBLE_SSH_ARGS"].replace("-C ", "")
        extra = [*extra, "-e", "mitogen_ssh_compression=false"]
    times = tmp / "task-times.jsonl"
    env.update({"ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS), "ANSIBLE_CALLBACKS_ENABLED": "task_times",
                "BENCH_TASK_TIMES": str(times)})  # fmt: skip
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv), str(PLAYBOOKS / playbook), *extra]
    started = time.monotonic()
    with open(log, "w") as out:
        rc = subprocess.run(cmd, env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            timeout=1800, check=False).returncode  # fmt: skip
    wall = time.monotonic() - started
    bench.reap_leftovers()
    tasks = {}
    if times.exists():
        for line in times.read_text().splitlines():
            entry = json.loads(line)
            tasks[entry["task"]] = entry["secs"]
    if "ANSIBLE_SSH_CONTROL_PATH_DIR" in env:
        shutil.rmtree(env["ANSIBLE_SSH_CONTROL_PATH_DIR"], ignore_errors=True)
    return {"rc": rc, "wall": wall, "tasks": tasks, "log": str(log)}


def small_files(tmp: Path, count: int) -> Path:
    src = tmp / f"small-{count}"
    src.mkdir()
    for i in range(count):
        (src / f"file-{i:03d}.txt").write_bytes((f"small file {i}\n" * 200)[:2048].encode())
    return src


def bench_small(engine: str, work: Path) -> dict:
    """100 files and 1 file over the 26 ms link."""
    out = {}
    for count in (1, 100):
        tmp = Path(tempfile.mkdtemp(prefix=f"tsmall-{engine}-", dir=work))
        src = small_files(tmp, count)
        dest = f"/tmp/ferrogen-bench-small-{engine}-{count}-{os.getpid()}"
        shutil.rmtree(dest, ignore_errors=True)
        proxy = Proxy(tmp)
        try:
            inv = inventory(tmp / "inventory.ini", proxy.port)
            log = bench.LOG_DIR / f"transfer-small{count}-{engine}.log"
            result = run_playbook(engine, "transfer_small.yml", inv, ["-e", f"src={src}", "-e", f"dest={dest}"],
                                  log, tmp)  # fmt: skip
        finally:
            sent, received = proxy.stop()
            shutil.rmtree(dest, ignore_errors=True)
        result.update({"sent": sent, "received": received})
        out[count] = result
    per_file = (out[100]["wall"] - out[1]["wall"]) / 99
    return {
        "rc": out[100]["rc"] or out[1]["rc"],
        "wall_100": out[100]["wall"],
        "wall_1": out[1]["wall"],
        "per_file_s": per_file,
        "round_trips_per_file": per_file / ROUND_TRIP,
        "wire_bytes_100": out[100]["sent"] + out[100]["received"],
        "wire_bytes_per_file": (out[100]["sent"] + out[100]["received"] - out[1]["sent"] - out[1]["received"]) / 99,
        "logs": [out[1]["log"], out[100]["log"]],
    }


def timed_ssh(big: Path, opts: list[str], command: str, dest: str, runs: int = 3, alongside=()) -> float:
    """Seconds for ssh host command to take big on its stdin and write dest (on this machine),
    less ssh's own start-up (ssh host true), with each of alongside run in a thread meanwhile;
    the best of runs, as a single one varies by a factor of two here."""
    best = float("inf")
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run(["ssh", *opts, "127.0.0.1", "true"], check=True)
        setup = time.monotonic() - started
        with open(big, "rb") as stdin:
            started = time.monotonic()
            threads = [threading.Thread(target=work) for work in alongside]
            for thread in threads:
                thread.start()
            subprocess.run(["ssh", *opts, "127.0.0.1", command], stdin=stdin, check=True)
            for thread in threads:
                thread.join()
            best = min(best, max(time.monotonic() - started - setup, 1e-6))
        os.unlink(dest)
    return best


def raw_ssh(big: Path, compress: bool) -> float:
    """Seconds for ssh host 'cat > file' to move big (timed_ssh)."""
    dest = f"/tmp/ferrogen-bench-raw-{os.getpid()}"
    return timed_ssh(big, (["-C"] if compress else []) + SSH_OPTS, f"cat > {dest}", dest)


# The receiving end of floor_ssh: what the agent must do with a put's bytes besides writing
# them (check their SHA-1, fsync), with the agent's pipe size, in the target's Python.
FLOOR_RECEIVER = """
import fcntl, hashlib, os, sys
try:
    fcntl.fcntl(0, 1031, 1 << 20)  # F_SETPIPE_SZ
except OSError:
    pass
digest = hashlib.sha1()
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
while data := os.read(0, 1 << 20):
    digest.update(data)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
os.fsync(fd)
"""


def hash_file(path: Path, name: str) -> None:
    digest = hashlib.new(name)
    with open(path, "rb") as handle:
        while data := handle.read(16 << 20):
            digest.update(data)


def floor_ssh(big: Path) -> float:
    """Seconds for ssh alone to do the work a copy cannot skip (no Ansible, no engine, no
    framing): the target checks the SHA-1 of what it receives and fsyncs it, while the controller
    hashes the source with SHA-1 (the action's checksum) and MD5 (the copy module's md5sum)
    (timed_ssh). It bounds what any engine can reach on this machine."""
    dest = f"/tmp/ferrogen-bench-floor-{os.getpid()}"
    hashing = [lambda name=name: hash_file(big, name) for name in ("sha1", "md5")]
    return timed_ssh(big, SSH_OPTS, f"/usr/bin/python3 -c {shlex.quote(FLOOR_RECEIVER)} {dest}", dest,
                     alongside=hashing)  # fmt: skip


def copy_task_secs(engine: str, work: Path, src: Path, compress: bool, label: str) -> dict:
    """One run of transfer_big.yml copying src; "secs" is the copy task's own duration."""
    tmp = Path(tempfile.mkdtemp(prefix=f"tbig-{engine}-", dir=work))
    dest = f"/tmp/ferrogen-bench-big-{engine}-{os.getpid()}"
    inv = inventory(tmp / "inventory.ini", SSH_PORT)
    log = bench.LOG_DIR / f"transfer-{label}-{engine}{'' if compress else '-plain'}.log"
    try:
        result = run_playbook(engine, "transfer_big.yml", inv, ["-e", f"src={src}", "-e", f"dest={dest}"], log, tmp,
                              compress)  # fmt: skip
    finally:
        if os.path.exists(dest):
            os.unlink(dest)
    result["secs"] = result["tasks"].get("copy big file")
    return result


def bench_big(engine: str, work: Path, big: Path, fixed_cost_file: Path, compress: bool) -> dict:
    result = copy_task_secs(engine, work, big, compress, "big")
    fixed = copy_task_secs(engine, work, fixed_cost_file, compress, "fixed-cost")
    secs = result["secs"]
    result["copy_s"] = secs
    result["mb_s"] = BIG_SIZE / secs / 1e6 if secs else None
    result["fixed_s"] = fixed["secs"]
    net = secs - fixed["secs"] if secs and fixed["secs"] and fixed["rc"] == 0 else None
    result["net_mb_s"] = BIG_SIZE / net / 1e6 if net and net > 0 else None
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default=",".join(bench.ENGINES))
    ap.add_argument("--scenarios", default="small-100,copy-200M")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    scenarios = [s for s in args.scenarios.split(",") if s]
    bench.LOG_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    results: dict = {"round_trip_s": ROUND_TRIP}
    lines = []
    try:
        if "small-100" in scenarios:
            results["small-100"] = {}
            lines += [f"small-100 (26 ms round trip)  {'wall 100':>9} {'wall 1':>8} {'RT/file':>8} {'wire KB/file':>13}"]
            for engine in engines:
                r = bench_small(engine, work)
                results["small-100"][engine] = r
                print(f"  small-100 {engine}: {r}", file=sys.stderr, flush=True)
                lines.append(f"  {engine:27} {r['wall_100']:9.2f} {r['wall_1']:8.2f} {r['round_trips_per_file']:8.2f} "
                             f"{r['wire_bytes_per_file'] / 1000:13.1f}" + ("" if r["rc"] == 0 else "  FAILED"))  # fmt: skip
            mitogen, ferrogen = results["small-100"].get("mitogen"), results["small-100"].get("ferrogen")
            if mitogen and ferrogen:
                lines.append(f"  ferrogen / mitogen wall (100 files): {ferrogen['wall_100'] / mitogen['wall_100']:.2f}x")
        if "copy-200M" in scenarios:
            big = work / "big.bin"
            with open(big, "wb") as out:
                for _ in range(BIG_SIZE // 1_000_000):
                    out.write(os.urandom(1_000_000))
            fixed_cost_file = work / "fixed-cost.bin"
            fixed_cost_file.write_bytes(os.urandom(FIXED_COST_SIZE))
            raw = {"plain": raw_ssh(big, compress=False), "compressed": raw_ssh(big, compress=True)}
            floor = floor_ssh(big)
            results["copy-200M"] = {"ssh_cat_s": raw, "floor_s": floor}
            lines += ["", f"copy-200M                     {'copy s':>9} {'MB/s':>8} {'vs ssh':>8} {'vs ssh -C':>10}"
                          f" {'fixed s':>8} {'net MB/s':>9} {'net vs ssh':>11}"]
            for name, secs in raw.items():
                lines.append(f"  ssh 'cat > file' ({name:10}) {secs:9.2f} {BIG_SIZE / secs / 1e6:8.1f}")
            lines.append(f"  ssh + SHA-1, MD5, fsync     {floor:9.2f} {BIG_SIZE / floor / 1e6:8.1f} "
                         f"{raw['plain'] / floor:7.0%}   (the floor: see floor_ssh)")
            for compress in (True, False):
                for engine in engines:
                    r = bench_big(engine, work, big, fixed_cost_file, compress)
                    label = f"{engine} ({'ssh -C' if compress else 'no -C'})"
                    results["copy-200M"][label] = r
                    print(f"  copy-200M {label}: {r}", file=sys.stderr, flush=True)
                    if r["rc"] != 0 or not r["mb_s"]:
                        lines.append(f"  {label:27} FAILED (see {r['log']})")
                        continue
                    plain, compressed = (BIG_SIZE / raw[k] / 1e6 for k in ("plain", "compressed"))
                    same_ssh = compressed if compress else plain
                    net = (f"{r['fixed_s']:8.2f} {r['net_mb_s']:9.1f} {r['net_mb_s'] / same_ssh:10.0%}"
                           if r["net_mb_s"] else "       -         -           -")  # fmt: skip
                    lines.append(f"  {label:27} {r['copy_s']:9.2f} {r['mb_s']:8.1f} {r['mb_s'] / plain:7.0%} "
                                 f"{r['mb_s'] / compressed:9.0%} {net}")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""File-transfer benchmark (issue 4): vanilla Ansible vs Mitogen vs ferrogen, one run, same sshd.

Scenarios:

- ``small-100``: 100 small files (2 KiB each) copied with one ``copy`` loop over a link with a
  26 ms round trip (``../shared/tools/latency-proxy PORT 2222 13``). The same playbook with one
  file is the baseline: ``(wall(100) - wall(1)) / 99`` is the cost of one more file, shown in
  round trips (``/ 0.026 s``). Bytes on the wire come from the proxy's stats file.
- ``random-400M`` and ``text-400M``: one 400 MB file, incompressible (``os.urandom``) or text (the
  Python sources of this venv, over and over), copied to the target and fetched back, for each
  engine with its defaults (vanilla: Ansible's default ``ssh_args``, ``-C`` among them; Mitogen:
  its own compression; ferrogen: its own compression of the agent link, without ``-C``). The
  task's own duration (``callback_plugins/task_times.py``) gives the throughput; "net" is the
  400 MB over that duration less the same task moving a 128 KiB file in a run of its own (the
  run's fixed cost: connection, module builds, stat, copy module). In the same run the floor is
  measured the same way without Ansible: ``ssh host 'cat > file'`` and ``ssh host cat file``, with
  and without ``-C`` (best of 3), and ssh doing only the work a transfer cannot skip (``floor_put``,
  ``floor_fetch``: SHA-1 on both sides, fsync on the receiving one, MD5 on the controller: of a
  put's source, which the copy module reports, and of what a fetch receives, which the fetch
  action reports). The put's floor is also measured through a relay between the file and ssh,
  where an engine's controller side sits: one that copies each megabyte through its own buffer,
  and one that splices it (``RELAYS``); their "vs floor" is what a process there costs. The
  text runs, floors included, go through a latency-proxy without delay, which counts the bytes
  on the wire; the incompressible ones go straight to the sshd.
- ``loop-bytes``: bytes on the wire per loop item, ``(loop-500 - loop-100) / 400`` from bench.py's
  runs through a proxy, for this checkout's ferrogen and for each ``--compare LABEL=CHECKOUT``
  (a built ferrogen checkout: ``--compare main=../main`` measures main's code in the same run).

Run through bench/run.sh's environment, e.g.::

    .state/bench-venv/bin/python bench/transfer.py [--engines vanilla,mitogen,ferrogen] \\
        [--scenarios small-100,random-400M,text-400M,loop-bytes] [--compare main=../main] [--json FILE] \\
        [--floor-runs 3] [--engine-runs 1]

``--engine-runs N`` keeps the best of N runs of each engine's 400 MB transfer and of its fixed
cost, as ``--floor-runs`` does for the floors: a single run here varies by half.

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
BIG_SIZE = 400 * 1000 * 1000
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

    def __init__(self, tmp: Path, delay_ms: int = ONE_WAY_DELAY_MS):
        self.port = free_port()
        self.stats = Path(tempfile.mkdtemp(dir=tmp)) / "proxy-stats"
        self.proc = subprocess.Popen([str(PROXY), str(self.port), str(SSH_PORT), str(delay_ms), str(self.stats)])
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


PUT_FLOOR = "floor put: ssh + SHA-1 x2, MD5, fsync"
FETCH_FLOOR = "floor fetch: ssh + SHA-1 x2, MD5, fsync"
# Runs of each ssh floor; the best one is kept (--floor-runs).
FLOOR_RUNS = {"runs": 3}
# Runs of each engine's 400 MB transfer and of its fixed cost; the best of each is kept
# (--engine-runs).
ENGINE_RUNS = {"runs": 1}


def timed_ssh(opts: list[str], command: str, stdin: Path | None, stdout: Path | None,
              alongside=(), cleanup=(), relay: str | None = None) -> float:
    """Seconds for ssh host command to run with stdin from one file and stdout to another (on
    this machine), less ssh's own start-up (ssh host true), with each of alongside run in a
    thread meanwhile; the best of FLOOR_RUNS, as a single one varies by a factor of two here.
    Each of cleanup is removed after each run. With relay (a RELAYS script), ssh reads a pipe
    that the relay fills from the file instead of the file itself."""
    best = float("inf")
    for _ in range(FLOOR_RUNS["runs"]):
        started = time.monotonic()
        subprocess.run(["ssh", *opts, "127.0.0.1", "true"], check=True)
        setup = time.monotonic() - started
        with open(stdin or os.devnull, "rb") as src, open(stdout or os.devnull, "wb") as dst:
            # The relay starts before the clock and waits for SIGUSR1, so its start-up is not
            # counted; ssh's is, and is taken off.
            feeder = subprocess.Popen([sys.executable, "-c", relay], stdin=src, stdout=subprocess.PIPE) if relay else None
            if feeder:
                feeder.stdout.read(1)  # its pipe is widened and it waits
            started = time.monotonic()
            threads = [threading.Thread(target=work) for work in alongside]
            for thread in threads:
                thread.start()
            if feeder:
                feeder.send_signal(signal.SIGUSR1)
            subprocess.run(["ssh", *opts, "127.0.0.1", command], stdin=feeder.stdout if feeder else src, stdout=dst,
                           check=True)  # fmt: skip
            for thread in threads:
                thread.join()
            best = min(best, max(time.monotonic() - started - setup, 1e-6))
            if feeder:
                feeder.stdout.close()
                if feeder.wait() != 0:
                    raise RuntimeError(f"the relay failed: {feeder.returncode}")
        for path in (*cleanup, *([stdout] if stdout else [])):
            if os.path.exists(path):
                os.unlink(path)
    return best


def ssh_opts(port: int, compress: bool) -> list[str]:
    return (["-C"] if compress else []) + [*SSH_OPTS[:-4], "-p", str(port), "-l", "root"]


def raw_put(big: Path, port: int, compress: bool) -> float:
    """Seconds for ssh host 'cat > file' to move big (timed_ssh)."""
    dest = f"/tmp/ferrogen-bench-raw-{os.getpid()}"
    return timed_ssh(ssh_opts(port, compress), f"cat > {dest}", big, None, cleanup=[dest])


def raw_fetch(big: Path, work: Path, port: int, compress: bool) -> float:
    """Seconds for ssh host cat big to bring it back into a file (timed_ssh)."""
    return timed_ssh(ssh_opts(port, compress), f"cat {big}", None, work / "raw-fetched")


# The receiving end of floor_put: what the agent must do with a put's bytes besides writing
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

# The sending end of floor_fetch: what the agent must do besides reading the file (its SHA-1).
FLOOR_SENDER = """
import hashlib, os, sys
digest = hashlib.sha1()
fd = os.open(sys.argv[1], os.O_RDONLY)
while data := os.read(fd, 1 << 20):
    digest.update(data)
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
"""


def hash_file(path: Path, name: str) -> None:
    digest = hashlib.new(name)
    with open(path, "rb") as handle:
        while data := handle.read(16 << 20):
            digest.update(data)


# Processes that floor_put may put between the file and ssh, as an engine's controller side
# sits there (the mux, for ferrogen): each widens its pipe to ssh as the mux does (1 MiB,
# transport::PIPE_CAPACITY), tells the bench it is ready with one byte, waits for SIGUSR1,
# then moves the file a megabyte (a transfer chunk) at a time. "copying" reads each megabyte
# and writes it, as any relay that looks at the bytes must; "splice" moves them with
# splice(2), through no buffer of its own: the least a process in that place can cost.
RELAY_START = """
import fcntl, os, signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, 1 << 20)
os.write(1, b"r")
signal.sigwait({signal.SIGUSR1})
"""
RELAYS = {
    "copying": RELAY_START + """
while data := os.read(0, 1 << 20):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
""",
    "splice": RELAY_START + """
while os.splice(0, 1, 1 << 20):
    pass
""",
}


def floor_put(big: Path, port: int, relay: str | None = None) -> float:
    """Seconds for ssh alone to do the work a copy cannot skip (no Ansible, no engine, no
    framing): the target checks the SHA-1 of what it receives and fsyncs it, while the controller
    hashes the source with SHA-1 (the action's checksum) and MD5 (the copy module's md5sum)
    (timed_ssh). It bounds what any engine can reach on this machine. With relay (a RELAYS
    name), ssh reads the file through that relay."""
    dest = f"/tmp/ferrogen-bench-floor-{os.getpid()}"
    hashing = [lambda name=name: hash_file(big, name) for name in ("sha1", "md5")]
    return timed_ssh(ssh_opts(port, False), f"/usr/bin/python3 -c {shlex.quote(FLOOR_RECEIVER)} {dest}", big, None,
                     alongside=hashing, cleanup=[dest], relay=RELAYS[relay] if relay else None)  # fmt: skip


def floor_fetch(big: Path, work: Path, port: int) -> float:
    """Seconds for ssh alone to do the work a fetch cannot skip: the target reads the file and
    hashes it (SHA-1), the controller writes what arrives, hashes it with SHA-1 (the checksum
    the fetch action compares) and MD5 (the `md5sum` it reports) and fsyncs it."""
    dest = work / "floor-fetched"

    def receive(proc: subprocess.Popen) -> None:
        digests = [hashlib.sha1(), hashlib.md5()]  # noqa: S324 - the md5sum vanilla's fetch reports
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        while data := proc.stdout.read(1 << 20):
            for digest in digests:
                digest.update(data)
            os.write(fd, data)
        os.fsync(fd)
        os.close(fd)

    best = float("inf")
    for _ in range(FLOOR_RUNS["runs"]):
        started = time.monotonic()
        subprocess.run(["ssh", *ssh_opts(port, False), "127.0.0.1", "true"], check=True)
        setup = time.monotonic() - started
        started = time.monotonic()
        proc = subprocess.Popen(["ssh", *ssh_opts(port, False), "127.0.0.1",
                                 f"/usr/bin/python3 -c {shlex.quote(FLOOR_SENDER)} {big}"], stdout=subprocess.PIPE)  # fmt: skip
        receive(proc)
        proc.wait()
        best = min(best, max(time.monotonic() - started - setup, 1e-6))
        os.unlink(dest)
    return best


def transfer_task_secs(engine: str, work: Path, op: str, src: Path, port: int, label: str) -> dict:
    """One run of transfer_big.yml (op copy) or transfer_fetch.yml (op fetch) moving src;
    "secs" is the transfer task's own duration."""
    tmp = Path(tempfile.mkdtemp(prefix=f"tbig-{engine}-", dir=work))
    dest = f"/tmp/ferrogen-bench-big-{engine}-{os.getpid()}"
    inv = inventory(tmp / "inventory.ini", port)
    log = bench.LOG_DIR / f"transfer-{label}-{op}-{engine}.log"
    playbook, task = {"copy": ("transfer_big.yml", "copy big file"), "fetch": ("transfer_fetch.yml", "fetch big file")}[op]
    try:
        result = run_playbook(engine, playbook, inv, ["-e", f"src={src}", "-e", f"dest={dest}"], log, tmp)
    finally:
        if os.path.exists(dest):
            os.unlink(dest)
    result["secs"] = result["tasks"].get(task)
    return result


def bench_big(engine: str, work: Path, op: str, big: Path, fixed_cost_file: Path, label: str, text: bool) -> dict:
    """op of big by engine, timed, less its fixed cost; through a counting proxy for text. The
    best of ENGINE_RUNS runs of each, as the floors are the best of FLOOR_RUNS."""
    result, fixed = None, None
    for _ in range(ENGINE_RUNS["runs"]):
        proxy = Proxy(work, delay_ms=0) if text else None
        try:
            run = transfer_task_secs(engine, work, op, big, proxy.port if proxy else SSH_PORT, label)
        finally:
            wire = proxy.stop() if proxy else None
        run["wire_bytes"] = sum(wire) if wire else None
        if result is None or (run["secs"] or float("inf")) < (result["secs"] or float("inf")):
            result = run
        run_fixed = transfer_task_secs(engine, work, op, fixed_cost_file, SSH_PORT, f"{label}-fixed-cost")
        if fixed is None or (run_fixed["secs"] or float("inf")) < (fixed["secs"] or float("inf")):
            fixed = run_fixed
    secs = result["secs"]
    result.update({"secs": secs, "mb_s": BIG_SIZE / secs / 1e6 if secs else None, "fixed_s": fixed["secs"]})
    net = secs - fixed["secs"] if secs and fixed["secs"] and fixed["rc"] == 0 else None
    result["net_mb_s"] = BIG_SIZE / net / 1e6 if net and net > 0 else None
    result["rc"] = result["rc"] or fixed["rc"]
    return result


def text_file(path: Path) -> None:
    """BIG_SIZE bytes of text: this venv's Python sources, over and over."""
    sources = sorted(Path(sys.prefix).rglob("*.py"))
    written = 0
    with open(path, "wb") as out:
        while written < BIG_SIZE:
            for source in sources:
                data = source.read_bytes()[: BIG_SIZE - written]
                out.write(data)
                written += len(data)
                if written >= BIG_SIZE:
                    break


def proxied_ssh(work: Path, measure) -> tuple[float, int]:
    """measure(port) through a counting proxy: (seconds, bytes on the wire of one run; each of
    the FLOOR_RUNS runs moves the same)."""
    proxy = Proxy(work, delay_ms=0)
    try:
        secs = measure(proxy.port)
    finally:
        wire = proxy.stop()
    return secs, sum(wire) // FLOOR_RUNS["runs"]


def bench_file(kind: str, engines: list[str], work: Path, results: dict, lines: list[str]) -> None:
    """The random-400M or text-400M scenario: floors, then each engine's copy and fetch."""
    text = kind == "text-400M"
    big = work / f"{kind}.bin"
    if text:
        text_file(big)
    else:
        with open(big, "wb") as out:
            for _ in range(BIG_SIZE // 1_000_000):
                out.write(os.urandom(1_000_000))
    fixed_cost_file = work / "fixed-cost.bin"
    fixed_cost_file.write_bytes(os.urandom(FIXED_COST_SIZE))
    floors = {}
    for name, measure in {
        "ssh 'cat > file'": lambda port: raw_put(big, port, compress=False),
        "ssh -C 'cat > file'": lambda port: raw_put(big, port, compress=True),
        PUT_FLOOR: lambda port: floor_put(big, port),
        "  the same through a copying relay": lambda port: floor_put(big, port, relay="copying"),
        "  the same through a splice relay": lambda port: floor_put(big, port, relay="splice"),
        "ssh cat file": lambda port: raw_fetch(big, work, port, compress=False),
        "ssh -C cat file": lambda port: raw_fetch(big, work, port, compress=True),
        FETCH_FLOOR: lambda port: floor_fetch(big, work, port),
    }.items():
        secs, wire = proxied_ssh(work, measure) if text else (measure(SSH_PORT), None)
        floors[name] = {"secs": secs, "mb_s": BIG_SIZE / secs / 1e6, "wire_bytes": wire}
        print(f"  {kind} {name}: {floors[name]}", file=sys.stderr, flush=True)
    results[kind] = {"floors": floors}
    lines += ["", f"{kind:38} {'s':>7} {'MB/s':>7} {'fixed s':>8} {'net MB/s':>9} {'vs floor':>9} {'wire MB':>8}"]
    for name, floor in floors.items():
        wire = f"{floor['wire_bytes'] / 1e6:8.1f}" if floor["wire_bytes"] else f"{'-':>8}"
        relayed = f"{floor['mb_s'] / floors[PUT_FLOOR]['mb_s']:9.0%}" if "relay" in name else f"{'':9}"
        lines.append(f"  {name:36} {floor['secs']:7.2f} {floor['mb_s']:7.1f} {'':8} {'':9} {relayed} {wire}")
    for op, floor_name in (("copy", PUT_FLOOR), ("fetch", FETCH_FLOOR)):
        for engine in engines:
            r = bench_big(engine, work, op, big, fixed_cost_file, kind, text)
            results[kind][f"{engine} {op}"] = r
            print(f"  {kind} {engine} {op}: {r}", file=sys.stderr, flush=True)
            if r["rc"] != 0 or not r["mb_s"]:
                lines.append(f"  {engine + ' ' + op:36} FAILED (see {r['log']})")
                continue
            net = (f"{r['net_mb_s']:9.1f} {r['net_mb_s'] / floors[floor_name]['mb_s']:9.0%}" if r["net_mb_s"]
                   else f"{'-':>9} {'-':>9}")  # fmt: skip
            wire = f"{r['wire_bytes'] / 1e6:8.1f}" if r["wire_bytes"] else f"{'-':>8}"
            lines.append(f"  {engine + ' ' + op:36} {r['secs']:7.2f} {r['mb_s']:7.1f} {r['fixed_s']:8.2f} {net} {wire}")
    big.unlink()


def bench_loop_bytes(versions: dict[str, dict[str, str]], results: dict, lines: list[str]) -> None:
    """Bytes on the wire per loop item for each ferrogen version, from runs through a proxy."""
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    results["loop-bytes"] = {}
    lines += ["", f"loop-bytes (ferrogen)  {'loop-100 B':>11} {'loop-500 B':>11} {'B/item':>7}"]
    for label, env in versions.items():
        wire = {}
        for scenario in ("loop-100", "loop-500"):
            log = bench.LOG_DIR / f"transfer-{scenario}-{label}.log"
            r = bench.run_once("ferrogen", scenario, playbook_bin, log, None, env)
            wire[scenario] = r["bytes"] if r["rc"] == 0 else None
        per_item = (wire["loop-500"] - wire["loop-100"]) / 400 if all(wire.values()) else None
        results["loop-bytes"][label] = wire | {"bytes_per_item": per_item}
        print(f"  loop-bytes {label}: {results['loop-bytes'][label]}", file=sys.stderr, flush=True)
        shown = [f"{v:11d}" if v else f"{'FAILED':>11}" for v in wire.values()]
        lines.append(f"  {label:20} {' '.join(shown)} {per_item:7.1f}" if per_item else f"  {label:20} FAILED")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default=",".join(bench.ENGINES))
    ap.add_argument("--scenarios", default="small-100,random-400M,text-400M,loop-bytes")
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=CHECKOUT",
                    help="loop-bytes: also measure this built ferrogen checkout")
    ap.add_argument("--floor-runs", type=int, default=3, help="runs of each ssh floor (the best is kept)")
    ap.add_argument("--engine-runs", type=int, default=1,
                    help="runs of each engine's 400 MB transfer and its fixed cost (the best of each is kept)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    FLOOR_RUNS["runs"] = args.floor_runs
    ENGINE_RUNS["runs"] = args.engine_runs
    engines = [e for e in args.engines.split(",") if e]
    scenarios = [s for s in args.scenarios.split(",") if s]
    bench.set_child_subreaper(1)
    bench.LOG_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    results: dict = {"round_trip_s": ROUND_TRIP}
    lines = []
    try:
        if "loop-bytes" in scenarios:
            bench_loop_bytes({**bench.versions_from(args.compare), "this": {}}, results, lines)
        if "small-100" in scenarios:
            results["small-100"] = {}
            lines += ["", f"small-100 (26 ms round trip)  {'wall 100':>9} {'wall 1':>8} {'RT/file':>8} {'wire KB/file':>13}"]
            for engine in engines:
                r = bench_small(engine, work)
                results["small-100"][engine] = r
                print(f"  small-100 {engine}: {r}", file=sys.stderr, flush=True)
                lines.append(f"  {engine:27} {r['wall_100']:9.2f} {r['wall_1']:8.2f} {r['round_trips_per_file']:8.2f} "
                             f"{r['wire_bytes_per_file'] / 1000:13.1f}" + ("" if r["rc"] == 0 else "  FAILED"))  # fmt: skip
            mitogen, ferrogen = results["small-100"].get("mitogen"), results["small-100"].get("ferrogen")
            if mitogen and ferrogen:
                lines.append(f"  ferrogen / mitogen wall (100 files): {ferrogen['wall_100'] / mitogen['wall_100']:.2f}x")
        for kind in ("random-400M", "text-400M"):
            if kind in scenarios:
                bench_file(kind, engines, work, results, lines)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

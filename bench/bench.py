"""Side-by-side benchmark: vanilla Ansible vs Mitogen vs ferrogen against the same local sshd.

Run through bench/run.sh, which prepares .state/bench-venv (ansible-core as in CI, Mitogen from
PyPI) and the test sshd. Every (scenario, engine) pair runs BENCH_RUNS times (default 3), the
engines taking turns; the table shows the best and the median wall time, the controller CPU of the
best run and the ratios of the best runs.

A scenario without added latency is timed with its targets reached directly (the test sshd, or
for several targets one port each on extra sshd daemons), and then run once more through one
latency-proxy per target, which counts the bytes on the wire. The proxies are Python processes
forwarding every byte; on two cores their CPU would weigh on whichever engine keeps the machine
busiest. A scenario that adds latency is timed through its proxies, which count its bytes too.

Controller CPU is user+sys of everything the run started on this machine: ansible-playbook, its
workers, ssh clients, Mitogen's or ferrogen's multiplexer. The driver makes itself a child
subreaper, so processes that outlive or detach from ansible-playbook (the mux, ssh ControlPersist
masters) are reparented to it, reaped after the run and counted too.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".state"
PLAYBOOKS = REPO / "tests" / "playbooks"
LOG_DIR = STATE / "bench-logs"
FERROGEN_STRATEGY = REPO / "plugin" / "ansible_ferrogen" / "plugins" / "strategy"
# The checkout's plugin/ holds ansible_collections/ferrogen/mux (connection-only mode).
FERROGEN_COLLECTIONS = REPO / "plugin"
BENCH_PLAYBOOKS = REPO / "bench" / "playbooks"
LATENCY_PROXY = REPO.parent / "shared" / "tools" / "latency-proxy"
MUX_BINARY = REPO / "target" / "release" / "ferrogen-mux"
SSH_PORT = int(os.environ.get("FERROGEN_SSH_PORT", "2222"))
# Every engine starts its connections through the account's login shell, which sources
# ~/.bashrc under sshd; root's on this machine runs `pyenv init`, some 50 processes per login.
USER_HELP = (
    "the targets' login account (default root). ci/setup.sh authorizes the bench key for root and "
    "for ferronopw, whose ~/.bashrc is Debian's stock one and who may sudo without a password"
)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One playbook run against `targets` distinct targets (distinct ports of one sshd, or of
    proxies in front of it)."""

    playbook: Path
    extra: tuple[str, ...] = ()
    targets: int = 1
    # One-way delay the proxy adds: a round trip costs twice this.
    delay_ms: int = 0
    # Tasks (or loop items) per target, for the per-task figures.
    tasks: int = 1
    forks: int = 5


LOOP = PLAYBOOKS / "loop100.yml"
SCENARIOS = {
    "ping": Scenario(PLAYBOOKS / "ping.yml"),
    "loop-20": Scenario(LOOP, ("-e", "loop_count=20"), tasks=20),
    "loop-20-rtt26": Scenario(LOOP, ("-e", "loop_count=20"), delay_ms=13, tasks=20),
    "loop-100": Scenario(LOOP, ("-e", "loop_count=100"), tasks=100),
    "loop-500": Scenario(LOOP, ("-e", "loop_count=500"), tasks=500),
    "targets-20x10": Scenario(BENCH_PLAYBOOKS / "tasks10.yml", targets=20, tasks=10, forks=20),
    "tasks-100": Scenario(BENCH_PLAYBOOKS / "tasks100.yml", tasks=100),
    "become-30": Scenario(BENCH_PLAYBOOKS / "become30.yml", tasks=30),
}
# ferrogen runs in strategy mode (mitogen_linear); ferrogen-conn in connection-only mode (Ansible's
# own linear strategy, ferrogen.mux.ssh as the connection). ferrogen-conn-preload, run only when
# named, is ferrogen-conn with the ferrogen.mux.preload callback enabled, which loads the plugin in
# ansible-playbook before workers fork: what connection-only workers spend on loading it is the
# difference.
ENGINES = ["vanilla", "mitogen", "ferrogen", "ferrogen-conn"]
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
LIBC = ctypes.CDLL(None, use_errno=True)


def set_child_subreaper(value: int) -> bool:
    """Make this process a child subreaper (1) or not (0); False if the kernel refused."""
    return LIBC.prctl(PR_SET_CHILD_SUBREAPER, value, 0, 0, 0) == 0


def mitogen_strategy_dir() -> Path:
    import ansible_mitogen  # noqa: PLC0415 - only in the bench venv

    return Path(ansible_mitogen.__file__).resolve().parent / "plugins" / "strategy"


def engine_env(engine: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MITOGEN_"))}
    env.update(
        {
            "ANSIBLE_HOME": str(tmp / "home"),
            "ANSIBLE_LOCAL_TEMP": str(tmp / "home" / "tmp"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
        }
    )
    if engine == "vanilla":
        cp = Path(tempfile.mkdtemp(prefix="bcp-", dir="/tmp"))
        env.update(
            {
                "ANSIBLE_PIPELINING": "True",
                "ANSIBLE_SSH_ARGS": "-C -o ControlMaster=auto -o ControlPersist=60s",
                "ANSIBLE_SSH_CONTROL_PATH_DIR": str(cp),
            }
        )
    elif engine == "mitogen":
        env.update({"ANSIBLE_STRATEGY_PLUGINS": str(mitogen_strategy_dir()), "ANSIBLE_STRATEGY": "mitogen_linear"})
    elif engine == "ferrogen":
        env.update({"ANSIBLE_STRATEGY_PLUGINS": str(FERROGEN_STRATEGY), "ANSIBLE_STRATEGY": "mitogen_linear"})
    elif engine in ("ferrogen-conn", "ferrogen-conn-preload"):
        env.update({"ANSIBLE_COLLECTIONS_PATH": str(FERROGEN_COLLECTIONS), "ANSIBLE_TRANSPORT": "ferrogen.mux.ssh"})
        if engine == "ferrogen-conn-preload":
            env["ANSIBLE_CALLBACKS_ENABLED"] = ",".join(filter(None, [env.get("ANSIBLE_CALLBACKS_ENABLED"),
                                                                      "ferrogen.mux.preload"]))  # fmt: skip
    else:
        raise ValueError(engine)
    return env


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def every_process(name: str):
    """(pid, contents of /proc/PID/<name>) for every process still there when read."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/{name}") as fh:
                yield int(entry), fh.read()
        except OSError:
            continue


def my_children() -> list[int]:
    me = os.getpid()
    # field 4 (ppid) comes after the parenthesised comm, which may contain spaces
    return [pid for pid, stat in every_process("stat") if int(stat.rsplit(")", 1)[1].split()[1]) == me]


def reap_leftovers(grace: float = 3.0, keep: set[int] = frozenset()) -> None:
    """Wait briefly for adopted descendants (mux, ssh masters) to exit, then terminate the rest
    (but the processes in keep: the run's latency proxies)."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if not set(my_children()) - keep:
                return
            time.sleep(0.05)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in set(my_children()) - keep:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 2
        while time.monotonic() < end:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.05)


class Proxies:
    """One latency-proxy per target, each on its own port in front of the test sshd."""

    def __init__(self, count: int, delay_ms: int, tmp: Path):
        self.stats = [tmp / f"proxy-{i}.stats" for i in range(count)]
        self.total = 0
        self.ports = [free_port() for _ in range(count)]
        self.procs = [
            subprocess.Popen([sys.executable, str(LATENCY_PROXY), str(port), str(SSH_PORT), str(delay_ms), str(stats)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for port, stats in zip(self.ports, self.stats, strict=True)
        ]
        wait_for_ports(self.ports, "latency-proxy")

    @property
    def pids(self) -> set[int]:
        return {proc.pid for proc in self.procs}

    def stop(self) -> int:
        """Stop the proxies (once); return the bytes they carried in both directions."""
        if all(proc.poll() is not None for proc in self.procs):
            return self.total
        time.sleep(0.3)  # a proxy writes its line when the proxied connection has closed
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait()
        self.total = 0
        for stats in self.stats:
            if stats.exists():
                for line in stats.read_text().split():
                    self.total += int(line.split("=")[1])
        return self.total


class TargetSshds:
    """sshd daemons beside the test sshd, with the same configuration, giving each of `count`
    targets a port of its own: distinct targets without a proxy in between.

    They run outside this driver's process tree, like the test sshd. Inside it, a target's
    processes that outlive their session's sshd (an engine's interpreter finishing its clean-up)
    would be adopted by this subreaper, and their CPU, which is the target's, counted as the
    controller's."""

    # OpenSSH's MAX_LISTEN_SOCKS is 16.
    PORTS_PER_DAEMON = 15

    def __init__(self, count: int, tmp: Path):
        self.ports = [free_port() for _ in range(count)]
        config = [line for line in (STATE / "sshd" / "sshd_config").read_text().splitlines()
                  if not line.startswith(("Port ", "PidFile "))]  # fmt: skip
        self.pid_files = []
        with orphans_go_to_init():
            for first in range(0, count, self.PORTS_PER_DAEMON):
                path = tmp / f"sshd-{first}.config"
                pid_file = tmp / f"sshd-{first}.pid"
                ports = self.ports[first : first + self.PORTS_PER_DAEMON]
                # Global settings go before the config's Match blocks.
                at = next((i for i, line in enumerate(config) if line.startswith("Match ")), len(config))
                own = [f"PidFile {pid_file}", *(f"Port {p}" for p in ports)]
                path.write_text("\n".join([*config[:at], *own, *config[at:]]) + "\n")
                # Without -D, sshd detaches: its first process exits once the daemon is forked.
                subprocess.run(["/usr/sbin/sshd", "-f", str(path), "-E", str(tmp / f"sshd-{first}.log")], check=True)
                self.pid_files.append(pid_file)
        wait_for_ports(self.ports, "sshd")

    def stop(self) -> None:
        pids = [int(pid_file.read_text()) for pid_file in self.pid_files]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(process_exists(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)


@contextlib.contextmanager
def orphans_go_to_init():
    """While inside, this process is not a child subreaper: a descendant whose parent exits is
    adopted by init, and so leaves this process's tree for good."""
    was = ctypes.c_int(0)
    LIBC.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
    set_child_subreaper(0)
    try:
        yield
    finally:
        set_child_subreaper(was.value)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_ports(ports: list[int], what: str) -> None:
    deadline = time.monotonic() + 10
    for port in ports:
        while not port_open(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} on port {port} did not start")
            time.sleep(0.02)


def free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def write_inventory(path: Path, ports: list[int], user: str) -> None:
    key = STATE / "id_ed25519"
    lines = [
        f"t{i:02d} ansible_host=127.0.0.1 ansible_port={port} ansible_user={user} "
        f"ansible_ssh_private_key_file={key} ansible_python_interpreter=/usr/bin/python3"
        for i, port in enumerate(ports, 1)
    ]
    lines += ["", "[all:vars]", "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'"]
    path.write_text("\n".join(lines) + "\n")


def descends_from_me(pid: int) -> bool:
    """Whether pid is a descendant of this driver (a subreaper, so the mux stays below it)."""
    me = os.getpid()
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
        if pid == me:
            return True
    return False


class PeakRss:
    """Samples the peak RSS (VmHWM) of the run's ferrogen-mux while the run lasts. It scans /proc
    only until it has found the mux and then reads that one process's status: a scan of every
    process each 50 ms would cost the run a noticeable share of two cores."""

    def __init__(self):
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        mux = None
        while not self._stop.wait(0.05):
            if mux is None:
                mux = find_mux()
                continue
            try:
                with open(f"/proc/{mux}/status") as fh:
                    status = fh.read()
            except OSError:
                return
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


def find_mux() -> int | None:
    for pid, comm in every_process("comm"):
        if comm == "ferrogen-mux\n" and descends_from_me(pid):
            return pid
    return None


def version_env(checkout: Path) -> dict[str, str]:
    """The environment that runs checkout's plugin (strategies and collection) and mux instead of
    this one's (for A/B runs)."""
    strategy = checkout / "plugin" / "ansible_ferrogen" / "plugins" / "strategy"
    mux = checkout / "target" / "release" / "ferrogen-mux"
    for needed in (strategy, mux):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: is {checkout} a built ferrogen checkout?")
    return {"ANSIBLE_STRATEGY_PLUGINS": str(strategy), "ANSIBLE_COLLECTIONS_PATH": str(checkout / "plugin"),
            "FERROGEN_MUX": str(mux)}


def versions_from(specs: list[str]) -> dict[str, dict[str, str]]:
    """{label: version_env} from LABEL=CHECKOUT arguments."""
    versions = {}
    for spec in specs:
        label, _, checkout = spec.partition("=")
        if not checkout:
            raise SystemExit(f"{spec!r}: expected LABEL=CHECKOUT")
        versions[label] = version_env(Path(checkout).resolve())
    return versions


@contextlib.contextmanager
def direct_targets(spec: Scenario):
    """The ports of the timed runs of spec: None when they go through proxies (the scenario adds
    latency), else the test sshd's port or, for several targets, TargetSshds."""
    if spec.delay_ms:
        yield None
    elif spec.targets == 1:
        yield [SSH_PORT]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            sshds = TargetSshds(spec.targets, Path(tmp))
            try:
                yield sshds.ports
            finally:
                sshds.stop()


def run_once(engine: str, scenario: str, playbook_bin: Path, log: Path, direct_ports: list[int] | None,
             env_extra: dict[str, str] | None = None, user: str = "root") -> dict:
    """One run: through a proxy per target when direct_ports is None (then "bytes" is what they
    carried), else straight to those ports ("bytes" None). env_extra overrides the engine's
    environment. user: the targets' login account."""
    spec = SCENARIOS[scenario]
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{engine}-"))
    env: dict[str, str] = {}
    proxies = Proxies(spec.targets, spec.delay_ms, tmp) if direct_ports is None else None
    keep = proxies.pids if proxies else set()
    try:
        inventory = tmp / "inventory.ini"
        write_inventory(inventory, proxies.ports if proxies else direct_ports, user)
        env = engine_env(engine, tmp) | {"ANSIBLE_FORKS": str(spec.forks)} | (env_extra or {})
        cmd = [str(playbook_bin), "-i", str(inventory), str(spec.playbook), *spec.extra]
        cpu0 = children_cpu()
        rss = PeakRss() if engine.startswith("ferrogen") else None
        t0 = time.monotonic()
        with open(log, "w") as out:
            try:
                proc = subprocess.run(
                    cmd, env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    timeout=900, check=False,
                )  # fmt: skip
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        wall = time.monotonic() - t0
        reap_leftovers(keep=keep)
        cpu = children_cpu() - cpu0
        peak_rss = rss.stop() if rss else 0
        wire = proxies.stop() if proxies else None
        return {"rc": rc, "wall": wall, "cpu": cpu, "bytes": wire, "mux_rss_kib": peak_rss or None, "log": str(log)}
    finally:
        if proxies:
            proxies.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if "ANSIBLE_SSH_CONTROL_PATH_DIR" in env:
            shutil.rmtree(env["ANSIBLE_SSH_CONTROL_PATH_DIR"], ignore_errors=True)


def mux_start_to_ready(runs: int = 10) -> float | None:
    """Best time from spawning ferrogen-mux to its READY line, in seconds."""
    if not MUX_BINARY.exists():
        return None
    best = None
    for _ in range(runs):
        sock_dir = Path(tempfile.mkdtemp(prefix="bench-mux-"))
        t0 = time.monotonic()
        proc = subprocess.Popen([str(MUX_BINARY), "serve", "--socket", str(sock_dir / "mux.sock")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = proc.stdout.readline()
        elapsed = time.monotonic() - t0
        proc.stdin.close()
        proc.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)
        if line.startswith(b"READY"):
            best = elapsed if best is None else min(best, elapsed)
    return best


def fmt_ratio(a, b) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def measure(engines: list[str], scenario: str, playbook_bin: Path, runs: int, direct_ports: list[int] | None,
            user: str) -> dict[str, dict]:
    """Per engine, the best of `runs` timed runs; with direct_ports, the bytes on the wire come
    from one more run through proxies. The engines take turns run by run, so that a machine
    whose speed drifts during the scenario does not favour whichever engine went first."""
    best: dict[str, dict] = {}
    walls: dict[str, list[float]] = {engine: [] for engine in engines}
    planned = [(f"run {i + 1}/{runs}", direct_ports) for i in range(runs)]
    if direct_ports is not None:
        planned.append(("bytes on the wire, through proxies", None))
    for i, (what, ports) in enumerate(planned):
        for engine in engines:
            if best.get(engine, {}).get("status") == "FAILED":
                continue  # a broken engine fails every time; don't waste the other runs
            log = LOG_DIR / f"{scenario}-{engine}-{i + 1}.log"
            r = run_once(engine, scenario, playbook_bin, log, ports, user=user)
            status = "ok" if r["rc"] == 0 else f"FAILED (rc={r['rc']}, see {log})"
            print(f"  {scenario:9} {engine:9} {what}: {r['wall']:7.2f}s wall "
                  f"{r['cpu']:7.2f}s cpu  {status}", file=sys.stderr, flush=True)  # fmt: skip
            if r["rc"] != 0:
                best[engine] = {"status": "FAILED", **r}
            elif ports is None and direct_ports is not None:
                best[engine]["bytes"] = r["bytes"]
            else:
                walls[engine].append(r["wall"])
                if engine not in best or r["wall"] < best[engine]["wall"]:
                    best[engine] = {"status": "ok", **r, "walls": walls[engine]}
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--user", default="root", help=USER_HELP)
    args = ap.parse_args()

    if not set_child_subreaper(1):
        print("bench: warning: could not become a child subreaper; mux CPU may be undercounted", file=sys.stderr)

    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    scenarios = [s for s in args.scenarios.split(",") if s]
    engines = [e for e in args.engines.split(",") if e]
    LOG_DIR.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[str, dict]] = {}
    for scenario in scenarios:
        with direct_targets(SCENARIOS[scenario]) as direct_ports:
            results[scenario] = measure(engines, scenario, playbook_bin, args.runs, direct_ports, args.user)

    # ---------------------------------------------------------------- table
    head = (f"{'scenario':14} {'engine':13} {'wall s':>8} {'median':>8} {'cpu s':>8} {'wire KiB':>9} {'mux RSS MiB':>11} "
            f"{'vs mitogen':>11} {'vs vanilla':>11}")  # fmt: skip
    lines = [f"targets log in as {args.user}", head, "-" * len(head)]
    for scenario in scenarios:
        row = results[scenario]

        def wall(e, row=row):
            r = row.get(e)
            return r["wall"] if r and r["status"] == "ok" else None

        for engine in engines:
            r = row[engine]
            if r["status"] != "ok":
                lines.append(f"{scenario:14} {engine:13} {'FAILED':>8}")
                continue
            rss = f"{r['mux_rss_kib'] / 1024:.1f}" if r.get("mux_rss_kib") else "-"
            lines.append(
                f"{scenario:14} {engine:13} {r['wall']:8.2f} {statistics.median(r['walls']):8.2f} {r['cpu']:8.2f} "
                f"{r['bytes'] / 1024:9.0f} {rss:>11} "
                f"{fmt_ratio(r['wall'], wall('mitogen')):>11} {fmt_ratio(r['wall'], wall('vanilla')):>11}"
            )

    def pair(first, second):
        for engine in engines:
            a, b = results.get(first, {}).get(engine), results.get(second, {}).get(engine)
            yield engine, (a, b) if a and b and a["status"] == b["status"] == "ok" else None

    if "loop-100" in results and "loop-500" in results:
        lines += ["", "marginal cost per loop item = (loop-500 - loop-100) / 400:"]
        for engine, runs in pair("loop-100", "loop-500"):
            if runs:
                a, b = runs
                lines.append(f"  {engine:13} {(b['wall'] - a['wall']) / 400 * 1000:7.1f} ms wall, "
                             f"{(b['cpu'] - a['cpu']) / 400 * 1000:7.1f} ms cpu, "
                             f"{(b['bytes'] - a['bytes']) / 400:7.0f} bytes on the wire")  # fmt: skip
            else:
                lines.append(f"  {engine:13} FAILED")
    if "loop-20" in results and "loop-20-rtt26" in results:
        rtt = 2 * SCENARIOS["loop-20-rtt26"].delay_ms / 1000
        lines += ["", f"round trips per item over a {rtt * 1000:.0f} ms round trip = (loop-20-rtt26 - loop-20) / rtt / 20:"]
        for engine, runs in pair("loop-20", "loop-20-rtt26"):
            if runs:
                a, b = runs
                lines.append(f"  {engine:13} {(b['wall'] - a['wall']) / rtt / 20:5.2f}")
    if "ferrogen" in engines:
        ready = mux_start_to_ready()
        lines += ["", f"ferrogen-mux start to READY (best of 10): {ready * 1000:.1f} ms" if ready else
                  "ferrogen-mux start to READY: binary missing"]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": args.runs, "user": args.user, "results": results}, indent=2))
    failed = [f"{s}/{e}" for s in scenarios for e in engines if results[s][e]["status"] != "ok"]
    if failed:
        print(f"\nbench: FAILED scenarios: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

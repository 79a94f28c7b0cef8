"""The 100-item loop through one and through two ssh intermediaries (mitogen_via), Mitogen and
ferrogen in one run: wall time and bytes on the wire, and ferrogen's ratio to Mitogen.

Every hop is the test sshd behind a latency-proxy of its own (13 ms each way by default), so
each hop of the route adds its own delay:

    controller -> proxy(hop1) -> hop1 -> proxy(hop2) -> hop2 -> proxy(target) -> target

All hops are this machine's sshd (distinct ports, so distinct connections). Run with the bench
venv's Python (bench/run.sh makes it):  .state/bench-venv/bin/python bench/via.py [--delay 13]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402

ENGINES = ("mitogen", "ferrogen")
ROUTES = {"one hop": 1, "two hops": 2}


def start_proxies(count: int, delay_ms: int, stats: list[Path]) -> tuple[list[int], list[subprocess.Popen]]:
    ports = [bench.free_port() for _ in range(count)]
    procs = [
        subprocess.Popen(  # noqa: S603 - the shared tool, our arguments
            [sys.executable, str(bench.LATENCY_PROXY), str(port), str(bench.SSH_PORT), str(delay_ms), str(path)],
            stdin=subprocess.DEVNULL,
        )
        for port, path in zip(ports, stats, strict=True)
    ]
    bench.wait_for_ports(ports, "latency-proxy")
    return ports, procs


def inventory(path: Path, ports: list[int], hops: int) -> Path:
    """hop1 .. hopN, each via the one before, and `target` via the last."""
    lines = ["[all:vars]", "ansible_host=127.0.0.1", "ansible_user=root",
             f"ansible_ssh_private_key_file={bench.STATE / 'id_ed25519'}",
             "ansible_python_interpreter=/usr/bin/python3",
             "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
             "[hops]"]
    for index in range(hops):
        via = f" mitogen_via=hop{index}" if index else ""
        lines.append(f"hop{index + 1} ansible_port={ports[index]}{via}")
    lines += ["[targets]", f"target ansible_port={ports[hops]} mitogen_via=hop{hops}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_once(engine: str, hops: int, delay_ms: int, work: Path, run: int) -> dict:
    # One stats file per proxy and run: a target's bytes cross every link of its route, so each
    # link is shown on its own (controller->hop1, hop1->hop2, ..., last hop->target).
    stats = [work / f"{engine}-{hops}-run{run}-link{index + 1}.stats" for index in range(hops + 1)]
    ports, proxies = start_proxies(hops + 1, delay_ms, stats)
    try:
        inv = inventory(work / f"{engine}-{hops}.ini", ports, hops)
        env = bench.engine_env(engine, work)
        start = time.monotonic()
        proc = subprocess.run(  # noqa: S603
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv), "--limit", "target",
             str(bench.LOOP)],
            env=env, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        )
        wall = time.monotonic() - start
        # A proxy counts a connection only when it closes, and an engine's connections may
        # outlive the playbook for a moment: they are given that moment, and the ones still
        # open then are read from the kernel's counters.
        wait_until_closed(ports, seconds=5.0)
        still_open = [open_connection_bytes(port) for port in ports]
    finally:
        for proxy in proxies:
            proxy.terminate()
        for proxy in proxies:
            proxy.wait()
    if proc.returncode:
        raise SystemExit(f"{engine}, {hops} hop(s) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    links = [link_bytes(path) + open_bytes for path, open_bytes in zip(stats, still_open, strict=True)]
    return {"wall": wall, "bytes": sum(links), "links": links}


def open_connection_bytes(port: int) -> int:
    """Bytes both ways on the established connections to a proxy's listening port (the
    client side of each), from `ss -ti`'s bytes_sent and bytes_received."""
    listing = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],  # noqa: S607
                             capture_output=True, text=True, check=False).stdout
    return sum(int(n) for n in re.findall(r"bytes_(?:sent|received):(\d+)", listing))


def wait_until_closed(ports: list[int], seconds: float) -> None:
    """Wait until no connection to the proxies' ports is left open or closing (TIME-WAIT is
    closed), or `seconds` have passed; then give the proxies a moment to write the lines of the
    ones that closed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        listings = [subprocess.run(["ss", "-tnH", f"( sport = :{port} )"],  # noqa: S607
                                   capture_output=True, text=True, check=False).stdout for port in ports]
        states = [line.split()[0] for listing in listings for line in listing.splitlines() if line.strip()]
        if all(state in ("LISTEN", "TIME-WAIT") for state in states):
            break
        time.sleep(0.1)
    time.sleep(0.3)


def link_bytes(stats: Path) -> int:
    """Bytes both ways through one proxy (its lines are written as its connections close)."""
    total = 0
    if stats.exists():
        for line in stats.read_text().split():
            key, _, value = line.partition("=")
            if key in ("sent", "received"):
                total += int(value)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=int, default=13, help="one-way delay each hop adds, ms")
    parser.add_argument("--runs", type=int, default=1, help="runs per engine and route; the best is shown")
    parser.add_argument("--engine", choices=ENGINES, action="append",
                        help="run only this engine (repeatable); the ratios need both")
    args = parser.parse_args()
    engines = tuple(args.engine or ENGINES)
    results: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-via-") as tmp:
        for route, hops in ROUTES.items():
            for engine in engines:
                runs = [run_once(engine, hops, args.delay, Path(tmp), run) for run in range(args.runs)]
                results[(route, engine)] = min(runs, key=lambda r: r["wall"])
    print(f"loop-100 through mitogen_via hops, {args.delay} ms each way per hop")
    print(f"{'route':<10} {'engine':<9} {'wall s':>8} {'bytes':>10} {'wall vs mitogen':>16} {'bytes vs mitogen':>17}"
          "  bytes by link (controller->hop1, ..., ->target)")
    for route in ROUTES:
        base = results.get((route, "mitogen"))
        for engine in engines:
            r = results[(route, engine)]
            ratios = (f"{r['wall'] / base['wall']:>16.2f} {r['bytes'] / max(base['bytes'], 1):>17.2f}" if base
                      else f"{'-':>16} {'-':>17}")
            print(f"{route:<10} {engine:<9} {r['wall']:>8.2f} {r['bytes']:>10} {ratios}  "
                  + " ".join(str(link) for link in r["links"]))


if __name__ == "__main__":
    main()

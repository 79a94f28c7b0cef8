"""A/B of bench scenarios between two ferrogen versions, on the same sshd.

Each version is a checkout (LABEL=PATH, built) or a git revision (LABEL=rev:REV), which is
checked out with `git worktree add` under the system's temp dir and built there (release
mux; the plugin is the checkout's). Runs of each scenario alternate between the versions,
so a drifting machine favours neither, and the table gives per version the median wall and
CPU time (user+sys of everything the run started), then the ratios of the last version to the
first: the median of the paired runs' ratios, with their range. CPU is the figure to read on a
loaded machine. For example::

    .venv/bin/python bench/ab.py --runs 5 before=rev:main after=.

--engine (repeatable) names the modes compared: ferrogen (strategy mode, the default),
ferrogen-conn (connection-only mode, each version's collection) and ferrogen-conn-preload (see
bench.py). Each version's plugin is compiled for this Python first, as bench/run.sh does.

The benchmark is not run by the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402 - sibling scripts, not a package

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIOS = ("tasks-100", "targets-20x10")


def checkout_of(spec: str) -> Path:
    """The built checkout a version names: a path, or rev:REV checked out and built."""
    if not spec.startswith("rev:"):
        return Path(spec).resolve()
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", spec[4:]],
                         check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    checkout = Path(tempfile.gettempdir()) / f"ferrogen-ab-{rev}"
    if not checkout.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(checkout), rev], check=True)
    print(f"building {spec} in {checkout}", file=sys.stderr, flush=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ferrogen-mux"], cwd=checkout, check=True)
    return checkout


def compile_plugin(checkout: Path) -> None:
    """Bytecode of checkout's plugin for this Python: without it, every worker of a
    connection-only run would compile each plugin file again."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "plugin")], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def ratio_line(name: str, before: list[float], after: list[float]) -> str:
    """after/before: the median of the paired runs' ratios and their range."""
    ratios = [a / b for a, b in zip(after, before, strict=True) if b > 0]
    if not ratios:
        return f"{name} n/a"
    return f"{name} {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--scenario", action="append", choices=sorted(bench.SCENARIOS),
                    help=f"repeatable; default {' and '.join(DEFAULT_SCENARIOS)}")  # fmt: skip
    ap.add_argument("--engine", action="append", choices=["ferrogen", "ferrogen-conn", "ferrogen-conn-preload"],
                    help="repeatable; default ferrogen (strategy mode)")  # fmt: skip
    ap.add_argument("versions", nargs="+", metavar="LABEL=PATH|LABEL=rev:REV")
    args = ap.parse_args()
    specs = {}
    for spec in args.versions:
        label, _, where = spec.partition("=")
        if not where:
            raise SystemExit(f"{spec!r}: expected LABEL=PATH or LABEL=rev:REV")
        checkout = checkout_of(where)
        compile_plugin(checkout)
        specs[label] = f"{label}={checkout}"
    versions = bench.versions_from(list(specs.values()))
    bench.set_child_subreaper(1)
    bench.LOG_DIR.mkdir(parents=True, exist_ok=True)
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    print(f"load: {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f} on {os.cpu_count()} cpus",
          file=sys.stderr)  # fmt: skip
    engines = args.engine or ["ferrogen"]
    failed = False
    for scenario in args.scenario or DEFAULT_SCENARIOS:
        runs: dict[tuple[str, str], list[dict]] = {(engine, label): [] for engine in engines for label in versions}
        with bench.direct_targets(bench.SCENARIOS[scenario]) as ports:
            for run in range(args.runs):
                for (engine, label), done in runs.items():
                    log = bench.LOG_DIR / f"ab-{scenario}-{engine}-{label}.log"
                    r = bench.run_once(engine, scenario, playbook_bin, log, ports, versions[label])
                    if r["rc"] != 0:
                        print(f"{scenario} {engine} {label} run {run + 1}: FAILED (see {log})", file=sys.stderr)
                        failed = True
                        r = {"wall": float("nan"), "cpu": float("nan")}
                    done.append(r)
                    print(f"{scenario} {engine} {label} run {run + 1}: {r['wall']:.2f} s wall, {r['cpu']:.2f} s cpu",
                          file=sys.stderr, flush=True)  # fmt: skip
        print(f"{scenario}: {'engine':19} {'version':12} {'runs':>5} {'wall median':>12} {'cpu median':>11}  cpu of each run")
        for (engine, label), done in runs.items():
            ok = [r for r in done if r["wall"] == r["wall"]]
            if ok:
                print(f"{' ' * len(scenario)}  {engine:19} {label:12} {len(ok):5} "
                      f"{statistics.median(r['wall'] for r in ok):12.2f} {statistics.median(r['cpu'] for r in ok):11.2f}  "
                      + " ".join(f"{r['cpu']:.2f}" for r in done))  # fmt: skip
        labels = list(versions)
        for engine in engines if len(labels) >= 2 else []:
            first, last = runs[engine, labels[0]], runs[engine, labels[-1]]
            pairs = [(b, a) for b, a in zip(first, last, strict=True) if b["wall"] == b["wall"] and a["wall"] == a["wall"]]
            print(f"{' ' * len(scenario)}  {engine} {labels[-1]}/{labels[0]}: "
                  + ratio_line("cpu", [b["cpu"] for b, _ in pairs], [a["cpu"] for _, a in pairs]) + ", "
                  + ratio_line("wall", [b["wall"] for b, _ in pairs], [a["wall"] for _, a in pairs]))  # fmt: skip
    print(f"load at the end: {' '.join(f'{load:.1f}' for load in os.getloadavg())}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

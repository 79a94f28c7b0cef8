"""A/B of one bench scenario between ferrogen checkouts, on the same sshd.

Alternates runs of a scenario of bench/bench.py between versions, each with its own plugin and
mux, and prints per version the median and best wall time and the median controller CPU.
Alternating keeps a drifting machine from favouring one version. For example::

    git worktree add /tmp/ferrogen-before HEAD~1 && (cd /tmp/ferrogen-before && cargo build --release)
    .state/bench-venv/bin/python bench/ab.py --scenario tasks-100 before=/tmp/ferrogen-before after=.

The benchmark is not run by the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402 - sibling scripts, not a package


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--scenario", default="tasks-100", choices=sorted(bench.SCENARIOS))
    ap.add_argument("versions", nargs="+", metavar="LABEL=CHECKOUT")
    args = ap.parse_args()
    versions = bench.versions_from(args.versions)
    bench.set_child_subreaper(1)
    bench.LOG_DIR.mkdir(parents=True, exist_ok=True)
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    runs: dict[str, list[dict]] = {label: [] for label in versions}
    with bench.direct_targets(bench.SCENARIOS[args.scenario]) as ports:
        for run in range(args.runs):
            for label, env in versions.items():
                log = bench.LOG_DIR / f"ab-{args.scenario}-{label}.log"
                r = bench.run_once("ferrogen", args.scenario, playbook_bin, log, ports, env)
                if r["rc"] != 0:
                    print(f"{label} run {run + 1}: FAILED (see {log})", file=sys.stderr)
                    continue
                runs[label].append(r)
                print(f"{label} run {run + 1}: {r['wall']:.2f} s wall, {r['cpu']:.2f} s cpu", file=sys.stderr, flush=True)
    print(f"{args.scenario}: {'version':12} {'runs':>5} {'wall median':>12} {'wall best':>10} {'cpu median':>11}")
    for label, done in runs.items():
        if done:
            walls = [r["wall"] for r in done]
            cpus = [r["cpu"] for r in done]
            print(f"{' ' * len(args.scenario)}  {label:12} {len(done):5} {statistics.median(walls):12.2f} "
                  f"{min(walls):10.2f} {statistics.median(cpus):11.2f}")  # fmt: skip
    return 0 if all(runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""A/B of one large copy between ferrogen checkouts (issue 4), on the same sshd.

Alternates runs of bench/playbooks/transfer_big.yml (a 400 MB incompressible file, ssh without
-C) between versions, each with its own plugin and mux, and prints per version the copy task's
duration (median and best) and the stream's alone (the mux's "put done" line). Alternating
keeps a drifting machine from favouring one version. With --unchanged the destination already
holds the file, so each run only finds that out (what a playbook's second run does). For
example::

    git worktree add /tmp/ferrogen-before 12f1ce7 && (cd /tmp/ferrogen-before && cargo build --release)
    .state/bench-venv/bin/python bench/ab_copy.py --runs 8 before=/tmp/ferrogen-before after=.

The benchmark is not run by the test suite.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402 - sibling scripts, not a package
import transfer  # noqa: E402

PUT_DONE = re.compile(r"put done .* secs=([0-9.]+)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--unchanged", action="store_true", help="time copies onto an identical destination")
    ap.add_argument("versions", nargs="+", metavar="LABEL=CHECKOUT")
    args = ap.parse_args()
    versions = {label: env | {"FERROGEN_LOG": "info"} for label, env in bench.versions_from(args.versions).items()}
    bench.LOG_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-ab-copy-"))
    big = work / "big.bin"
    with open(big, "wb") as out:
        for _ in range(transfer.BIG_SIZE // 1_000_000):
            out.write(os.urandom(1_000_000))
    inv = transfer.inventory(work / "inventory.ini", transfer.SSH_PORT)
    tasks: dict[str, list[float]] = {label: [] for label in versions}
    streams: dict[str, list[float]] = {label: [] for label in versions}
    dest = f"/tmp/ferrogen-bench-ab-{os.getpid()}"
    if args.unchanged:
        shutil.copyfile(big, dest)
    for run in range(args.runs):
        for label, env in versions.items():
            log = bench.LOG_DIR / f"ab-copy-{label}.log"
            result = transfer.run_playbook("ferrogen", "transfer_big.yml", inv, ["-e", f"src={big}", "-e", f"dest={dest}"],
                                           log, Path(tempfile.mkdtemp(dir=work)), compress=False, env_extra=env)  # fmt: skip
            if os.path.exists(dest) and not args.unchanged:
                os.unlink(dest)
            secs = result["tasks"].get("copy big file")
            if result["rc"] != 0 or secs is None:
                print(f"{label} run {run + 1}: FAILED (see {log})", file=sys.stderr)
                continue
            tasks[label].append(secs)
            stream = PUT_DONE.search(Path(log).read_text())
            if stream:
                streams[label].append(float(stream.group(1)))
            print(f"{label} run {run + 1}: copy task {secs:.3f} s", file=sys.stderr, flush=True)
    if os.path.exists(dest):
        os.unlink(dest)
    shutil.rmtree(work, ignore_errors=True)
    print(f"{'version':12} {'runs':>5} {'task median':>12} {'task best':>10} {'stream median':>14}")
    for label in versions:
        if tasks[label]:
            stream = f"{statistics.median(streams[label]):14.3f}" if streams[label] else f"{'-':>14}"
            print(f"{label:12} {len(tasks[label]):5} {statistics.median(tasks[label]):12.3f} "
                  f"{min(tasks[label]):10.3f} {stream}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

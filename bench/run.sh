#!/usr/bin/env bash
# Benchmark vanilla Ansible, Mitogen and ferrogen side by side against the local test sshd.
#   bash bench/run.sh [--runs N] [--scenarios ping,loop-100,loop-500] [--engines vanilla,mitogen,ferrogen] [--user ACCOUNT] [--json FILE]
# BENCH_RUNS (default 3) sets the number of runs per scenario and engine; the best one is shown.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BVENV="$REPO/.state/bench-venv"

bash ci/setup.sh >&2

REQ="$REPO/bench/requirements.txt"
REQ_SUM="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "$BVENV/bin/python" ]; then
    echo "[bench] creating $BVENV" >&2
    python3 -m venv "$BVENV"
fi
if [ "$(cat "$BVENV/.ferrogen-requirements" 2>/dev/null || true)" != "$REQ_SUM" ]; then
    echo "[bench] pip install -r bench/requirements.txt" >&2
    "$BVENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
    echo "$REQ_SUM" >"$BVENV/.ferrogen-requirements"
fi

# The bench's Python may not be the one ci/setup.sh compiled the plugin with: without its own
# bytecode, every worker of a connection-only run would compile each edited plugin file again.
"$BVENV/bin/python" -m compileall -q "$REPO/plugin" >/dev/null

echo "[bench] $("$BVENV/bin/ansible-playbook" --version | head -1), mitogen $("$BVENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mitogen"))'), $(nproc) cores" >&2
exec "$BVENV/bin/python" bench/bench.py "$@"

#!/usr/bin/env bash
# Set everything up, then run the demo playbook (a 100-item `command: hostname` loop against the
# local connection, so no sshd is needed) under vanilla Ansible and under ferrogen (strategy mode
# and connection-only mode), and print the wall times and the ratio.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

echo "demo: setting up first; the cargo build of the mux takes several minutes the first time (its progress follows)"
FERROGEN_SETUP_SSHD="${FERROGEN_SETUP_SSHD:-0}" bash ci/setup.sh

WORK="$(mktemp -d /tmp/ferrogen-demo.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
echo "localhost ansible_connection=local ansible_python_interpreter=$REPO/.venv/bin/python" >"$WORK/inventory.ini"
# Connection-only mode names the collection's connection instead.
echo "localhost ansible_connection=ferrogen.mux.local ansible_python_interpreter=$REPO/.venv/bin/python" \
    >"$WORK/inventory-connection-only.ini"

now() { "$REPO/.venv/bin/python" -c 'import time; print(time.monotonic())'; }

run() {  # name, inventory, then extra environment assignments; prints the wall time in seconds
    local name="$1" inventory="$2" start end
    shift 2
    echo "demo: running the $name run..." >&2
    start="$(now)"
    if ! env -u ANSIBLE_STRATEGY -u ANSIBLE_STRATEGY_PLUGINS \
        ANSIBLE_HOME="$WORK/home-$name" ANSIBLE_LOCAL_TEMP="$WORK/home-$name/tmp" \
        ANSIBLE_RETRY_FILES_ENABLED=False ANSIBLE_NOCOLOR=1 "$@" \
        "$REPO/.venv/bin/ansible-playbook" -i "$inventory" tests/playbooks/loop100.yml \
        >"$WORK/$name.log" 2>&1 </dev/null; then
        echo "demo: the $name run failed; its output:" >&2
        cat "$WORK/$name.log" >&2
        return 1
    fi
    end="$(now)"
    "$REPO/.venv/bin/python" -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$start" "$end"
}

echo "demo: 100 x 'command: hostname' on localhost (local connection)"
t_vanilla="$(run vanilla "$WORK/inventory.ini" ANSIBLE_PIPELINING=True)"
echo "  vanilla ansible-core           : $t_vanilla s"
t_ferrogen="$(run ferrogen "$WORK/inventory.ini" \
    ANSIBLE_STRATEGY_PLUGINS="$REPO/plugin/ansible_ferrogen/plugins/strategy" \
    ANSIBLE_STRATEGY=mitogen_linear)"
echo "  ferrogen (strategy mode)       : $t_ferrogen s"
t_connection_only="$(run ferrogen-connection-only "$WORK/inventory-connection-only.ini" \
    ANSIBLE_COLLECTIONS_PATH="$REPO/plugin")"
echo "  ferrogen (connection-only mode): $t_connection_only s"
"$REPO/.venv/bin/python" - "$t_vanilla" "$t_ferrogen" <<'PY'
import sys

vanilla, ferrogen = float(sys.argv[1]), float(sys.argv[2])
if ferrogen < vanilla:
    print(f"  ferrogen: {vanilla / ferrogen:.1f}x faster than vanilla")
else:
    print(f"  ferrogen took {ferrogen / vanilla:.2f}x vanilla's time")
PY

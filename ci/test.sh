#!/usr/bin/env bash
# THE test command: set the machine up, then lint, unit-test and integration-test everything.
# Stops at the first failing step and says which one it was.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PATH="/root/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

STEP=""
STEP_START=0
on_exit() {
    rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '\n[test] FAILED at step: %s (exit %s)\n' "$STEP" "$rc" >&2
    fi
}
trap on_exit EXIT

step() {
    [ -n "$STEP" ] && printf '[test] %s: ok (%ss)\n' "$STEP" "$((SECONDS - STEP_START))" >&2
    STEP="$1"
    STEP_START=$SECONDS
    printf '\n[test] ==== %s ====\n' "$STEP" >&2
}

step "setup (ci/setup.sh)"
bash ci/setup.sh

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "ruff check"
ruff_paths=()
for p in plugin tests bench mux/agent; do
    [ -e "$p" ] && ruff_paths+=("$p")
done
.venv/bin/ruff check "${ruff_paths[@]}"

step "cargo test --workspace"
cargo test --workspace

step "pytest (plugin and agent unit tests, then integration tests/)"
rc=0
.venv/bin/pytest -v plugin/tests mux/agent/tests tests/ || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "[test] pytest collected no tests; that is a failure here" >&2
    exit 5
fi
[ "$rc" -eq 0 ] || exit "$rc"

printf '[test] %s: ok (%ss)\n' "$STEP" "$((SECONDS - STEP_START))" >&2
STEP=""
printf '[test] all steps passed in %ss\n' "$SECONDS" >&2

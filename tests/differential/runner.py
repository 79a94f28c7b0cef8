"""The differential harness: run one playbook under vanilla Ansible and under ferrogen and compare,
task by task and host by host, everything a playbook can observe of each result.

Compared per result (and per loop item): status, changed, failed, skipped, rc, msg, stdout, stderr,
the other keys of the result and their values, facts returned, warnings and deprecations. Only what
must differ between two runs is normalised: times and durations, inode numbers, random temp names
(Ansible's ansible-tmp-*, tempfile's ansible.*), the run's own directories, and setup's fact values
(their names are compared).

Run it by hand with `python -m differential.runner PLAYBOOK` from tests/ (prints the differences).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import helpers

HERE = Path(__file__).resolve().parent


def read_volatile_text(path: Path) -> list[tuple[re.Pattern, str]]:
    """The (pattern, replacement) table of a file of `pattern<TAB>replacement` lines."""
    table = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            pattern, _, replacement = line.partition("\t")
            table.append((re.compile(pattern), replacement))
    return table


# Result keys whose values differ between any two runs of the same playbook.
VOLATILE_KEYS = frozenset(
    {
        "start",
        "end",
        "delta",
        "atime",
        "mtime",
        "ctime",
        "inode",
        "dev",
        "_ansible_no_log",
        "_ansible_verbose_always",
        "_ansible_verbose_override",
        "_ansible_delegated_vars",
        "_ansible_item_label",
        "_ansible_ignore_errors",
        # The name of the controller's temp copy of a copied file.
        "_original_basename",
    }
)
# Result keys that depend on timing or the machine's state, by action.
VOLATILE_BY_ACTION = {
    "async_status": frozenset({"attempts"}),
    "wait_for_connection": frozenset({"elapsed"}),
    "wait_for": frozenset({"elapsed"}),
    # The inode's generation number.
    "stat": frozenset({"version"}),
}
# Actions whose facts are compared by name only (uptime, memory, dates change between runs).
FACT_NAMES_ONLY = frozenset({"setup", "gather_facts", "mount_facts"})
# Texts that differ between runs, and what they become.
VOLATILE_TEXT = read_volatile_text(HERE / "volatile_text.tsv")


def normalise_text(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    for pattern, new in VOLATILE_TEXT:
        text = pattern.sub(new, text)
    return text


def normalise(value, replacements: dict[str, str], volatile: frozenset[str] = VOLATILE_KEYS):
    if isinstance(value, str):
        return normalise_text(value, replacements)
    if isinstance(value, list):
        return [normalise(v, replacements, volatile) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v, replacements, volatile) for k, v in value.items() if k not in volatile}
    return value


def observable(record: dict, replacements: dict[str, str]) -> dict:
    """What a playbook sees of one result, normalised."""
    action = record["action"].rsplit(".", 1)[-1]
    result = dict(record["result"])
    facts = result.pop("ansible_facts", None)
    if facts is not None and action in FACT_NAMES_ONLY:
        # One fact per network interface: other work on the machine adds and removes them.
        interfaces = {"ansible_" + name.replace("-", "_") for name in facts.get("ansible_interfaces") or []}
        facts = sorted(name for name in facts if name not in interfaces)
    loop = result.pop("results", None)
    normalised = normalise(result, replacements, VOLATILE_KEYS | VOLATILE_BY_ACTION.get(action, frozenset()))
    # A warning that normalises to nothing is one only vanilla gives (volatile_text.tsv).
    warnings = [text for text in normalised.pop("warnings", None) or [] if text]
    if warnings:
        normalised["warnings"] = warnings
    out = {
        "status": record["status"],
        "result": normalised,
        "facts": normalise(facts, replacements),
        "warnings": [text for text in normalise(record["warnings"], replacements) if text],
        "deprecations": normalise(record["deprecations"], replacements),
    }
    if loop is not None:
        out["loop_items"] = len(loop)
    return out


def read_records(path: Path, replacements: dict[str, str]) -> dict[tuple, dict]:
    """Results by (host, task, occurrence), in playbook order."""
    records: dict[tuple, dict] = {}
    seen: dict[tuple, int] = {}
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        base = (record["host"], record["task"], "item" if record["item"] else "task")
        seen[base] = seen.get(base, 0) + 1
        records[(*base, seen[base])] = observable(record, replacements)
    return records


def run(playbook: Path, workdir: Path, *, ferrogen: bool, inventory: Path, extra_vars: dict[str, str],
        env: dict[str, str] | None = None):
    """One run of `playbook` (copied into workdir, a 0700 directory, with what it includes);
    env is added to the run's environment."""
    name = "ferrogen" if ferrogen else "vanilla"
    results = workdir / f"{name}.jsonl"
    results.unlink(missing_ok=True)
    args = []
    for key, value in extra_vars.items():
        args += ["-e", f"{key}={value}"]
    outcome = helpers.run_playbook(
        playbook,
        ferrogen=ferrogen,
        tmp_path=workdir / name,
        inventory=inventory,
        extra_env={
            "ANSIBLE_CALLBACKS_ENABLED": "result_dump,differential",
            "FERROGEN_DIFFERENTIAL_RESULTS": str(results),
            "ANSIBLE_DEPRECATION_WARNINGS": "True",
            **(env or {}),
        },
        extra_args=args,
        timeout=900,
    )
    return outcome, results


def differences(vanilla: dict[tuple, dict], ferrogen: dict[tuple, dict]) -> list[str]:
    """Human-readable differences between two runs' normalised results."""
    found = []
    for key in sorted(set(vanilla) | set(ferrogen), key=str):
        left, right = vanilla.get(key), ferrogen.get(key)
        if left == right:
            continue
        where = f"{key[0]} / {key[1]!r} ({key[2]} {key[3]})"
        if left is None or right is None:
            found.append(f"{where}: only under {'ferrogen' if left is None else 'vanilla'}")
            continue
        for field in sorted(set(left) | set(right)):
            if left.get(field) == right.get(field):
                continue
            if field == "result":
                lres, rres = left["result"], right["result"]
                for rkey in sorted(set(lres) | set(rres)):
                    if lres.get(rkey, "<absent>") != rres.get(rkey, "<absent>"):
                        found.append(
                            f"{where}: {rkey}: vanilla {lres.get(rkey, '<absent>')!r} "
                            f"ferrogen {rres.get(rkey, '<absent>')!r}"
                        )
            else:
                found.append(f"{where}: {field}: vanilla {left.get(field)!r} ferrogen {right.get(field)!r}")
    return found


def compare(playbook: Path, workdir: Path, inventory: Path, extra_vars: dict[str, str], prepare=None, *,
            env: dict[str, str] | None = None, ferrogen_env: dict[str, str] | None = None,
            ferrogen_inventory: Path | None = None):
    """Run playbook under both and return (differences, vanilla run, ferrogen run).
    prepare(), if given, runs before each of the two runs (to reset what the playbook touches).
    env is added to both runs' environment, ferrogen_env to ferrogen's; ferrogen_inventory, if
    given, is ferrogen's (the same host names, other connection names: connection-only mode)."""
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    local_copy = workdir / "playbook"
    shutil.rmtree(local_copy, ignore_errors=True)
    shutil.copytree(playbook.parent, local_copy)
    local_playbook = local_copy / playbook.name
    replacements = {str(workdir): "<workdir>"}
    runs = {}
    for ferrogen in (False, True):
        if prepare is not None:
            prepare()
        outcome, results = run(local_playbook, workdir, ferrogen=ferrogen,
                               inventory=(ferrogen_inventory or inventory) if ferrogen else inventory,
                               extra_vars=extra_vars, env={**(env or {}), **((ferrogen_env or {}) if ferrogen else {})})
        records = read_records(results, replacements)
        # A playbook that does not parse, or is not there, fails both runs alike with no result.
        assert records, f"{local_playbook} recorded no result:\n{helpers.describe(outcome)}"
        runs[ferrogen] = (outcome, records)
    return differences(runs[False][1], runs[True][1]), runs[False][0], runs[True][0]


if __name__ == "__main__":
    import tempfile

    target = Path(sys.argv[1]).resolve()
    with tempfile.TemporaryDirectory(prefix="differential-") as tmp:
        diffs, _, _ = compare(target, Path(tmp), helpers.INVENTORY, {})
        print("\n".join(diffs) or "no differences")

"""Issue 2: real playbooks through ferrogen-mux over the local sshd and the local connection.

Every playbook run here goes through `ansible-playbook` from .venv with the `mitogen_linear`
strategy from plugin/ansible_ferrogen (ferrogen=True), except the vanilla side of the
differential test and the harness checks that say ferrogen=False.
"""

from __future__ import annotations

import json
import os
import re
import stat
import uuid

import helpers
import pytest
from helpers import PLAYBOOKS, TARGETS, describe, ssh_host_line, write_inventory

# Tasks whose stdout differs between connection types for reasons outside Ansible's control
# are still compared, after normalizing line endings (ssh -tt turns \n into \r\n for raw/script).


def _norm(text):
    if text is None:
        return None
    text = re.sub(r"(ferrogen-modules-[\w.-]+?-)[0-9a-f]{12}\b", r"\1RUNID", text)  # per-run scratch dir
    return text.replace("\r\n", "\n").strip()


def _blob(obj) -> str:
    return json.dumps(obj, default=repr)


# --------------------------------------------------------------------------- loop-100


@pytest.mark.parametrize("host", TARGETS)
def test_loop100(cached_run, host):
    run = cached_run("loop100.yml", host, True)
    assert run.returncode == 0, describe(run)
    loop = run.task(host, "hostname loop")
    items = loop["result"]["results"]
    assert len(items) == 100
    assert all(i["changed"] for i in items), describe(run)
    assert all(i.get("rc") == 0 and not i.get("failed") for i in items)
    assert len({i["stdout"] for i in items}) == 1
    assert items[0]["stdout"] == os.uname().nodename  # every target is this machine
    assert run.task(host, "every item changed and printed the host name")["status"] == "ok"


# --------------------------------------------------------------------------- modules.yml


@pytest.mark.parametrize("host", TARGETS)
def test_modules(cached_run, host):
    run = cached_run("modules.yml", host, True)
    assert run.returncode == 0, describe(run)
    results = run.for_host(host)
    # Every assert task passed; the only failure is the deliberate, ignored one.
    failed = [r["task"] for r in results if r["failed"]]
    assert failed == ["fail ignored"], describe(run)
    asserts = [r for r in results if r["action"] in ("assert", "ansible.builtin.assert")]
    assert len(asserts) >= 20
    assert all(r["status"] == "ok" for r in asserts)
    actions = {r["action"].removeprefix("ansible.builtin.") for r in results}
    wanted = {
        "gather_facts", "ping", "file", "command", "shell", "raw", "copy", "stat", "slurp", "lineinfile",
        "blockinfile", "replace", "template", "find", "tempfile", "getent", "assert", "set_fact",
        "wait_for", "fail", "script", "debug",
    }  # fmt: skip
    assert wanted <= actions | {"gather_facts"} and len(wanted) >= 20, sorted(wanted - actions)

    # A few results checked here too, not only by the play's own asserts.
    shell = run.task(host, "shell with rc stdout stderr")
    assert (shell["rc"], shell["stdout"], shell["stderr"], shell["changed"]) == (3, "shell-env", "to-stderr", True)
    assert run.task(host, "command with chdir")["stdout"].startswith(f"/tmp/ferrogen-modules-{host}-")
    assert run.task(host, "command with stdin")["stdout"] == "from stdin"
    assert run.task(host, "command with environment")["stdout"] == "from-environment"
    assert "rawout" in run.task(host, "raw echo")["stdout"]
    check = run.task(host, "copy in check mode with diff")
    assert check["changed"] and check["result"].get("diff"), check
    fail = run.task(host, "fail ignored")
    assert fail["msg"] == "expected failure" and fail["ignore_errors"]
    assert run.task(host, "copy content again")["changed"] is False

    # no_log: the secret reaches the registered variable but never the output.
    nolog = run.task(host, "no_log command")
    assert "censored" in nolog["result"], nolog
    assert "s3cr3t-never-shown" not in run.stdout + run.stderr
    assert "s3cr3t-never-shown" not in _blob(run.results)

    # setup ran through the same path and saw the right account.
    facts = run.task(host, "Gathering Facts")
    assert "ansible_hostname" in facts["result"]["ansible_facts"]["_keys"]


@pytest.mark.parametrize("host", TARGETS)
def test_differential_vanilla_vs_ferrogen(cached_run, host):
    """Same playbook, same host: per-task changed/failed/rc/stdout identical."""
    vanilla = cached_run("modules.yml", host, False)
    ferro = cached_run("modules.yml", host, True)
    assert vanilla.returncode == 0, describe(vanilla)
    assert ferro.returncode == 0, describe(ferro)

    def table(run):
        return [
            (r["task"], r["status"], r["changed"], r["failed"], r["rc"], _norm(r["stdout"])) for r in run.for_host(host)
        ]

    v, f = table(vanilla), table(ferro)
    assert [t[0] for t in v] == [t[0] for t in f], "different task sequences"
    diffs = [(a, b) for a, b in zip(v, f, strict=True) if a != b]
    assert not diffs, "vanilla vs ferrogen:\n" + "\n".join(f"  {a}\n  {b}" for a, b in diffs)


# --------------------------------------------------------------------------- process layout


def _parse_ps(stdout: str) -> dict[int, tuple[int, str]]:
    procs = {}
    for line in stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0].isdigit():
            procs[int(parts[0])] = (int(parts[1]), parts[2] if len(parts) > 2 else "")
    return procs


def _ancestors(procs, pid):
    seen = []
    while pid in procs and pid not in seen and pid > 1:
        seen.append(pid)
        pid = procs[pid][0]
    return seen


def _process_run(run_playbook, tmp_path, *, ferrogen: bool):
    marker = f"FERROGEN_TEST_RUN={uuid.uuid4().hex}"
    # The marker rides on ssh's command line (SetEnv is harmless: sshd drops what it does not accept),
    # so the ssh client of this run can be told apart from any other ssh on the machine.
    inv = write_inventory(
        tmp_path / "inventory.ini", [ssh_host_line("sshroot", extra=f"ansible_ssh_extra_args='-o SetEnv={marker}'")]
    )
    run = run_playbook("process.yml", ferrogen=ferrogen, inventory=inv)
    assert run.returncode == 0, describe(run)

    chains = []
    for item in run.task("sshroot", "ancestry")["result"]["results"]:
        chain = []  # (pid, comm, args) from the task's shell up to pid 1
        for line in item["stdout"].splitlines():
            parts = line.split(None, 3)
            chain.append((int(parts[0]), parts[2], parts[3] if len(parts) > 3 else ""))
        chains.append(chain)
    assert len(chains) == 3

    def python_pids(chain):
        return {pid for pid, comm, args in chain if comm.startswith("python") or "python" in args.split(" ", 1)[0]}

    shared_python = set.intersection(*(python_pids(c) for c in chains))

    snapshots = []
    for name in ("controller processes at start", "controller processes at end"):
        procs = _parse_ps(run.task("sshroot", name)["stdout"])
        ssh = {
            pid: args
            for pid, (_, args) in procs.items()
            if args and os.path.basename(args.split()[0]) == "ssh" and marker in args
        }
        snapshots.append((procs, ssh))
    return run, chains, shared_python, snapshots


@pytest.mark.mux_only
def test_one_ssh_and_one_interpreter(run_playbook, tmp_path):
    _run, chains, shared_python, snapshots = _process_run(run_playbook, tmp_path, ferrogen=True)
    for procs, ssh in snapshots:
        assert len(ssh) == 1, f"expected exactly one ssh process for the target, got {ssh}"
        (pid,) = ssh
        above = [procs[p][1] for p in _ancestors(procs, pid)[1:]]
        assert any("ferrogen-mux" in args for args in above), f"ssh {pid} is not a child of ferrogen-mux: {above}"
    assert set(snapshots[0][1]) == set(snapshots[1][1]), "the ssh connection was replaced during the run"
    assert shared_python, f"no python process is an ancestor of every task: {chains}"


def test_process_probe_tells_vanilla_apart(run_playbook, tmp_path):
    """The probe above is meaningful: under vanilla Ansible no python process is shared."""
    _run, chains, shared_python, snapshots = _process_run(run_playbook, tmp_path, ferrogen=False)
    assert all(any(comm.startswith("python") for _, comm, _ in c) for c in chains), chains
    assert not shared_python, chains
    assert all(len(ssh) >= 1 for _, ssh in snapshots), "marker not seen on the run's ssh command line"


@pytest.mark.mux_only
def test_connection_comes_up_while_the_task_prepares(run_playbook, tmp_path):
    """A task that connects asks the mux to start connecting as soon as its action exists (the
    mux test connect_brings_a_target_up_before_its_first_call shows what the mux does with
    that); debug and skipped tasks start no connection, not even to a host that is down."""
    inv = write_inventory(tmp_path / "inventory.ini", [ssh_host_line("deadhost", port=1), ssh_host_line("sshroot")])
    run = run_playbook("connect_ahead.yml", ferrogen=True, inventory=inv, extra_args=("-vvv",), timeout=120)
    assert run.returncode == 0, describe(run)
    assert run.task("deadhost", "command hostname")["status"] == "skipped", describe(run)
    assert run.task("sshroot", "command hostname")["status"] == "ok", describe(run)
    ahead = run.output.find("ferrogen: connecting ahead of the first call")
    module = run.output.find("ferrogen: run ansible.modules.command in the persistent interpreter")
    assert 0 <= ahead < module, describe(run)
    assert run.output.count("ferrogen: connecting ahead of the first call") == 1, describe(run)
    assert "target=sshroot" in run.output, describe(run)
    assert "target=deadhost" not in run.output, describe(run)


# --------------------------------------------------------------------------- bad input


@pytest.mark.mux_only
def test_mux_missing(run_playbook, tmp_path):
    missing = tmp_path / "no-such-dir" / "ferrogen-mux"
    run = run_playbook("hostname.yml", ferrogen=True, limit="localhost", timeout=120,
                       extra_env={"FERROGEN_MUX": str(missing)})  # fmt: skip
    assert run.returncode != 0, describe(run)
    assert str(missing) in run.output, describe(run)
    assert not [r for r in run.results if r["status"] == "ok"], describe(run)


@pytest.mark.mux_only
def test_mux_not_executable(run_playbook, tmp_path):
    fake = tmp_path / "ferrogen-mux"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(stat.S_IRUSR | stat.S_IWUSR)
    run = run_playbook("hostname.yml", ferrogen=True, limit="localhost", timeout=120,
                       extra_env={"FERROGEN_MUX": str(fake)})  # fmt: skip
    assert run.returncode != 0, describe(run)
    assert str(fake) in run.output, describe(run)


@pytest.mark.parametrize("ferrogen", [True, False], ids=["ferrogen", "vanilla"])
def test_unreachable_host_others_carry_on(run_playbook, tmp_path, ferrogen):
    inv = write_inventory(tmp_path / "inventory.ini", [ssh_host_line("deadhost", port=1), ssh_host_line("sshroot")])
    run = run_playbook("hostname.yml", ferrogen=ferrogen, inventory=inv, timeout=120)
    dead = run.task("deadhost", "command hostname")
    assert dead["status"] == "unreachable", describe(run)
    assert "port 1" in dead["msg"] and "Connection refused" in dead["msg"], dead["msg"]
    alive = run.task("sshroot", "command hostname")
    assert alive["status"] == "ok" and alive["rc"] == 0, describe(run)
    assert "UNREACHABLE" in run.stdout
    assert run.returncode == 4, describe(run)  # Ansible's exit code for unreachable hosts


@pytest.mark.parametrize("where", ["ssh", "local"])
@pytest.mark.parametrize("ferrogen", [True, False], ids=["ferrogen", "vanilla"])
def test_no_python_at_interpreter_path(run_playbook, tmp_path, ferrogen, where):
    bad = "/nonexistent/python"
    if where == "ssh":
        line = ssh_host_line("badpy", python=bad)
    else:
        line = f"badpy ansible_connection=local ansible_python_interpreter={bad}"
    inv = write_inventory(tmp_path / "inventory.ini", [line])
    run = run_playbook("ping.yml", ferrogen=ferrogen, inventory=inv, timeout=120)
    assert run.returncode != 0, describe(run)
    res = run.task("badpy", "ping")
    assert res["status"] in ("failed", "unreachable"), res
    assert bad in _blob(res["result"]), res
    assert bad in run.stdout


@pytest.mark.parametrize("host", TARGETS)
@pytest.mark.parametrize("ferrogen", [True, False], ids=["ferrogen", "vanilla"])
def test_bad_modules_show_output(run_playbook, host, ferrogen):
    run = run_playbook("bad_modules.yml", ferrogen=ferrogen, limit=host, timeout=180)
    assert run.returncode == 0, describe(run)  # both failures are ignored; the host carries on
    crash = run.task(host, "crashing module")
    assert crash["failed"], crash
    assert "ferro-crash-marker" in _blob(crash["result"]), crash
    # ansible-core 2.19 reports a module's uncaught exception as "Module failed: <message>"
    # (the traceback itself only at -vvv), so the marker is what must show.
    nonjson = run.task(host, "non-JSON module")
    assert nonjson["failed"], nonjson
    assert "ferro-nonjson-marker: this is not JSON" in _blob(nonjson["result"]), nonjson
    assert "ferro-crash-marker" in run.stdout and "ferro-nonjson-marker" in run.stdout
    assert run.task(host, "alive")["status"] == "ok"


@pytest.mark.parametrize("ferrogen", [True, False], ids=["ferrogen", "vanilla"])
def test_modules_of_several_collections_import_from_their_own_zip(run_playbook, ferrogen):
    """Two collections share the ansible_collections package, and two modules of one collection
    carry different module_utils: interleaved on one interpreter, and as another account, each
    module finds what its own zip holds."""
    run = run_playbook(
        "collections.yml", ferrogen=ferrogen, limit="sshroot",
        extra_env={"ANSIBLE_COLLECTIONS_PATH": str(PLAYBOOKS / "collections")},
    )
    assert run.returncode == 0, describe(run)
    messages = {r["task"]: r["msg"] for r in run.for_host("sshroot")}
    assert messages == {
        "greet": "alpha greets one",
        "echo": "beta echoes two",
        "count": "alpha counts 5 letters in three",
        "greet again": "alpha greets four",
        "echo again": "beta echoes five",
        "count as another account": "alpha counts 3 letters in six",
        "greet as another account": "alpha greets seven",
    }, describe(run)


@pytest.mark.parametrize("ferrogen", [True, False], ids=["ferrogen", "vanilla"])
def test_delegated_tasks_run_where_they_are_delegated(run_playbook, ferrogen):
    run = run_playbook("delegation.yml", ferrogen=ferrogen, limit="sshuser,sshroot")
    assert run.returncode == 0, describe(run)
    users = {r["task"]: r["stdout"] for r in run.for_host("sshuser") if r["action"].endswith("command")}
    assert users == {
        "on sshroot": "root",
        "on sshroot as another account": "ferrotest",
        "on localhost": "root",
        "local action": "root",
        "once": "ferrotest",
    }, describe(run)
    assert run.task("sshroot", "user of sshroot's facts")["stdout"] == "root", describe(run)


@pytest.mark.parametrize("ferrogen", [True, False], ids=["ferrogen", "vanilla"])
def test_async_tasks(run_playbook, ferrogen):
    """Ansible writes an async task's module and async_wrapper to the target and starts the
    wrapper, which detaches; the job's result then comes from polling or async_status."""
    run = run_playbook("async.yml", ferrogen=ferrogen, limit="sshroot", timeout=180)
    assert run.returncode == 0, describe(run)
    polled = run.task("sshroot", "polled")
    assert polled["stdout"] == "polled-out" and polled["rc"] == 0, polled
    fired = run.task("sshroot", "fired")
    assert fired["result"]["started"] == 1 and fired["result"]["finished"] == 0, fired
    status = run.task("sshroot", "status")
    assert status["stdout"] == "fired-out" and status["result"]["finished"] == 1, status
    assert run.task("sshroot", "polled as another account")["stdout"] == "ferrotest"


@pytest.mark.mux_only
def test_a_collections_module_utils_are_compiled_once_per_interpreter(run_playbook):
    """The agent compiles a collection's module_utils when it prepares the module's zip; each
    task then imports them from that code, under the file name zipimport would give them."""
    run = run_playbook(
        "collection_imports.yml", ferrogen=True, limit="sshroot",
        extra_env={"ANSIBLE_COLLECTIONS_PATH": str(PLAYBOOKS / "collections")},
    )
    assert run.returncode == 0, describe(run)
    items = run.task("sshroot", "whence")["result"]["results"]
    assert [item["loader"] for item in items] == ["ZipSourceLoader"] * 3, describe(run)
    for item in items:
        assert re.search(r"\.zip/ansible_collections/ferrotest/alpha/plugins/module_utils/greeting\.py$", item["file"]), item


def test_harness_sees_vanilla_loop(cached_run):
    """The result plumbing itself: a vanilla loop-100 over ssh yields 100 changed items."""
    run = cached_run("loop100.yml", "sshroot", False)
    assert run.returncode == 0, describe(run)
    assert len(run.task("sshroot", "hostname loop")["result"]["results"]) == 100


def test_inventory_has_targets(inventory):
    text = inventory.read_text()
    for host in TARGETS:
        assert host in text
    assert helpers.SSH_KEY.exists()

"""Issue 19: connection-only mode (`ferrogen.mux.ssh` under Ansible's own strategies), and
issue 20's mux killed mid-run: the run's mux is started by the first worker that needs it,
found by every other, gone within 2 s of ansible-playbook however that ends; a mux that dies
is replaced by the next task's worker, and the tasks it took down say how it died.

Muxes are counted per run: a connection-only mux watches its run's ansible-playbook
(`serve --watch-pid <pid>`), so only the muxes of the run under test are counted, whatever other
runs on this machine do.
"""

from __future__ import annotations

import glob
import os
import sys
import signal
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from helpers import REPO, ansible_versions, describe, live_pids, parent_pid, ssh_host_line, write_inventory
from test_operations import LiveRun, _alive, _cmdline, assert_all_gone, processes_with, wait_until

pytestmark = pytest.mark.mux_only

STARTED = "ferrogen: started mux"


def connection_only_env(tmp_path: Path, strategy: str) -> dict[str, str]:
    """Ansible's own strategy, the collection from this checkout, ferrogen.mux.ssh as the
    default connection, and deprecation warnings on (none may show)."""
    no_strategies = tmp_path / "no-strategy-plugins"
    no_strategies.mkdir(exist_ok=True)
    return {
        "ANSIBLE_STRATEGY": strategy,
        "ANSIBLE_STRATEGY_PLUGINS": str(no_strategies),
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / "plugin"),
        "ANSIBLE_TRANSPORT": "ferrogen.mux.ssh",
        "ANSIBLE_DEPRECATION_WARNINGS": "True",
    }


def inventory(tmp_path: Path, marker: str, count: int) -> Path:
    """count hosts on the test sshd (root and ferrotest by turns), with marker on every ssh
    command line so the run's ssh processes can be found."""
    lines = [
        ssh_host_line(f"h{n}", user="root" if n % 2 else "ferrotest",
                      extra=f"ansible_ssh_extra_args='-o SetEnv=FERROGEN_OPS={marker}'")
        for n in range(1, count + 1)
    ]  # fmt: skip
    return write_inventory(tmp_path / f"inventory-{uuid.uuid4().hex[:6]}.ini", lines)


def run_muxes(playbook_pid: int) -> list[int]:
    """The live muxes that watch this ansible-playbook process (connection-only mode). A mux's
    child between its fork and its exec (the ssh it starts) still shows the mux's command line,
    and is not counted."""
    found = []
    for pid in live_pids():
        args = _cmdline(pid)
        if args[1:2] == ["serve"] and args[0].endswith("ferrogen-mux") and "--watch-pid" in args:
            if args[args.index("--watch-pid") + 1] == str(playbook_pid) and _alive(pid):
                found.append(pid)
    return [pid for pid in found if parent_pid(pid) not in found]


def ancestors(pid: int) -> list[int]:
    chain = []
    while pid and pid > 1 and len(chain) < 20:
        pid = parent_pid(pid) or 0
        chain.append(pid)
    return chain


def run_dirs(playbook_pid: int) -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), f"ferrogen-run-{os.getuid()}-{playbook_pid}-*"))


@pytest.mark.parametrize("strategy", ["linear", "free"])
def test_one_mux_serves_the_whole_run_and_goes_with_it(tmp_path, strategy):
    marker = uuid.uuid4().hex
    hosts = [f"h{n}" for n in range(1, 5)]
    live = LiveRun("conn_only.yml", tmp_path, inventory(tmp_path, marker, len(hosts)),
                   extra_env=connection_only_env(tmp_path, strategy), extra_args=["-vvv"])  # fmt: skip
    muxes: set[int] = set()
    ssh: dict[int, list[int]] = {}
    deadline = time.monotonic() + 120
    # Four workers need a mux at the same moment: one starts it, the others find it.
    while live.proc.poll() is None and time.monotonic() < deadline:
        muxes.update(run_muxes(live.proc.pid))
        for pid, args in processes_with(marker):
            if "ssh" in args.split(" ", 1)[0]:
                ssh.setdefault(pid, ancestors(pid))
        time.sleep(0.05)
    run = live.finish()
    assert run.returncode == 0, describe(run)
    for host in hosts:
        assert run.task(host, "first task")["status"] == "ok", describe(run)
        assert run.task(host, "copy")["status"] == "ok", describe(run)
        assert run.task(host, "ping")["status"] == "ok", describe(run)
    assert len(muxes) == 1, f"muxes of this run: {muxes}\n{describe(run)}"
    assert run.output.count(STARTED) == 1, describe(run)
    assert "DEPRECATION" not in run.output, describe(run)
    # Every connection went through that mux.
    (mux,) = muxes
    assert ssh, describe(run)
    for pid, chain in ssh.items():
        assert mux in chain, f"ssh {pid} is not below the mux {mux}: {chain}"
    assert_all_gone([mux, *ssh], marker, 2.0, "after the run")
    assert wait_until(lambda: not run_dirs(live.proc.pid), 2.0), run_dirs(live.proc.pid)


@pytest.mark.parametrize("how", ["kill-9", "ctrl-c"])
def test_mux_goes_with_ansible_playbook_however_it_ends(tmp_path, how):
    marker = uuid.uuid4().hex
    live = LiveRun("ops_long_task.yml", tmp_path, inventory(tmp_path, marker, 2),
                   extra_env=connection_only_env(tmp_path, "linear"), extra_args=["-e", "ops_sleep=30"])  # fmt: skip
    try:
        live.wait_started("h1")
        muxes = wait_until(lambda: run_muxes(live.proc.pid), 10)
        assert len(muxes) == 1, f"{muxes}\n{live.output()}"
        ssh = wait_until(lambda: [pid for pid, args in processes_with(marker) if "ssh" in args], 10)
        assert ssh, live.output()
        if how == "kill-9":
            live.proc.kill()  # ansible-playbook alone; its workers live on
        else:
            os.killpg(live.proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C
        live.proc.wait(timeout=20)
        assert_all_gone([*muxes, *ssh], marker, 2.0, f"after {how} of ansible-playbook")
        assert wait_until(lambda: not run_dirs(live.proc.pid), 2.0), run_dirs(live.proc.pid)
    finally:
        live.kill()


def test_two_runs_at_once_each_have_their_own_mux(tmp_path):
    marker = uuid.uuid4().hex
    runs = [
        LiveRun("ops_long_task.yml", tmp_path, inventory(tmp_path, marker, 2),
                extra_env=connection_only_env(tmp_path, "linear"), extra_args=["-vvv", "-e", "ops_sleep=3"])
        for _ in range(2)
    ]  # fmt: skip
    try:
        for live in runs:
            live.wait_started("h1")
        muxes = [wait_until(lambda live=live: run_muxes(live.proc.pid), 10) for live in runs]
        assert [len(found) for found in muxes] == [1, 1], muxes
        assert muxes[0] != muxes[1], muxes
        for live in runs:
            run = live.finish()
            assert run.returncode == 0, describe(run)
            assert run.output.count(STARTED) == 1, describe(run)
    finally:
        for live in runs:
            live.kill()


@pytest.mark.parametrize("mode", ["strategy", "connection-only"])
def test_mux_killed_mid_run_is_named_and_replaced(tmp_path, mode):
    marker = uuid.uuid4().hex
    extra_env = connection_only_env(tmp_path, "linear") if mode == "connection-only" else {}
    live = LiveRun("mux_killed.yml", tmp_path, inventory(tmp_path, marker, 1), extra_env=extra_env)
    try:
        live.wait_started("h1")
        if mode == "strategy":
            mux = live.mux_pid()
        else:
            (mux,) = wait_until(lambda: run_muxes(live.proc.pid), 10)
        os.kill(mux, signal.SIGKILL)
        run = live.finish()
    finally:
        live.kill()
    long_task = run.task("h1", "long task")
    assert long_task["status"] == "unreachable", describe(run)
    assert "lost ferrogen-mux" in long_task["msg"], long_task
    assert "which was killed by signal 9 (SIGKILL)" in long_task["msg"], long_task
    # The next task's worker started another mux, and the run went on.
    after = run.task("h1", "after the mux died")
    assert after["status"] == "ok" and after["stdout"] == "after", describe(run)
    assert run.returncode == 0, describe(run)
    assert wait_until(lambda: not run_muxes(live.proc.pid), 2.0), run_muxes(live.proc.pid)


def test_a_mux_that_dies_at_start_is_reported_with_its_status(run_playbook, tmp_path):
    """The detached start: the shell's record of the mux's exit reaches the task's error."""
    fake = tmp_path / "ferrogen-mux"
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "ferrogen-mux 0 (protocol 1)" && exit 0\n'
                    'echo "fake mux refusing to serve" >&2\nexit 3\n')  # fmt: skip
    fake.chmod(0o755)
    env = connection_only_env(tmp_path, "linear") | {"FERROGEN_MUX": str(fake)}
    run = run_playbook("ping.yml", ferrogen=True, inventory=inventory(tmp_path, uuid.uuid4().hex, 1),
                       extra_env=env, timeout=120)  # fmt: skip
    assert run.returncode != 0, describe(run)
    assert f"ferrogen-mux at {fake} exited with status 3 before it was ready" in run.output, describe(run)


@pytest.mark.parametrize("version", ansible_versions())
def test_workers_take_the_plugins_options_from_the_builtin_ones(run_playbook, tmp_path, version):
    """ansible-playbook parses the built-in connection plugins' documentation before it forks
    workers; a worker that loads ferrogen.mux.ssh or ferrogen.mux.local registers their options
    from the built-in plugin's instead of parsing the collection plugin's documentation and
    fragment again, which cost tens of milliseconds of every task. Ansible's debug output names
    each plugin whose documentation it parses."""
    inventory_path = write_inventory(tmp_path / "inventory.ini", [
        ssh_host_line("h1"),
        f"l1 ansible_connection=ferrogen.mux.local ansible_python_interpreter={sys.executable}",
    ])  # fmt: skip
    env = connection_only_env(tmp_path, "linear") | {"ANSIBLE_DEBUG": "True"}
    run = run_playbook("ping.yml", ferrogen=True, inventory=inventory_path, extra_env=env, timeout=180,
                       ansible_version=version)  # fmt: skip
    assert run.returncode == 0, describe(run)
    for host in ("h1", "l1"):
        assert run.task(host, "ping")["status"] == "ok", describe(run)
    assert "Loaded config def from plugin (connection/ssh)" in run.output, describe(run)
    assert "Loaded config def from plugin (connection/ansible_collections.ferrogen" not in run.output, describe(run)


@pytest.mark.parametrize("version", ansible_versions())
def test_the_preload_callback_loads_the_plugin_once_before_the_workers_fork(run_playbook, tmp_path, version):
    """With `ferrogen.mux.preload` among the enabled callbacks, ansible-playbook imports the
    plugin package before it forks any worker, and no worker imports it again; without it,
    each task's worker does. Results and warnings are the same either way (older ansible-cores
    warn of optimisations they lack). tests/tools/import_watch logs each process that imports
    the module itself."""
    inventory_path = write_inventory(tmp_path / "inventory.ini", [ssh_host_line("h1")])
    importers, warnings = {}, {}
    for preload in (False, True):
        log = tmp_path / f"imports-{preload}.log"
        env = connection_only_env(tmp_path, "linear") | {
            "PYTHONPATH": str(REPO / "tests" / "tools" / "import_watch"),
            "FERROGEN_IMPORT_LOG": str(log),
            "FERROGEN_IMPORT_WATCH": "ansible_ferrogen.connection",
        }
        if preload:
            env["ANSIBLE_CALLBACKS_ENABLED"] = "result_dump,ferrogen.mux.preload"
        run = run_playbook("three_commands.yml", ferrogen=True, inventory=inventory_path, extra_env=env,
                           timeout=180, ansible_version=version)  # fmt: skip
        assert run.returncode == 0, describe(run)
        for task in ("first", "second", "third"):
            assert run.task("h1", task)["stdout"] == task, describe(run)
        warnings[preload] = " ".join(run.stderr.split()).split("[WARNING]")[1:]
        importers[preload] = len(log.read_text().splitlines()) if log.exists() else 0
    assert importers == {False: 3, True: 1}, importers
    assert warnings[True] == warnings[False], warnings

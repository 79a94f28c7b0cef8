"""Issue 18's behaviours, each compared with vanilla Ansible by the differential harness
(tests/differential/runner.py) on the parity playbook: every task's observable result must be
the same under ferrogen."""

from __future__ import annotations

from pathlib import Path

import helpers
import pytest
from differential import runner

PLAYBOOK = runner.HERE / "parity" / "parity.yml"
LOCAL = "ansible_connection=local"


def ssh(name: str, python: str = "/usr/bin/python3", **kwargs) -> str:
    return helpers.ssh_host_line(name, python=python, **kwargs)


# Host groups of the parity playbook: (group, [inventory lines]).
GROUPS = {
    "become_nobody": [
        ssh("p_ssh_nobody", extra="ansible_become=true ansible_become_user=nobody"),
        f"p_local_nobody {LOCAL} ansible_python_interpreter=/usr/bin/python3 "
        "ansible_become=true ansible_become_user=nobody",
    ],
    # As ferrotest, whose PATH is the system's: root's here has pyenv shims, which print
    # whatever pyenv's state of the moment makes them print.
    "interpreters": [
        ssh("p_ssh_bogus", python="/bogus/path", user="ferrotest"),
        f"p_local_bogus {LOCAL} ansible_python_interpreter=/bogus/path",
        ssh("p_ssh_env", python="'/usr/bin/env FG_VAR=1 python3'", user="ferrotest"),
        ssh("p_ssh_shell", python="'source /nonexistent || true && python3'", user="ferrotest"),
        *(
            ssh(f"p_ssh_{mode}", python=mode, user="ferrotest")
            for mode in ("auto", "auto_silent", "auto_legacy", "auto_legacy_silent")
        ),
    ],
    "rlimit": [
        ssh("p_ssh_rlimit", extra="ansible_python_module_rlimit_nofile=777"),
        f"p_local_rlimit {LOCAL} ansible_python_interpreter=/usr/bin/python3 ansible_python_module_rlimit_nofile=777",
    ],
    "ssh_class": [ssh("p_ssh_class")],
    "helpers": [
        ssh("p_ssh_helpers"),
        ssh("p_ssh_helpers_user", user="ferrotest"),
        ssh("p_ssh_helpers_become", extra="ansible_become=true ansible_become_user=ferrotest"),
        f"p_local_helpers {LOCAL} ansible_python_interpreter=/usr/bin/python3",
    ],
}


def inventory(path: Path, groups: list[str]) -> Path:
    text = []
    for group in groups:
        text += [f"[{group}]", *GROUPS[group], ""]
    text += ["[all:vars]", "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'", ""]
    path.write_text("\n".join(text))
    return path


@pytest.fixture(scope="module")
def parity_diffs(tmp_path_factory) -> list[str]:
    """One vanilla run and one ferrogen run of the parity playbook on every group; the
    differences, each starting with its host's name."""
    tmp_path = tmp_path_factory.mktemp("parity")
    workdir = tmp_path / "private"
    workdir.mkdir(mode=0o700)
    diffs, vanilla, ferrogen = runner.compare(PLAYBOOK, workdir, inventory(tmp_path / "inventory.ini", list(GROUPS)), {})
    assert vanilla.results, helpers.describe(vanilla)
    assert ferrogen.returncode == vanilla.returncode, helpers.describe(ferrogen)
    return diffs


def differences_in(diffs: list[str], group: str) -> str:
    hosts = {line.split()[0] for line in GROUPS[group]}
    return "\n".join(d for d in diffs if d.split(" ", 1)[0] in hosts)


def test_working_directory_as_an_unprivileged_become_account(parity_diffs):
    """Run from a 0700 directory, become nobody, over local and ssh."""
    assert not differences_in(parity_diffs, "become_nobody")


def test_interpreter_errors_and_discovery(parity_diffs):
    """A missing interpreter fails the task with vanilla's message, raw still works; an
    interpreter with arguments or shell syntax; the four auto modes (facts and warnings)."""
    assert not differences_in(parity_diffs, "interpreters")


def test_module_open_files_limit(parity_diffs):
    assert not differences_in(parity_diffs, "rlimit")


def test_the_ssh_class_keeps_its_attributes(parity_diffs):
    assert not differences_in(parity_diffs, "ssh_class")


def test_action_base_helpers(parity_diffs):
    assert not differences_in(parity_diffs, "helpers")


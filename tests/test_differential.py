"""The differential harness (tests/differential/runner.py): the builtin-module playbook under
vanilla Ansible and under ferrogen, on ssh and local, as root, as an unprivileged login and
with become to an unprivileged account, run from a 0700 directory; every task's observable
result must be the same."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import helpers
import pytest
from differential import runner

# The harness's hosts: (name, inventory line). The throwaway account and group ids must be
# free on this machine; each host has its own, since the hosts are one machine.
HOSTS = [
    ("diff_ssh_root", helpers.ssh_host_line("diff_ssh_root", extra="throwaway_id=45101")),
    ("diff_ssh_user", helpers.ssh_host_line("diff_ssh_user", user="ferrotest", extra="throwaway_id=45102")),
    (
        "diff_ssh_become",
        helpers.ssh_host_line(
            "diff_ssh_become", extra="ansible_become=true ansible_become_user=ferrotest throwaway_id=45103"
        ),
    ),
    (
        "diff_local",
        f"diff_local ansible_connection=local ansible_python_interpreter={helpers.VENV}/bin/python throwaway_id=45104",
    ),
    (
        "diff_local_become",
        "diff_local_become ansible_connection=local ansible_python_interpreter=/usr/bin/python3 "
        "ansible_become=true ansible_become_user=ferrotest throwaway_id=45105",
    ),
]


def inventory(path: Path) -> Path:
    lines = [f"{line} throwaway=fgd{helpers.SSH_PORT}{index}" for index, (_, line) in enumerate(HOSTS)]
    return helpers.write_inventory(path, lines)


def test_the_builtin_playbook_covers_sixty_modules():
    """What the user guide claims of the harness: at least 60 ansible.builtin modules (keywords
    are counted apart)."""
    texts = [path.read_text() for path in (runner.HERE / "builtin").rglob("*.yml")]
    modules = set(re.findall(r"^\s*(?:- )?ansible\.builtin\.([a-z_0-9]+):", "\n".join(texts), re.M))
    assert len(modules) >= 60, sorted(modules)


def test_builtin_modules_match_vanilla(tmp_path):
    workdir = tmp_path / "private"
    workdir.mkdir(mode=0o700)
    fetch_root = workdir / "fetched"
    scratch_root = Path(f"/tmp/fgdiff-{helpers.SSH_PORT}")

    def reset():
        shutil.rmtree(fetch_root, ignore_errors=True)
        for left in Path("/tmp").glob(f"{scratch_root.name}-*"):
            shutil.rmtree(left, ignore_errors=True)

    diffs, vanilla, ferrogen = runner.compare(
        runner.HERE / "builtin" / "builtin.yml",
        workdir,
        inventory(tmp_path / "inventory.ini"),
        {"scratch_root": str(scratch_root), "fetch_root": str(fetch_root)},
        prepare=reset,
    )
    assert vanilla.returncode == ferrogen.returncode, helpers.describe(ferrogen)
    assert not diffs, "\n".join(diffs)


def become_failure_hosts(local_connection: str) -> list[str]:
    """A login that needs sudo's password (ferrotest, over ssh) and root on the controller."""
    return [
        helpers.ssh_host_line("fail_ssh_user", user="ferrotest", extra="other_user=root su_prompts=true"),
        f"fail_local ansible_connection={local_connection} ansible_python_interpreter=/usr/bin/python3 "
        "other_user=ferrotest",
    ]


@pytest.mark.parametrize("mode", ["strategy", "connection-only"])
def test_failed_become_matches_vanilla(tmp_path, mode):
    """Wrong and missing passwords, unknown accounts and refused flags, with sudo, su and doas:
    the same result keys as vanilla's and the tool's whole message, each loop item's too."""
    workdir = tmp_path / "private"
    workdir.mkdir(mode=0o700)
    # ferrogen's doas plugin wraps commands as community.general's would: vanilla uses it too.
    both = {"ANSIBLE_BECOME_PLUGINS": str(helpers.REPO / "plugin" / "ansible_ferrogen" / "plugins" / "become")}
    ferrogen_env, ferrogen_inventory = {}, None
    if mode == "connection-only":
        no_strategies = tmp_path / "no-strategy-plugins"
        no_strategies.mkdir()
        ferrogen_env = {
            "ANSIBLE_STRATEGY": "linear",
            "ANSIBLE_STRATEGY_PLUGINS": str(no_strategies),
            "ANSIBLE_COLLECTIONS_PATH": str(helpers.REPO / "plugin"),
            "ANSIBLE_TRANSPORT": "ferrogen.mux.ssh",
        }
        ferrogen_inventory = helpers.write_inventory(tmp_path / "ferrogen.ini", become_failure_hosts("ferrogen.mux.local"))
    diffs, vanilla, ferrogen = runner.compare(
        runner.HERE / "become_failures" / "become_failures.yml",
        workdir,
        helpers.write_inventory(tmp_path / "inventory.ini", become_failure_hosts("local")),
        {},
        env=both,
        ferrogen_env=ferrogen_env,
        ferrogen_inventory=ferrogen_inventory,
    )
    assert vanilla.returncode == ferrogen.returncode, helpers.describe(ferrogen)
    assert not diffs, "\n".join(diffs)
    assert "not-the-password" not in ferrogen.output
    wrong = ferrogen.task("fail_ssh_user", "sudo with a wrong password")
    assert wrong["failed"], wrong

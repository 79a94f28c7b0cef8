"""The differential harness (tests/differential/runner.py): the builtin-module playbook under
vanilla Ansible and under ferrogen, on ssh and local, as root, as an unprivileged login and
with become to an unprivileged account, run from a 0700 directory; every task's observable
result must be the same."""

from __future__ import annotations

import shutil
from pathlib import Path

import helpers
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
        runner.HERE / "builtin.yml",
        workdir,
        inventory(tmp_path / "inventory.ini"),
        {"scratch_root": str(scratch_root), "fetch_root": str(fetch_root)},
        prepare=reset,
    )
    assert vanilla.returncode == ferrogen.returncode, helpers.describe(ferrogen)
    assert not diffs, "\n".join(diffs)

"""Targets on every Python the machine has (issue 18): the builtin-module playbook runs against
each one the primary ansible-core supports for modules, all hosts in one run; a Python older than
the agent's own minimum is refused with a message naming both versions, once per host."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from helpers import DEBIAN_PYTHON, VENV, agent_min_python, describe, machine_pythons, ssh_host_line, write_inventory

pytestmark = pytest.mark.mux_only

def module_minimum() -> tuple[int, int]:
    """The oldest target Python the primary ansible-core runs modules on (its module_utils say)."""
    out = subprocess.run([str(VENV / "bin" / "python"), "-c",
                          "import ansible.module_utils.basic as b; print('%d %d' % b._PY_MIN)"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    return int(out[0]), int(out[1])


def host_name(python: str, version: tuple[int, int]) -> str:
    return "debian-python" if python == DEBIAN_PYTHON else "py%d%d" % version


def test_module_playbook_on_every_supported_target_python(run_playbook, tmp_path):
    pythons = {path: v for path, v in machine_pythons().items() if v >= module_minimum()}
    assert len(pythons) >= 2, f"expected pyenv's Pythons and {DEBIAN_PYTHON}; found {pythons}"
    hosts = {host_name(path, v): path for path, v in pythons.items()}
    inventory = write_inventory(tmp_path / "inventory.ini",
                                [ssh_host_line(host, python=path) for host, path in hosts.items()])
    run = run_playbook("modules.yml", ferrogen=True, inventory=inventory, extra_args=["--forks", str(len(hosts))])
    assert run.returncode == 0, describe(run)
    for host in hosts:
        results = run.for_host(host)
        assert [r["task"] for r in results if r["failed"]] == ["fail ignored"], describe(run)
        asserts = [r for r in results if r["action"] in ("assert", "ansible.builtin.assert")]
        assert len(asserts) >= 20 and all(r["status"] == "ok" for r in asserts), describe(run)


def test_a_python_older_than_the_agent_needs_is_named_once_per_host(run_playbook, tmp_path):
    old = {path: v for path, v in machine_pythons().items() if v < agent_min_python()}
    if not old:
        pytest.skip(f"no Python older than {agent_min_python()} on this machine")
    path, version = sorted(old.items(), key=lambda item: item[1])[0]
    inventory = write_inventory(tmp_path / "inventory.ini", [ssh_host_line("oldpython", python=path)])
    run = run_playbook("ping.yml", ferrogen=True, inventory=inventory)
    assert run.returncode != 0
    failures = [r for r in run.for_host("oldpython") if r["failed"] or r["unreachable"]]
    assert len(failures) == 1, describe(run)
    found = "%d.%d" % version
    message = failures[0]["msg"]
    needed = "%d.%d" % agent_min_python()
    assert re.search(rf"the agent needs Python {re.escape(needed)} or newer; {re.escape(path)} is Python {found}\.\d+", message), \
        describe(run)


def test_a_python_older_than_ansible_core_supports_is_named_not_a_traceback(run_playbook, tmp_path):
    """Vanilla's wrapper dies with a traceback on a Python older than the module_utils check it
    never reaches (3.7 for 2.19 and up); ferrogen fails every module task and loop item with
    module_utils' own words, as vanilla does on the Python just below the minimum; raw works."""
    too_old = {path: v for path, v in machine_pythons().items() if agent_min_python() <= v < module_minimum()}
    if not too_old:
        pytest.skip(f"no Python between the agent's {agent_min_python()} and ansible-core's {module_minimum()}")
    hosts = {host_name(path, v): (path, v) for path, v in too_old.items()}
    inventory = write_inventory(tmp_path / "inventory.ini",
                                [ssh_host_line(host, python=path) for host, (path, _) in hosts.items()])
    run = run_playbook("unsupported_python.yml", ferrogen=True, inventory=inventory,
                       extra_args=["--forks", str(len(hosts))])
    assert run.returncode == 0, describe(run)
    needed = "%d.%d" % module_minimum()
    for host, (_, version) in hosts.items():
        found = r"%d\.%d\.\d+ \(" % version
        pattern = rf"Ansible requires Python {re.escape(needed)} or newer on the target\. Current version: {found}"
        module = run.task(host, "a module")
        assert module["failed"] and re.match(pattern, module["msg"]), describe(run)
        items = run.task(host, "a loop")["result"]["results"]
        assert len(items) == 3 and all(re.match(pattern, item["msg"]) for item in items), items
        assert "Traceback" not in json.dumps(run.for_host(host)), describe(run)
        assert run.task(host, "raw")["stdout"].strip() == "raw works"
